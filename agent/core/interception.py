"""Pure: does the chain a covered registry presented end at the declared interception CA?

A TLS-inspecting proxy re-signs every connection with its own CA and usually sends the leaf
alone. The operator declared that CA (policy `interception`), so nothing is learned from
the fetch: the fetched chain (what the runtime is shown, through its proxy) only has to
verify, for the registry's name, up to one of the declared certificates, or, for an `spki`
declaration, to a CA the proxy sent whose SubjectPublicKeyInfo has a declared SHA-256
(so a proxy CA re-issued with the same key, or rotating intermediates, still match).
Anything else on a covered host is refused with what was presented: the proxy was bypassed
for that host, or someone else re-signs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.core.errors import TrustError
from agent.core.hostport import HostPort
from agent.core.trust import Analysis, CertInfo, analyze_with_anchor

NOT_INTERCEPTED = "not-intercepted"  # TrustError kind: the chain does not end at the CA


def spki_sha256(cert: CertInfo) -> str:
    """`sha256:` + upper-case hex of the certificate's SubjectPublicKeyInfo (DER)."""
    key = x509.load_der_x509_certificate(cert.der).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest().upper()


def presented(chain: Sequence[CertInfo]) -> str:
    """What a server presented, in one phrase for an Event."""
    if not chain:
        return "no certificate"
    leaf = chain[0]
    more = f" with {len(chain) - 1} more certificate(s): " if len(chain) > 1 else ""
    rest = " -> ".join(c.subject for c in chain[1:])
    return f"{leaf.subject} issued by {leaf.issuer}{more}{rest}"


def match_declared(
    chain: Sequence[CertInfo],
    target: HostPort,
    *,
    declared: Sequence[CertInfo] = (),
    spki: Collection[str] = (),
    now: dt.datetime,
) -> Analysis:
    """The analysis of `chain` anchored at the declared CA it ends at, or TrustError.

    A chain that reaches a declared CA but fails for another reason (the proxy's leaf is for
    another name, or expired) is refused with that reason; a chain that reaches none is
    refused as NOT_INTERCEPTED, naming what was presented.
    """
    candidates = list(declared)
    if spki:
        candidates += [c for c in chain if c.is_ca and spki_sha256(c) in spki]
    linked: TrustError | None = None
    for anchor in candidates:
        try:
            return analyze_with_anchor(chain, anchor, target, now=now)
        except TrustError as exc:
            if exc.kind not in ("chain-does-not-link", "not-a-ca") and linked is None:
                linked = exc
    if linked is not None:
        raise linked
    if declared:
        wanted = "the declared interception CA " + ", ".join(
            f"{c.subject} ({c.sha256})" for c in declared
        )
    else:
        wanted = "a CA with the declared interception SPKI " + ", ".join(sorted(spki))
        if len(chain) == 1:
            wanted += " (the proxy sends its leaf alone: declare its CA as caPEM or caFrom)"
    raise TrustError(
        f"{target.key} presented {presented(chain)}, which does not end at {wanted}; "
        "nothing was trusted: the connection did not go through the declared proxy, or "
        "another CA re-signs it",
        kind=NOT_INTERCEPTED,
    )
