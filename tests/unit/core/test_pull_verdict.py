"""agent.core.pull_verdict: what the runtime's answer to a verification pull means.

Every x509 wording a detector must recognise (tests/fixtures/pull-errors.txt) is, as a
verification answer, "the runtime still does not trust it"; answers only a registry past
the TLS handshake can give verify the trust; anything else says nothing about trust.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.hostport import HostPort
from agent.core.pull_verdict import (
    INCONCLUSIVE,
    PAST_HANDSHAKE,
    PULLED,
    UNTRUSTED,
    PullVerdict,
    classify_pull_error,
    regarding,
    short,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "pull-errors.txt"


def x509_cases() -> list[str]:
    blocks = FIXTURE.read_text().split("\n---\n")
    return [
        "\n".join(line for line in block.splitlines() if not line.startswith("#")).strip()
        for block in blocks
        if "x509=" in block and "x509=none" not in block
    ]


@pytest.mark.parametrize("message", x509_cases())
def test_every_x509_wording_means_the_runtime_still_does_not_trust(message: str) -> None:
    assert classify_pull_error(message) == UNTRUSTED


@pytest.mark.parametrize(
    "message",
    [
        'failed to pull and unpack image "r.test:5443/lab/private:v1": failed to resolve reference'
        ' "r.test:5443/lab/private:v1": unexpected status from HEAD request to '
        "https://r.test:5443/v2/lab/private/manifests/v1: 401 Unauthorized",
        'failed to resolve reference "r.test:5443/lab/nope:v9": r.test:5443/lab/nope:v9: not found',
        "pull access denied for r.test:5443/lab/x, repository does not exist or may require "
        "'docker login': denied: requested access to the resource is denied",
        "HTTP 404: manifest unknown: manifest unknown",
        "failed to fetch anonymous token: unexpected status: 403 Forbidden",
    ],
)
def test_answers_past_the_handshake_verify_the_trust(message: str) -> None:
    assert classify_pull_error(message) == PAST_HANDSHAKE


def test_a_token_host_still_failing_tls_is_not_taken_for_an_auth_answer() -> None:
    message = (
        'failed to fetch anonymous token: Get "https://auth.test:5001/token?scope=x": '
        "x509: certificate signed by unknown authority"
    )
    assert classify_pull_error(message) == UNTRUSTED


@pytest.mark.parametrize(
    "message",
    [
        "failed to connect to all addresses; last error: UNAVAILABLE: unix:/run/x.sock: "
        "No such file or directory",
        "Deadline Exceeded",
        "dial tcp 198.18.100.2:5443: connect: connection refused",
    ],
)
def test_silence_says_nothing_about_trust(message: str) -> None:
    assert classify_pull_error(message) == INCONCLUSIVE


def test_a_verdict_reads_as_one_line() -> None:
    verdict = PullVerdict(UNTRUSTED, "containerd", "r.test/x:1", short("a\n  b " * 400), 0.2)
    assert not verdict.verified
    assert "\n" not in verdict.describe()
    assert len(verdict.detail) <= 600
    assert verdict.describe().startswith("containerd still fails TLS for r.test/x:1 (a b a b")


# containerd 2.1.9's words when the trusted registry's blob GET went to a CDN with another CA
CDN_FAILURE = (
    'failed to pull and unpack image "front-cdn.test:6443/lab/tiny:v1": failed to copy: '
    "httpReadSeeker: failed open: failed to do request: Get "
    '"https://cdn.test:7443/registry-v2/lab/tiny/blobs/sha256:9fe6/data?verify=%5BREDACTED%5D": '
    "tls: failed to verify certificate: x509: certificate signed by unknown authority"
)
FRONT = HostPort("front-cdn.test", 6443)
CDN = HostPort("cdn.test", 7443)


def _untrusted(message: str) -> PullVerdict:
    return PullVerdict(
        UNTRUSTED, "containerd", "front-cdn.test:6443/lab/tiny:v1", short(message), 0.1
    )


def test_x509_on_another_host_says_nothing_about_the_ca_just_written() -> None:
    """The front's CA worked (the pull went on to the CDN): no rollback, no verdict."""
    verdict = regarding(_untrusted(CDN_FAILURE), FRONT)
    assert verdict.kind == INCONCLUSIVE
    assert verdict.detail.startswith(
        "TLS fails on another host, cdn.test:7443, not on front-cdn.test:6443: "
    )


def test_x509_on_the_host_just_trusted_stays_untrusted() -> None:
    assert regarding(_untrusted(CDN_FAILURE), CDN).kind == UNTRUSTED
    manifest = (
        'failed to resolve reference "front-cdn.test:6443/lab/tiny:v1": failed to do request: '
        'Head "https://front-cdn.test:6443/v2/lab/tiny/manifests/v1": '
        "x509: certificate signed by unknown authority"
    )
    assert regarding(_untrusted(manifest), FRONT).kind == UNTRUSTED


def test_verdicts_other_than_untrusted_are_left_alone() -> None:
    pulled = PullVerdict(PULLED, "containerd", "front-cdn.test:6443/lab/tiny:v1", "", 0.1)
    assert regarding(pulled, CDN) is pulled


def test_a_long_error_keeps_its_failing_url_and_reason() -> None:
    """Long image names push the URL and Go's reason to the end: both survive shortening."""
    padded = CDN_FAILURE.replace("lab/tiny:v1", "lab/" + "x" * 400 + ":v1", 1)
    detail = short(padded)
    assert len(detail) <= 600
    assert detail.endswith("x509: certificate signed by unknown authority")
    assert regarding(_untrusted(padded), FRONT).kind == INCONCLUSIVE
