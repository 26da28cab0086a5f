"""agent.core.detect against hostile input: it never raises, never hangs, and any host it
returns is a valid HostPort.

Error messages and pod statuses reach the agent from the API server, and anyone who can
create a pod or an Event can write them. Hangs are caught by the per-test timeout (no
timing assertions here: a pathological regex would run for minutes, not milliseconds).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.detect import (
    KINDS,
    MESSAGE_LIMIT_BYTES,
    PullFailure,
    image_registry,
    parse_pull_error,
    pod_pull_failure_from_event,
    pull_failure_from_event,
    pull_failures_from_pod,
)
from agent.core.errors import InputError
from agent.core.hostport import HostPort, parse_hostport

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces of real messages, so random combinations reach the deep branches.
FRAGMENTS = [
    "https://",
    "http://",
    'Get "',
    "Head ",
    '": ',
    ": ",
    "/v2/",
    "[",
    "]",
    ":",
    "@",
    "%",
    ".",
    "-",
    "_",
    "::1",
    "registry.test",
    "5443",
    "99999",
    "x509: ",
    "certificate signed by unknown authority",
    "certificate is valid for ",
    ", not ",
    "certificate has expired or is not yet valid",
    ' (possibly because of "',
    '" while trying to verify candidate authority certificate "',
    '")',
    "\\",
    '"',
    'Failed to pull image "',
    'failed to resolve reference "',
    "error pinging docker registry ",
    "pinging container registry ",
    'Back-off pulling image "',
    "initializing source docker://",
    "İ",
    "\x00",
    "\n",
    " ",
]

fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40
).map("".join)


def check_failure(failure: PullFailure | None, message: str) -> None:
    if failure is None:
        return
    assert failure.kind in KINDS
    assert failure.x509 in KINDS
    assert failure.x509 != "conflicting-ca"
    assert len(failure.message.encode("utf-8")) <= MESSAGE_LIMIT_BYTES
    for hostport in (failure.failing, failure.registry):
        if hostport is not None:
            assert isinstance(hostport, HostPort)
            assert HostPort(hostport.host, hostport.port) == hostport  # revalidates
            assert parse_hostport(hostport.key) == hostport
            assert "/" not in hostport.key
            assert "\x00" not in hostport.key
    if failure.remediable:
        assert failure.failing is not None
        assert failure.kind == "unknown-authority"


@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text_never_raises(message: str) -> None:
    check_failure(parse_pull_error(message), message)


@FUZZ
@given(fragment_text, st.one_of(st.none(), st.text(max_size=100)))
def test_messages_built_from_real_fragments_never_raise(message: str, hint: str | None) -> None:
    check_failure(parse_pull_error(message, hint), message)


@FUZZ
@given(st.binary(max_size=600))
def test_bytes_decoded_any_way_never_raise(data: bytes) -> None:
    message = data.decode("latin-1")
    check_failure(parse_pull_error(message), message)


@FUZZ
@given(
    st.text(alphabet=st.characters(codec="ascii"), max_size=80),
    st.sampled_from(["", "/v2/", ":", "?x", '"']),
)
def test_any_authority_in_a_url_yields_a_valid_host_or_none(authority: str, tail: str) -> None:
    message = f'Get "https://{authority}{tail}": x509: certificate signed by unknown authority'
    failure = parse_pull_error(message)
    assert failure is not None
    check_failure(failure, message)


@pytest.mark.parametrize(
    "message",
    [
        "https://" * 20000 + "x509: certificate signed by unknown authority",
        "https://" + "a" * 100000 + ": x509: certificate signed by unknown authority",
        'x509: certificate signed by unknown authority (possibly because of "' + "\\\\" * 50000,
        'x509: certificate signed by unknown authority (possibly because of "'
        + '\\"' * 50000
        + '" while trying to verify candidate authority certificate "',
        'Failed to pull image "' * 30000 + "x509: certificate signed by unknown authority",
        "error pinging docker registry " * 10000 + "x509: certificate signed by unknown",
        "x509: certificate is valid for " + "a, " * 100000 + "not b",
        "[" * 100000 + "https://[" * 1000 + "x509: certificate signed by unknown authority",
        " " * 1_000_000 + "x509: certificate signed by unknown authority",
        "İ" * 100000 + "x509:",
        "initializing source docker://" * 5000 + "x509: certificate signed by unknown authority",
        "initializing source docker://" + "a:" * 50000 + " x509:",
    ],
    ids=lambda m: f"{len(m)}-chars",
)
@pytest.mark.timeout(60)
def test_pathological_messages_finish(message: str) -> None:
    check_failure(parse_pull_error(message), message)


def test_a_message_past_the_scan_limit_is_not_read_further() -> None:
    """The bound is what makes the regexes safe; the tail of a giant message is ignored."""
    assert (
        parse_pull_error(" " * 1_000_000 + "x509: certificate signed by unknown authority") is None
    )


@FUZZ
@given(st.text(max_size=300))
def test_image_registry_raises_only_input_error(image: str) -> None:
    try:
        registry = image_registry(image)
    except InputError:
        return
    assert parse_hostport(registry.key) == registry


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=20),
        st.sampled_from(
            ["ErrImagePull", "ImagePullBackOff", "Failed", "FailedCreatePodSandBox", "Pod"]
        ),
        fragment_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "metadata",
                    "spec",
                    "status",
                    "containerStatuses",
                    "initContainerStatuses",
                    "ephemeralContainerStatuses",
                    "containers",
                    "state",
                    "waiting",
                    "reason",
                    "message",
                    "name",
                    "image",
                    "involvedObject",
                    "kind",
                    "fieldPath",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["metadata", "spec", "status"]), json_values))
def test_arbitrary_pod_json_never_raises(pod: dict[str, Any]) -> None:
    for found in pull_failures_from_pod(pod):
        check_failure(found.failure, "")
        assert found.reason in ("ErrImagePull", "ImagePullBackOff")


@FUZZ
@given(json_values)
def test_arbitrary_event_json_never_raises(event: Any) -> None:
    if not isinstance(event, dict):
        event = {"reason": "Failed", "message": event}
    check_failure(pull_failure_from_event(event), "")
    found = pod_pull_failure_from_event(event)
    if found is not None:
        check_failure(found.failure, "")
