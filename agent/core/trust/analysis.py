"""Chain analysis: choose the anchor, then prove the leaf verifies to it (pins, anchor is a
CA, names, each link's validity and signature, then cryptography's own verifier).

The rules are in the package docstring; every refusal is a `TrustError` whose `kind`
names the one problem an operator must fix.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509 import verification as xv

from agent.core.errors import TrustError
from agent.core.hostport import HostPort
from agent.core.pins import normalize_pin
from agent.core.trust.certs import CertInfo, _issued_by, _x509


@dataclass(frozen=True)
class Analysis:
    target: HostPort
    chain: tuple[CertInfo, ...]  # as presented, leaf first
    anchor: CertInfo
    anchor_index: int | None  # index in chain, None when the anchor came from outside
    reason: str  # "root sent", "topmost CA", "self-signed leaf", "provided"


# --- anchor choice -------------------------------------------------------------------


def choose_anchor(chain: Sequence[CertInfo]) -> tuple[CertInfo, int, str]:
    """(anchor, index in chain, reason) following the rules in the package docstring."""
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
