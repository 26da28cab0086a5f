"""The x509 pull failures a CA cannot fix: what is wrong, in one sentence, and who fixes it.

An expired or not-yet-valid registry certificate, one for other names, one that names its
host in the Common Name only, an IP registry whose certificate lacks that IP, a certificate
not meant for TLS servers, a node that already trusts another CA of the same name: installing
a CA changes none of these, so the agent installs nothing and says precisely what is wrong
(Go's wordings, captured from real containerd pulls, are in tests/fixtures/pull-errors.txt).

The message alone decides every kind but one. A server that does not send its intermediate
fails with the plain unknown-authority wording; only the chain it presented tells: a lone
leaf, not self-signed, whose issuer is not in the chain. Trusting that intermediate does fix
the pull for containerd and docker (an intermediate-only anchor works, shared/LAB.md), but
the agent cannot take it from the server, which never sends it: the operator can provide it,
or the registry's owner can send the full chain.

Pure: the chain (agent.core.trust.CertInfo, from a fetch) and the clock are arguments.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.detect import PullFailure
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo

KINDS = (
    "expired",
    "not-yet-valid",
    "name-mismatch",
    "legacy-cn",
    "no-ip-san",
    "incompatible-usage",
    "not-standards-compliant",
    "conflicting-ca",
    "missing-intermediate",
)
# who can make the pull work
REGISTRY_OWNER = "registry-owner"
NODE_OPERATOR = "node-operator"  # the node's trust (a stale same-named CA) or clock
OPERATOR_OR_OWNER = "operator-or-registry-owner"  # missing intermediate: either side

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TIME = r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
# "current time 2026-12-07T09:55:00Z is after 2026-11-27T09:55:00Z" (Go's RFC 3339 times)
_VALIDITY = re.compile(rf"current time {_TIME} is (after|before) {_TIME}")
_VALID_FOR = re.compile(r"x509: certificate is valid for ([^\n]{1,800}?), not ([^\s,;:\"]{1,300})")
_NO_IP_SAN = re.compile(r"x509: cannot validate certificate for ([0-9A-Fa-f.:]{2,64}) because")
_NO_NAMES = "x509: certificate is not valid for any names"
_LEGACY_CN = "x509: certificate relies on legacy common name field"
_USAGE = "x509: certificate specifies an incompatible key usage"
_NOT_COMPLIANT = "certificate is not standards compliant"
# wordings that name the defect outright: (phrase, kind, what is wrong with the certificate)
_PHRASES = (
    (
        _LEGACY_CN,
        "legacy-cn",
        "names its host only in the Common Name, which Go (containerd, docker) has ignored "
        "since 1.15, and not in a subjectAltName",
    ),
    (
        _USAGE,
        "incompatible-usage",
        "is not for TLS servers (its extended key usage lacks serverAuth)",
    ),
    (
        _NOT_COMPLIANT,
        "not-standards-compliant",
        "breaks the platform's certificate rules (validity too long, or no SAN)",
    ),
)


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # one of KINDS
    host: HostPort | None  # the host whose certificate is at fault (the failing one)
    summary: str  # one sentence: what is wrong, with the facts, and who can fix it
    fixed_by: str  # REGISTRY_OWNER, NODE_OPERATOR or OPERATOR_OR_OWNER
    ca_would_fix: bool = False  # only for a missing intermediate: trusting it works

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown diagnosis kind {self.kind!r}")


def diagnose(
    failure: PullFailure,
    chain: Sequence[CertInfo] = (),
    *,
    now: dt.datetime | None = None,
    declared: Sequence[CertInfo] = (),
) -> Diagnosis | None:
    """What a CA cannot fix in `failure`; None when trusting the right CA can fix it.

    `chain` is what the failing host presented (leaf first), when the agent fetched it: it
    confirms the message and is the only evidence of a missing intermediate. `now` is needed
    only to date a validity problem seen on the chain when the message has no times.
    `declared` are CAs the operator declared (an interception CA): a TLS-inspecting proxy
    that sends its leaf alone looks exactly like a missing intermediate, and is not one when
    the leaf's issuer is such a CA.
    """
    text = failure.message
    lower = text.translate(_ASCII_LOWER)
    host = failure.failing
    leaf = chain[0] if chain else None
    if failure.kind == "expired":
        return _validity(text, host, leaf, now)
    if failure.kind == "conflicting-ca":
        return _conflicting(failure, host)
    if failure.kind == "hostname-mismatch":
        return _mismatch(text, lower, host, leaf)
    for phrase, kind, wrong in _PHRASES:
        if phrase in lower:
            return Diagnosis(
                kind,
                host,
                f"{_whose(host)} {wrong}; trusting a CA cannot fix this: the registry's owner "
                "must reissue it",
                REGISTRY_OWNER,
            )
    if failure.kind == "unknown-authority" and chain:
        return _missing_intermediate(host, chain, declared)
    return None


def _whose(host: HostPort | None) -> str:
    return f"the certificate of {host}" if host is not None else "the registry's certificate"


def _day(when: str | dt.datetime) -> str:
    if isinstance(when, dt.datetime):
        return when.date().isoformat()
    return when[:10]


def _validity(
    text: str, host: HostPort | None, leaf: CertInfo | None, now: dt.datetime | None
) -> Diagnosis:
    match = _VALIDITY.search(text)
    if match is not None:
        current, relation, bound = match.groups()
        expired = relation == "after"
    elif leaf is not None and now is not None:
        expired = now > leaf.not_after
        current, bound = now.isoformat(), (leaf.not_after if expired else leaf.not_before)
    else:
        return Diagnosis(
            "expired",
            host,
            f"{_whose(host)} is expired or not yet valid; trusting a CA cannot fix this: "
            "the registry's owner must renew it (or the node's clock is wrong)",
            REGISTRY_OWNER,
        )
    if expired:
        return Diagnosis(
            "expired",
            host,
            f"{_whose(host)} expired on {_day(bound)}; trusting a CA cannot fix this: "
            "the registry's owner must renew it",
            REGISTRY_OWNER,
        )
    return Diagnosis(
        "not-yet-valid",
        host,
        f"{_whose(host)} is valid only from {_day(bound)} and the node's clock says "
        f"{_day(current)}; trusting a CA cannot fix this: the node's clock is wrong or the "
        "registry's owner must serve a certificate valid now",
        NODE_OPERATOR,
    )


def _mismatch(text: str, lower: str, host: HostPort | None, leaf: CertInfo | None) -> Diagnosis:
    ip = _NO_IP_SAN.search(text)
    if ip is not None:
        return Diagnosis(
            "no-ip-san",
            host,
            f"the image names its registry by the IP address {ip.group(1)}, which "
            f"{_whose(host)} does not list as an IP SAN; trusting a CA cannot fix this: the "
            "registry's owner must add the IP to its certificate, or the image must use a "
            "name the certificate has",
            REGISTRY_OWNER,
        )
    valid = _VALID_FOR.search(text)
    if valid is not None:
        names, wanted = valid.groups()
    elif _NO_NAMES in lower:
        names, wanted = "no names", (host.host if host else "the registry")
    else:
        names = ", ".join((leaf.san_dns + leaf.san_ip) if leaf else ()) or "other names"
        wanted = host.host if host else "the registry"
    return Diagnosis(
        "name-mismatch",
        host,
        f"{_whose(host)} is valid for {names}, not {wanted}; trusting a CA cannot fix this: "
        "the registry's owner must serve a certificate for that name, or the image must use "
        "a name the certificate has",
        REGISTRY_OWNER,
    )


def _conflicting(failure: PullFailure, host: HostPort | None) -> Diagnosis:
    return Diagnosis(
        "conflicting-ca",
        host,
        f"the node already trusts a CA named {failure.hint_authority!r} that did not sign "
        f"{_whose(host)} ({failure.hint}); another CA with the same name must be removed "
        "from the node's trust before the right one can be used",
        NODE_OPERATOR,
    )


def _missing_intermediate(
    host: HostPort | None, chain: Sequence[CertInfo], declared: Sequence[CertInfo]
) -> Diagnosis | None:
    """A lone leaf issued by a CA the server does not send: only the chain tells."""
    leaf = chain[0]
    sent = {c.subject for c in chain[1:]} | {c.subject for c in declared}
    if leaf.self_signed or leaf.is_ca or leaf.issuer in sent:
        return None
    if len(chain) > 1 and any(c.is_ca for c in chain[1:]):
        return None  # some CA was sent: the anchor choice, not a missing link
    return Diagnosis(
        "missing-intermediate",
        host,
        f"{_whose(host)} is sent without the CA that issued it ({leaf.issuer}); the agent "
        "cannot take that CA from the server: the registry's owner should send the full "
        "chain, or the operator can provide that intermediate, and trusting it fixes the pull",
        OPERATOR_OR_OWNER,
        ca_would_fix=True,
    )
