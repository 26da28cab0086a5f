"""A private CA on demand: root -> intermediate -> leaf, written as PEM files.

Tests, the lab demo and the bench all need certificates that look like the ones an
operator's private CA produces (BasicConstraints critical, KeyUsage, SKI/AKI, EKU
serverAuth on the leaf), plus the broken variants the agent must refuse: no SAN,
expired or not-yet-valid, an intermediate without CA:TRUE, a self-signed leaf.
EC P-256 keys by default because they are generated in microseconds.

Typical use::

    pki = make_pki(tmp_path, names=("registry.test",), ips=("127.0.0.1",))
    pki.paths.chain      # leaf then intermediate, as docker-registry wants it
    pki.paths.key        # the leaf's private key
    pki.root.cert        # cryptography x509.Certificate
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

UTC = dt.UTC
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Window:
    """A validity period; the helpers below make the usual ones relative to `now`."""

    not_before: dt.datetime
    not_after: dt.datetime


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def valid(now: dt.datetime | None = None, days: int = 365) -> Window:
    """Valid since yesterday (clock skew) for `days` days."""
    now = now or utcnow()
    return Window(now - DAY, now + days * DAY)


def expired(now: dt.datetime | None = None) -> Window:
    """Expired ten days ago after a year of validity."""
    now = now or utcnow()
    return Window(now - 375 * DAY, now - 10 * DAY)


def not_yet_valid(now: dt.datetime | None = None) -> Window:
    """Becomes valid in ten days."""
    now = now or utcnow()
    return Window(now + 10 * DAY, now + 375 * DAY)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def sha256(self) -> str:
        """Same spelling as agent.core.trust.CertInfo.sha256 and policy pins."""
        return "sha256:" + hashlib.sha256(self.der).hexdigest().upper()

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ca-trust-agent lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer_name: x509.Name,
    key: PrivateKey,
    issuer_key: PrivateKey,
    window: Window,
) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window.not_before)
        .not_valid_after(window.not_after)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )


def make_ca(
    cn: str,
    *,
    issuer: Issued | None = None,
    window: Window | None = None,
    is_ca: bool = True,
    path_length: int | None = None,
    key_type: KeyType = "ec",
) -> Issued:
    """A root CA (issuer None: self-signed) or an intermediate signed by `issuer`.

    `is_ca=False` makes the classic misconfiguration: a certificate used to sign others
    that lacks basicConstraints CA:TRUE (KeyUsage still says keyCertSign).
    """
    key = new_key(key_type)
    issuer_name = issuer.cert.subject if issuer else _name(cn)
    issuer_key = issuer.key if issuer else key
    builder = (
        _builder(_name(cn), issuer_name, key, issuer_key, window or valid(days=3650))
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None),
            critical=True,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return Issued(builder.sign(issuer_key, hashes.SHA256()), key)


def make_leaf(
    issuer: Issued | None,
    *,
    names: Sequence[str] = ("registry.test",),
    ips: Sequence[str] = (),
    cn: str | None = None,
    san: bool = True,
    window: Window | None = None,
    is_ca: bool = False,
    key_type: KeyType = "ec",
    eku: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH,),
) -> Issued:
    """A TLS server certificate; `issuer=None` makes it self-signed.

    `eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)` makes a certificate a TLS client refuses for a
    server ("x509: certificate specifies an incompatible key usage").
    `san=False` leaves only the CN, which Go (containerd, docker) has ignored since 1.15.
    `is_ca=True` mimics `openssl req -x509`, whose self-signed certs say CA:TRUE.
    """
    key = new_key(key_type)
    subject = _name(cn or (names[0] if names else ips[0] if ips else "server"))
    issuer_name = issuer.cert.subject if issuer else subject
    issuer_key = issuer.key if issuer else key
    builder = (
        _builder(subject, issuer_name, key, issuer_key, window or valid(days=90))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    )
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    general += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if san and general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return Issued(builder.sign(issuer_key, hashes.SHA256()), key)


def write_pem(path: Path, *items: Issued | x509.Certificate) -> Path:
    """Concatenate certificates, in the order given, into one PEM file."""
    data = b"".join(
        i.pem if isinstance(i, Issued) else i.public_bytes(serialization.Encoding.PEM)
        for i in items
    )
    path.write_bytes(data)
    return path


def write_key(path: Path, issued: Issued) -> Path:
    path.write_bytes(issued.key_pem)
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class PKIPaths:
    root: Path  # root CA certificate
    intermediate: Path | None  # intermediate CA certificate (None without one)
    leaf: Path  # leaf certificate alone
    chain: Path  # leaf then intermediate: what a server presents (docker-registry's file)
    fullchain: Path  # leaf, intermediate, root: a server that also sends its root
    key: Path  # the leaf's private key


@dataclass(frozen=True)
class PKI:
    root: Issued
    intermediate: Issued | None
    leaf: Issued
    paths: PKIPaths
    names: tuple[str, ...] = field(default=())
    ips: tuple[str, ...] = field(default=())

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """What a well-configured server presents: leaf, then intermediate."""
        if self.intermediate is None or self.leaf is self.root:
            return (self.leaf.cert,)
        return (self.leaf.cert, self.intermediate.cert)

    @property
    def fullchain(self) -> tuple[x509.Certificate, ...]:
        if self.leaf is self.root:
            return (self.leaf.cert,)
        return (*self.chain, self.root.cert)


def make_pki(
    directory: Path | str,
    *,
    names: Sequence[str] = ("registry.test",),
    ips: Sequence[str] = (),
    key_type: KeyType = "ec",
    intermediate: bool = True,
    intermediate_is_ca: bool = True,
    san: bool = True,
    root_window: Window | None = None,
    intermediate_window: Window | None = None,
    leaf_window: Window | None = None,
    self_signed_leaf: bool = False,
    leaf_is_ca: bool = False,
    prefix: str = "",
) -> PKI:
    """Generate a PKI and write it under `directory` (created if missing).

    Files: `{prefix}root.pem`, `{prefix}intermediate.pem`, `{prefix}leaf.pem`,
    `{prefix}chain.pem` (leaf + intermediate), `{prefix}fullchain.pem`, `{prefix}leaf.key`.
    With `self_signed_leaf` the leaf is its own root: every certificate file holds it alone.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    inter: Issued | None = None
    if self_signed_leaf:
        leaf = make_leaf(
            None,
            names=names,
            ips=ips,
            san=san,
            window=leaf_window,
            is_ca=leaf_is_ca,
            key_type=key_type,
        )
        root = leaf
    else:
        root = make_ca("Lab Root CA", window=root_window, key_type=key_type)
        issuer = root
        if intermediate:
            inter = make_ca(
                "Lab Intermediate CA",
                issuer=root,
                window=intermediate_window,
                is_ca=intermediate_is_ca,
                path_length=0,
                key_type=key_type,
            )
            issuer = inter
        leaf = make_leaf(
            issuer,
            names=names,
            ips=ips,
            san=san,
            window=leaf_window,
            is_ca=leaf_is_ca,
            key_type=key_type,
        )
    presented = [leaf] if inter is None or self_signed_leaf else [leaf, inter]
    paths = PKIPaths(
        root=write_pem(out / f"{prefix}root.pem", root),
        intermediate=write_pem(out / f"{prefix}intermediate.pem", inter) if inter else None,
        leaf=write_pem(out / f"{prefix}leaf.pem", leaf),
        chain=write_pem(out / f"{prefix}chain.pem", *presented),
        fullchain=write_pem(
            out / f"{prefix}fullchain.pem", *presented, *([] if self_signed_leaf else [root])
        ),
        key=write_key(out / f"{prefix}leaf.key", leaf),
    )
    return PKI(root, inter, leaf, paths, tuple(names), tuple(ips))


