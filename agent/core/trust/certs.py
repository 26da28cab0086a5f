"""Certificates as values: `CertInfo` parsed from DER or a PEM bundle, and deterministic
bundle bytes (only CERTIFICATE blocks, de-duplicated, sorted by SHA-256).

The input is what an untrusted server sent or an operator pasted: anything unparsable is
a `TrustError(kind="malformed")`, and a private key is never let through.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from agent.core.errors import TrustError

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
