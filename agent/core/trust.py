"""Pure certificate logic: parse what a server presented, choose the anchor, verify the leaf.

Nothing here touches the network or the node. `chain` fetches certificates, this module
decides whether one of them may become trusted:

- the anchor is the root if the server sent it, else the topmost CA it sent, else a
  self-signed leaf that is the whole chain; a lone leaf issued by someone else is refused,
  because trusting it would pin one server certificate, not a CA;
- the leaf must verify to that anchor for the host name or IP the image reference uses
  (`cryptography.x509.verification`, with the extension rules relaxed to what ordinary
  private CAs emit and what Go's crypto/x509 accepts);
- every refusal is a `TrustError` whose `kind` names the one problem an operator must fix.

Bundles are written deterministically (only CERTIFICATE blocks, de-duplicated and sorted by
SHA-256) so "already installed?" is a byte comparison.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import ipaddress
import re
import string
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509 import verification as xv

from agent.core.errors import TrustError
from agent.core.hostport import HostPort
from agent.core.pins import normalize_pin

MAX_CERTS = 16

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True)
class CertInfo:
    """One certificate as received, with the facts the agent decides on."""

    der: bytes  # exact DER as received
    subject: str  # RFC 4514
    issuer: str
    sha256: str  # "sha256:" + 64 upper-case hex digits, of the DER
    serial: str  # upper-case hex
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime
    is_ca: bool  # basicConstraints cA=TRUE
    self_signed: bool  # subject == issuer and the signature verifies with its own key
    san_dns: tuple[str, ...]
    san_ip: tuple[str, ...]

    @property
    def pem(self) -> bytes:
        body = base64.b64encode(self.der)
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return (
            b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"
        )

    @property
    def has_san(self) -> bool:
        return bool(self.san_dns or self.san_ip)

    def describe(self) -> str:
        """Short operator-facing name: subject and fingerprint."""
        return f"{self.subject or '<empty subject>'} ({self.sha256})"


@dataclass(frozen=True)
class Analysis:
    target: HostPort
    chain: tuple[CertInfo, ...]  # as presented, leaf first
    anchor: CertInfo
    anchor_index: int | None  # index in chain, None when the anchor came from outside
    reason: str  # "root sent", "topmost CA", "self-signed leaf", "provided"


# --- parsing -------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _load(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def _x509(cert: CertInfo) -> x509.Certificate:
    return _load(cert.der)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Names chain and the issuer's key verifies the signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, KeyError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def cert_from_der(der: bytes) -> CertInfo:
    """Parse one DER certificate; anything unparsable is TrustError("malformed")."""
    der = bytes(der)
    try:
        return _cert_info(der, _load(der))
    # The bytes come from an untrusted server: cryptography parses lazily and reports
    # hostile encodings as ValueError, KeyError (unknown name tags), DuplicateExtension...
    # all of which mean the same thing here.
    except Exception as exc:
        raise TrustError(f"not a valid X.509 certificate: {exc!r}", kind="malformed") from exc


def _cert_info(der: bytes, cert: x509.Certificate) -> CertInfo:
    exts = cert.extensions
    try:
        is_ca = exts.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return CertInfo(
        der=der,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sha256="sha256:" + hashlib.sha256(der).hexdigest().upper(),
        serial=format(cert.serial_number, "X"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        self_signed=cert.subject == cert.issuer and _issued_by(cert, cert),
        san_dns=dns,
        san_ip=ips,
    )


def parse_pem_bundle(data: bytes, *, max_certs: int = MAX_CERTS) -> tuple[CertInfo, ...]:
    """Certificates of a PEM bundle, in file order, duplicates dropped.

    Only CERTIFICATE blocks are accepted: a private key (or any other block) in the input
    is an error, never silently skipped, so a key can never travel into a trust bundle.
    Text outside the blocks (comments, `openssl x509 -text` dumps) is ignored like
    OpenSSL and Go do. A single DER certificate is accepted too.
    """
    if not data.lstrip().startswith(b"-----") and b"-----BEGIN" not in data:
        if data[:1] == b"\x30":  # ASN.1 SEQUENCE: maybe one DER certificate
            return (cert_from_der(data),)
        raise TrustError("no PEM CERTIFICATE block found", kind="malformed")
    blocks = _PEM_BLOCK.findall(data)
    if not blocks or data.count(b"-----BEGIN") != len(blocks):
        raise TrustError("PEM data is truncated or not in PEM format", kind="malformed")
    if len(blocks) > max_certs:
        raise TrustError(
            f"{len(blocks)} PEM blocks: more than the {max_certs} certificates accepted",
            kind="malformed",
        )
    certs: dict[str, CertInfo] = {}
    for begin, body, end in blocks:
        label = begin.decode("ascii")
        if begin != end:
            raise TrustError(f"PEM block BEGIN {label} ends with END {end.decode()}", "malformed")
        if label != "CERTIFICATE":
            raise TrustError(
                f"PEM data contains a {label} block; only CERTIFICATE blocks are accepted",
                kind="malformed",
            )
        if b":" in body:  # RFC 1421 headers (Proc-Type...) never belong to a certificate
            raise TrustError("CERTIFICATE block with PEM headers", kind="malformed")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TrustError(f"CERTIFICATE block is not valid base64: {exc}", "malformed") from exc
        info = cert_from_der(der)
        certs.setdefault(info.sha256, info)
    return tuple(certs.values())


def pem_bundle(certs: Sequence[CertInfo]) -> bytes:
    """Deterministic bundle bytes: de-duplicated and sorted by SHA-256, LF line ends."""
    unique = {c.sha256: c for c in certs}
    return b"".join(unique[k].pem for k in sorted(unique))


# --- anchor choice -------------------------------------------------------------------


def choose_anchor(chain: Sequence[CertInfo]) -> tuple[CertInfo, int, str]:
    """(anchor, index in chain, reason) following the rules in the module docstring."""
    if not chain:
        raise TrustError("the server presented no certificate", kind="malformed")
    leaf = chain[0]
    if len(chain) == 1:
        if leaf.self_signed:
            return leaf, 0, "self-signed leaf"
        raise TrustError(
            f"the server sent only its own certificate {leaf.describe()}, issued by "
            f"{leaf.issuer}; trusting it would pin one server certificate, not a CA. "
            "Configure the server to send its intermediate, or give the CA with --ca-file",
            kind="leaf-not-self-signed",
        )
    rest = range(len(chain) - 1, 0, -1)
    for i in rest:
        if chain[i].self_signed:
            return chain[i], i, "root sent"
    for i in rest:
        if chain[i].is_ca:
            return chain[i], i, "topmost CA"
    raise TrustError(
        f"none of the {len(chain) - 1} certificate(s) sent after the leaf is a CA "
        f"(basicConstraints CA:TRUE); {chain[1].describe()} cannot issue certificates",
        kind="not-a-ca",
    )


# --- validation ----------------------------------------------------------------------


def _check_pins(anchor: CertInfo, pins: Collection[str]) -> None:
    if not pins:
        return
    wanted = {normalize_pin(p) for p in pins}
    if anchor.sha256 not in wanted:
        raise TrustError(
            f"anchor {anchor.subject} has fingerprint {anchor.sha256}, which matches none of "
            f"the pinned fingerprints ({', '.join(sorted(wanted))})",
            kind="pin-mismatch",
        )


def _role(cert: CertInfo, leaf: CertInfo, anchor: CertInfo) -> str:
    if cert.sha256 == leaf.sha256:
        return "server certificate"
    if cert.sha256 == anchor.sha256:
        return "anchor"
    return "intermediate"


def _check_time(cert: CertInfo, role: str, now: dt.datetime) -> None:
    if now > cert.not_after:
        raise TrustError(
            f"the {role} {cert.subject} expired on {cert.not_after:%Y-%m-%d %H:%M:%S} UTC "
            f"(now {now:%Y-%m-%d %H:%M:%S} UTC)",
            kind="expired",
        )
    if now < cert.not_before:
        raise TrustError(
            f"the {role} {cert.subject} is not valid before "
            f"{cert.not_before:%Y-%m-%d %H:%M:%S} UTC (now {now:%Y-%m-%d %H:%M:%S} UTC); "
            "check the clocks of this node and of the CA",
            kind="not-yet-valid",
        )


def _dns_matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching as Go and cryptography do it: one wildcard, whole leftmost label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern == host:
        return True
    if not pattern.startswith("*."):
        return False
    head, _, tail = host.partition(".")
    return bool(head) and tail == pattern[2:] and "." in tail


def _names(leaf: CertInfo) -> str:
    return ", ".join((*leaf.san_dns, *leaf.san_ip))


def _check_name(leaf: CertInfo, target: HostPort) -> None:
    if not leaf.has_san:
        raise TrustError(
            f"the certificate of {target.host} ({leaf.subject}) has no subjectAltName; "
            "container runtimes ignore the common name, so it can never be valid for "
            f"{target.host}. Reissue it with a DNS or IP subjectAltName",
            kind="no-san",
        )
    if target.is_ip:
        want = ipaddress.ip_address(target.host)
        ok = any(ipaddress.ip_address(ip) == want for ip in leaf.san_ip)
    else:
        ok = any(_dns_matches(n, target.host) for n in leaf.san_dns)
    if not ok:
        raise TrustError(
            f"certificate for {target.host} is valid for {_names(leaf)}, not {target.host}",
            kind="hostname-mismatch",
        )


def _walk(chain: Sequence[CertInfo], anchor: CertInfo, now: dt.datetime) -> tuple[CertInfo, ...]:
    """The issuer path leaf -> anchor through the presented certificates.

    Looks each issuer up by name and signature (servers do send chains out of order),
    and names the first broken link: not a CA, expired, or missing.
    """
    leaf = chain[0]
    path = [leaf]
    pool = [c for c in chain[1:] if c.sha256 != anchor.sha256]
    current = leaf
    while current.sha256 != anchor.sha256:
        _check_time(current, _role(current, leaf, anchor), now)
        issuer = next(
            (c for c in (anchor, *pool) if c not in path and _issued_by(_x509(current), _x509(c))),
            None,
        )
        if issuer is None:
            sent = " -> ".join(c.subject for c in chain)
            raise TrustError(
                f"chain does not link: {current.subject} was issued by {current.issuer}, "
                f"but no certificate signed by it leads to the anchor {anchor.subject} "
                f"(presented: {sent})",
                kind="chain-does-not-link",
            )
        if not issuer.is_ca:
            raise TrustError(
                f"{issuer.subject} issued {current.subject} but is not a CA "
                "(basicConstraints CA:TRUE missing); clients reject such a chain",
                kind="not-a-ca",
            )
        path.append(issuer)
        current = issuer
    _check_time(anchor, _role(anchor, leaf, anchor), now)
    return tuple(path)


def _ca_basic_constraints(
    _policy: xv.Policy, _cert: x509.Certificate, ext: x509.BasicConstraints | None
) -> None:
    if ext is None or not ext.ca:
        raise ValueError("basicConstraints.cA must be asserted in a CA certificate")


def _ca_key_usage(_policy: xv.Policy, _cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("a CA's keyUsage must include keyCertSign")


@functools.cache
def _policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    """Web PKI rules minus what private CAs commonly omit and Go does not require.

    CAs: keyUsage optional (OpenSSL's v3_ca has none), basicConstraints need not be
    critical. Leaves: no AKI needed, and CA:TRUE tolerated because `openssl req -x509`
    self-signed server certificates carry it.
    """
    agnostic = xv.Criticality.AGNOSTIC
    ca = (
        xv.ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, agnostic, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage)
    )
    ee = (
        xv.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.BasicConstraints, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.KeyUsage, agnostic, None)
    )
    return ca, ee


def _verify(
    chain: Sequence[CertInfo], anchor: CertInfo, target: HostPort, now: dt.datetime
) -> None:
    """The authoritative check by cryptography's verifier, after our precise pre-checks."""
    subject: x509.DNSName | x509.IPAddress
    if target.is_ip:
        subject = x509.IPAddress(ipaddress.ip_address(target.host))
    else:
        subject = x509.DNSName(target.host)
    ca_policy, ee_policy = _policies()
    verifier = (
        xv.PolicyBuilder()
        .store(xv.Store([_x509(anchor)]))
        .time(now)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_server_verifier(subject)
    )
    intermediates = [_x509(c) for c in chain[1:] if c.sha256 != anchor.sha256]
    try:
        verifier.verify(_x509(chain[0]), intermediates)
    except (xv.VerificationError, ValueError) as exc:
        raise TrustError(
            f"the certificate of {target.host} does not verify to {anchor.subject}: {exc}",
            kind="invalid",
        ) from exc


def _aware(now: dt.datetime) -> dt.datetime:
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def _analyze(
    chain: Sequence[CertInfo],
    anchor: CertInfo,
    target: HostPort,
    now: dt.datetime,
    pins: Collection[str],
) -> None:
    if not chain:
        raise TrustError("the server presented no certificate", kind="malformed")
    _check_pins(anchor, pins)
    leaf = chain[0]
    self_anchored = leaf.sha256 == anchor.sha256
    if not self_anchored and not anchor.is_ca:
        raise TrustError(
            f"the anchor {anchor.describe()} is not a CA (basicConstraints CA:TRUE missing) "
            "and cannot be trusted to issue certificates",
            kind="not-a-ca",
        )
    _check_name(leaf, target)
    _walk(chain, anchor, now)
    _verify(chain, anchor, target, now)


def analyze(
    chain: Sequence[CertInfo],
    target: HostPort,
    *,
    now: dt.datetime,
    pins: Collection[str] = (),
) -> Analysis:
    """Choose the anchor from the presented chain and prove the leaf verifies to it.

    Order of checks (the first failure is reported): anchor choice, pins, anchor is a
    CA, leaf names the target, each link of the path (CA, validity, signature), then
    cryptography's full verification.
    """
    anchor, index, reason = choose_anchor(chain)
    _analyze(chain, anchor, target, _aware(now), pins)
    return Analysis(target, tuple(chain), anchor, index, reason)


def analyze_with_anchor(
    chain: Sequence[CertInfo],
    anchor: CertInfo,
    target: HostPort,
    *,
    now: dt.datetime,
    pins: Collection[str] = (),
) -> Analysis:
    """Like `analyze`, with an anchor the operator provided (--ca-file).

    The anchor may be a root or an intermediate (partial chain), as containerd, docker
    and curl all accept.
    """
    _analyze(chain, anchor, target, _aware(now), pins)
    return Analysis(target, tuple(chain), anchor, None, "provided")


def check_anchor_only(anchor: CertInfo, *, now: dt.datetime, pins: Collection[str] = ()) -> None:
    """A declarative CA (policy caPEM) with no server to check against: must be a CA,
    currently valid and, when pins are given, one of them."""
    _check_pins(anchor, pins)
    if not anchor.is_ca:
        raise TrustError(
            f"{anchor.describe()} is not a CA (basicConstraints CA:TRUE missing)",
            kind="not-a-ca",
        )
    _check_time(anchor, "CA", _aware(now))
