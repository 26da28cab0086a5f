"""What a runtime's answer to a pull says about the trust we just installed.

The runtime is the judge: after a CA is written, the runtime that failed pulls the failing
image again, through the same API kubelet uses. Its answer is one of:
- the pull worked: trust verified, and the image is already in the node's store;
- the registry answered past the TLS handshake (401/403/404: no pull secret, no such tag):
  trust verified too; the agent holds no pull secrets and needs none;
- an x509 error again: the runtime did not pick the CA up (another directory, a competing
  hosts.toml, a cached system pool) and the install must be rolled back;
- anything else (connection refused, a timeout): the runtime said nothing about trust.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from agent.core.detect import parse_pull_error
from agent.core.hostport import HostPort

PULLED = "pulled"
PAST_HANDSHAKE = "past-handshake"
UNTRUSTED = "untrusted"
INCONCLUSIVE = "inconclusive"

VERIFIED = frozenset({PULLED, PAST_HANDSHAKE})

_X509 = re.compile(
    r"x509:|tls: failed to verify certificate|certificate signed by unknown authority"
    r"|certificate is not trusted|unknown certificate authority",
    re.IGNORECASE,
)
# Answers that only a registry past the handshake can give (distribution and Docker Hub
# wordings, as containerd, CRI-O and dockerd relay them).
_PAST_HANDSHAKE = re.compile(
    r"\b401\b|\b403\b|\b404\b|unauthorized|authorization failed|authentication required"
    r"|access denied|insufficient_scope|denied: |manifest unknown|name unknown"
    r"|not found|no basic auth credentials|pull access denied",
    re.IGNORECASE,
)
_DETAIL_LIMIT = 600


@dataclass(frozen=True)
class PullVerdict:
    """The runtime's word on one pull: `kind` is one of the constants above."""

    kind: str
    runtime: str
    image: str
    detail: str  # the runtime's own message (truncated), or the image reference it pulled
    seconds: float

    @property
    def verified(self) -> bool:
        return self.kind in VERIFIED

    def describe(self) -> str:
        what = {
            PULLED: f"{self.runtime} pulled {self.image}",
            PAST_HANDSHAKE: f"{self.runtime} reached the registry past TLS for {self.image}",
            UNTRUSTED: f"{self.runtime} still fails TLS for {self.image}",
            INCONCLUSIVE: f"{self.runtime} could not tell for {self.image}",
        }[self.kind]
        return f"{what} ({self.detail})" if self.detail else what


def classify_pull_error(message: str) -> str:
    """UNTRUSTED, PAST_HANDSHAKE or INCONCLUSIVE for a failed pull's error text.

    An x509 wording wins over everything else: "failed to resolve reference ... x509: ..."
    mentions resolving too, but the handshake is what failed.
    """
    if _X509.search(message):
        return UNTRUSTED
    if _PAST_HANDSHAKE.search(message):
        return PAST_HANDSHAKE
    return INCONCLUSIVE


def regarding(verdict: PullVerdict, endpoint: HostPort) -> PullVerdict:
    """The verdict about the CA just written for `endpoint`.

    An x509 error on another host (the CDN a blob GET was redirected to, a token realm, a
    mirror tried first) says nothing about `endpoint`: inconclusive, never a reason to roll
    back. Measured (tests/e2e/test_redirects_e2e.py): with the registry front trusted, the
    pull fails on the CDN; rolling the front back, then trying system scope, fixed nothing.
    """
    if verdict.kind != UNTRUSTED:
        return verdict
    failure = parse_pull_error(verdict.detail)
    if failure is None or failure.failing is None or failure.failing == endpoint:
        return verdict
    about = f"TLS fails on another host, {failure.failing.key}, not on {endpoint.key}"
    return replace(verdict, kind=INCONCLUSIVE, detail=f"{about}: {verdict.detail}")


def short(message: str) -> str:
    """One line of at most a few hundred characters, for Event messages and logs.

    Head and tail are kept: the failing URL and Go's x509 reason are at the end."""
    line = " ".join(message.split())
    if len(line) <= _DETAIL_LIMIT:
        return line
    half = (_DETAIL_LIMIT - 5) // 2
    return f"{line[:half]} ... {line[-half:]}"