DEFECTS = (
    "expired",
    "not-yet-valid",
    "name-mismatch",
    "legacy-cn",
    "no-ip-san",
    "missing-intermediate",
    "incompatible-usage",
)


def defective_chain(pki: PKI, host: str, defect: str) -> tuple[Issued, ...]:
    """What a server for `host` presents when its certificate has `defect` (one of DEFECTS),
    issued by `pki`'s intermediate, so that trusting `pki`'s root fixes nothing but the CA.

    - expired / not-yet-valid: the validity window (`expired()`, `not_yet_valid()`);
    - name-mismatch: valid for two other names; legacy-cn: the name in the CN alone;
    - no-ip-san: for an IP `host`, a certificate naming a DNS name only;
    - missing-intermediate: the leaf alone, its issuer never sent;
    - incompatible-usage: extended key usage clientAuth only.
    """
    if pki.intermediate is None:
        raise ValueError("defective_chain needs a PKI with an intermediate")
    issuer = pki.intermediate
    leaf: Issued
    if defect == "expired":
        leaf = make_leaf(issuer, names=(host,), window=expired())
    elif defect == "not-yet-valid":
        leaf = make_leaf(issuer, names=(host,), window=not_yet_valid())
    elif defect == "name-mismatch":
        leaf = make_leaf(issuer, names=("a.example", "b.example"))
    elif defect == "legacy-cn":
        leaf = make_leaf(issuer, names=(host,), san=False)
    elif defect == "no-ip-san":
        leaf = make_leaf(issuer, names=("registry.example",), cn=host)
    elif defect == "missing-intermediate":
        return (make_leaf(issuer, names=(host,)),)
    elif defect == "incompatible-usage":
        leaf = make_leaf(issuer, names=(host,), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    else:
        raise ValueError(f"unknown defect {defect!r}; one of {DEFECTS}")
    return (leaf, issuer)
