"""agent.core.detect: pull-error wordings, pod statuses and Events -> PullFailure.

The fixture tests/fixtures/pull-errors.txt is the ground truth: every block in it is one
test case below, checked against its own `# expect:` line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agent.core.detect import (
    DOCKER_HUB,
    MESSAGE_LIMIT_BYTES,
    PodPullFailure,
    PullFailure,
    image_registry,
    normalize_image,
    parse_pull_error,
    pod_pull_failure_from_event,
    pull_failure_from_event,
    pull_failures_from_pod,
)
from agent.core.errors import InputError
from agent.core.hostport import HostPort, parse_hostport

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "pull-errors.txt"

UNKNOWN_AUTHORITY = (
    'failed to pull and unpack image "registry.test:5443/lab/tiny:v1": failed to resolve '
    'reference "registry.test:5443/lab/tiny:v1": failed to do request: Head '
    '"https://registry.test:5443/v2/lab/tiny/manifests/v1": x509: certificate signed by '
    "unknown authority"
)


# --- the fixture as a table -------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    line: int
    source: str
    expect: dict[str, str]
    message: str

    @property
    def id(self) -> str:
        label = re.sub(r"[^a-z0-9]+", "-", self.source.lower()).strip("-")[:40]
        return f"L{self.line}-{label}"


def _fixture_cases() -> list[Case]:
    cases: list[Case] = []
    block: list[tuple[int, str]] = []
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate([*lines, "---"], start=1):
        if line.strip() == "---":
            if any(not text.startswith("#") and text.strip() for _, text in block):
                cases.append(_case(block))
            block = []
        else:
            block.append((number, line))
    return cases


def _case(block: list[tuple[int, str]]) -> Case:
    headers = [text[1:].strip() for _, text in block if text.startswith("#")]
    body = [(n, text) for n, text in block if text.strip() and not text.startswith("#")]
    expect_lines = [h for h in headers if h.startswith("expect:")]
    assert len(expect_lines) == 1, f"block at line {body[0][0]} needs one expect: line"
    expect = dict(re.findall(r"(host|image|x509)=(\S+?)(?=[\s,]|$)", expect_lines[0]))
    source = next(h for h in reversed(headers) if not h.startswith("expect:"))
    return Case(body[0][0], source, expect, "\n".join(text for _, text in body))


def _host_of_url(message: str) -> HostPort | None:
    """An independent oracle for blocks without host=: the URL's host, via urllib."""
    match = re.search(r"https://[^\s\"]+", message)
    if match is None:
        return None
    netloc = urlsplit(match.group(0).rstrip(":")).netloc
    return parse_hostport(netloc)


CASES = _fixture_cases()


def test_the_fixture_has_every_case() -> None:
    """A parsing slip in this file must not silently drop cases from the table."""
    blocks = FIXTURE.read_text(encoding="utf-8").count("\n---\n") + 1
    assert len(CASES) == blocks == 34


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fixture_case_parses_to_its_expect_line(case: Case) -> None:
    failure = parse_pull_error(case.message)

    assert failure is not None
    assert failure.x509 == case.expect["x509"]
    if "host" in case.expect:
        assert failure.failing == parse_hostport(case.expect["host"])
    else:
        assert failure.failing == _host_of_url(case.message)
    assert failure.image == case.expect.get("image")
    assert failure.message == case.message


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fixture_cases_marked_not_a_remediation_case_are_not_remediable(case: Case) -> None:
    failure = parse_pull_error(case.message)
    assert failure is not None
    if "not a remediation case" in case.source.lower():
        assert not failure.remediable
    if case.expect["x509"] == "hostname-mismatch":
        assert failure.kind == "hostname-mismatch"


def test_fixture_registries_are_the_images_registries() -> None:
    registries = {
        c.expect["image"]: parse_pull_error(c.message).registry  # type: ignore[union-attr]
        for c in CASES
        if "image" in c.expect
    }
    assert registries == {
        "registry.test:5443/lab/tiny:v1": HostPort("registry.test", 5443),
        "registry.test:5443/lab/busybox:v1": HostPort("registry.test", 5443),
        "pvt-registry.com/nginx:latest": HostPort("pvt-registry.com", 443),
        "docker.io/moby/buildkit:v0.8.3": DOCKER_HUB,
        "bitnami/redis-cluster:latest": DOCKER_HUB,
        # CDN and token-realm failures: the registry is the image's, not the failing host
        "front-cdn.test:6443/lab/tiny:v1": HostPort("front-cdn.test", 6443),
        "front-auth.test:6444/lab/tiny:v1": HostPort("front-auth.test", 6444),
        # the defects a CA cannot fix, one registry name each (IP: the no-IP-SAN case)
        **{
            f"{host}/lab/tiny:v1": HostPort(host, 443)
            for host in (
                "expired.test",
                "not-yet-valid.test",
                "name-mismatch.test",
                "legacy-cn.test",
                "198.18.99.99",
                "missing-intermediate.test",
                "incompatible-usage.test",
                "conflicting-ca.test",
            )
        },
    }


# --- classification ---------------------------------------------------------------------


def test_unknown_authority_with_a_url_is_remediable() -> None:
    failure = parse_pull_error(UNKNOWN_AUTHORITY)
    assert failure == PullFailure(
        kind="unknown-authority",
        failing=HostPort("registry.test", 5443),
        image="registry.test:5443/lab/tiny:v1",
        registry=HostPort("registry.test", 5443),
        message=UNKNOWN_AUTHORITY,
    )
    assert failure.remediable
    assert not failure.conflicting_ca


def test_a_hand_built_failure_takes_its_x509_class_from_its_kind() -> None:
    def built(kind: str) -> PullFailure:
        return PullFailure(kind=kind, failing=None, image=None, registry=None, message="")

    assert built("hostname-mismatch").x509 == "hostname-mismatch"
    assert built("conflicting-ca").x509 == "unknown-authority"
    with pytest.raises(ValueError, match="unknown pull failure kind"):
        built("x509")


def test_unknown_authority_without_a_url_is_not_remediable() -> None:
    """Nothing names the host whose chain to fetch, so there is nothing to install."""
    failure = parse_pull_error("x509: certificate signed by unknown authority")
    assert failure is not None
    assert failure.kind == "unknown-authority"
    assert failure.failing is None
    assert not failure.remediable


def test_a_message_without_an_x509_error_is_not_a_pull_failure() -> None:
    assert parse_pull_error('Failed to pull image "x": manifest unknown') is None
    assert (
        parse_pull_error(
            'Get "https://registry.test/v2/": dial tcp 10.0.0.1:443: connect: connection refused'
        )
        is None
    )
    assert parse_pull_error("") is None


def test_rsa_hint_means_a_conflicting_ca_and_names_it() -> None:
    """A CA with the issuer's name was found but did not sign: never auto-remediated."""
    failure = parse_pull_error(
        'Head "https://registry.corp/v2/": x509: certificate signed by unknown authority '
        '(possibly because of "crypto/rsa: verification error" while trying to verify '
        'candidate authority certificate "corp-root")'
    )
    assert failure is not None
    assert failure.kind == "conflicting-ca"
    assert failure.x509 == "unknown-authority"
    assert failure.hint == "crypto/rsa: verification error"
    assert failure.hint_authority == "corp-root"
    assert failure.failing == HostPort("registry.corp")
    assert failure.conflicting_ca
    assert not failure.remediable


def test_ecdsa_hint_is_a_conflicting_ca_too() -> None:
    """Go words the ECDSA signature failure differently; it means the same thing."""
    failure = parse_pull_error(
        "error pulling image configuration: Get https://production.cloudflare.docker.com/x: "
        "x509: certificate signed by unknown authority (possibly because of "
        '"x509: ECDSA verification failure" while trying to verify candidate authority '
        'certificate "COMODO ECC Domain Validation Secure Server CA 2")'
    )
    assert failure is not None
    assert (failure.kind, failure.x509) == ("conflicting-ca", "unknown-authority")
    assert failure.hint == "x509: ECDSA verification failure"
    assert failure.hint_authority == "COMODO ECC Domain Validation Secure Server CA 2"
    assert failure.failing == HostPort("production.cloudflare.docker.com")
    assert not failure.remediable


def test_hint_authority_with_go_escaped_quotes_is_unescaped() -> None:
    failure = parse_pull_error(
        "x509: certificate signed by unknown authority (possibly because of "
        '"crypto/rsa: verification error" while trying to verify candidate authority '
        r'certificate "Corp \"Root\" CA")'
    )
    assert failure is not None
    assert failure.hint_authority == 'Corp "Root" CA'


@pytest.mark.parametrize(
    "tail",
    [
        "x509: certificate is valid for a.example, b.example, not registry.test",
        "x509: certificate is valid for a.example, not registry.test",
        "x509: certificate is not valid for any names, but wanted to match registry.test",
        "x509: cannot validate certificate for 10.0.0.1 because it doesn't contain any IP SANs",
    ],
)
def test_hostname_mismatch_wordings_are_never_remediable(tail: str) -> None:
    failure = parse_pull_error(f'Get "https://registry.test/v2/": {tail}')
    assert failure is not None
    assert failure.kind == failure.x509 == "hostname-mismatch"
    assert failure.failing == HostPort("registry.test")
    assert not failure.remediable


def test_expired_certificate_is_its_own_kind() -> None:
    failure = parse_pull_error(
        'Get "https://registry.test/v2/": x509: certificate has expired or is not yet valid: '
        "current time 2026-11-27T10:00:00Z is after 2025-01-01T00:00:00Z"
    )
    assert failure is not None
    assert failure.kind == "expired"
    assert not failure.remediable


def test_any_other_x509_error_is_other_x509() -> None:
    failure = parse_pull_error(
        'Get "https://registry.test/v2/": x509: certificate relies on legacy Common Name field'
    )
    assert failure is not None
    assert failure.kind == "other-x509"
    assert not failure.remediable


def test_a_mismatch_anywhere_in_the_message_wins_over_unknown_authority() -> None:
    """When errors are concatenated, the one that must not be auto-fixed decides."""
    failure = parse_pull_error(
        'Get "https://a.test/v2/": x509: certificate signed by unknown authority; '
        'Get "https://b.test/v2/": x509: certificate is valid for c.test, not b.test'
    )
    assert failure is not None
    assert failure.kind == "hostname-mismatch"
    assert failure.failing == HostPort("b.test")


# --- the failing host -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url_part", "expected"),
    [
        ('Get "https://registry.test/v2/"', HostPort("registry.test", 443)),
        ('Head "https://registry.test:5443/v2/x/manifests/v1"', HostPort("registry.test", 5443)),
        ('POST "https://auth.registry.test/token"', HostPort("auth.registry.test", 443)),
        ("Get https://registry.test/v2/", HostPort("registry.test", 443)),
        ("Get https://registry.test:5000", HostPort("registry.test", 5000)),
        ("Get https://registry.test", HostPort("registry.test", 443)),
        ('Get "https://REGISTRY.Test/v2/"', HostPort("registry.test", 443)),
        ('Get "https://[::1]:5000/v2/"', HostPort("::1", 5000)),
        ('Get "https://[2001:db8::1]/v2/"', HostPort("2001:db8::1", 443)),
        ('Get "https://10.1.2.3:8443/v2/"', HostPort("10.1.2.3", 8443)),
        ('Get "https://user:secret@registry.test/v2/"', HostPort("registry.test", 443)),
        ('Get "https://registry.test?x=1"', HostPort("registry.test", 443)),
        ('Get "HTTPS://registry.test/v2/"', HostPort("registry.test", 443)),
    ],
)
def test_the_failing_host_comes_from_the_url(url_part: str, expected: HostPort) -> None:
    failure = parse_pull_error(f"{url_part}: x509: certificate signed by unknown authority")
    assert failure is not None
    assert failure.failing == expected


def test_the_failing_host_is_the_last_url_before_the_error() -> None:
    """Earlier URLs belong to requests that failed differently (or succeeded)."""
    failure = parse_pull_error(
        'Get "https://mirror.test/v2/": dial tcp: i/o timeout; '
        'Get "https://registry.test/v2/": x509: certificate signed by unknown authority '
        "(see https://docs.example/x509)"
    )
    assert failure is not None
    assert failure.failing == HostPort("registry.test")


@pytest.mark.parametrize(
    "url",
    [
        "https://bad_host-.test/v2/",
        "https://registry.test:99999/v2/",
        "https://registry.test:0/",
        "https://%2e%2e/v2/",
        "https://[not-ipv6]/v2/",
        "https://a..b/v2/",
    ],
)
def test_an_odd_host_in_the_url_gives_no_failing_host_rather_than_an_error(url: str) -> None:
    failure = parse_pull_error(f'Get "{url}": x509: certificate signed by unknown authority')
    assert failure is not None
    assert failure.failing is None
    assert not failure.remediable


def test_pinging_prefix_names_the_host_when_there_is_no_url() -> None:
    failure = parse_pull_error(
        "pinging container registry quay.example:8443: x509: certificate signed by unknown "
        "authority"
    )
    assert failure is not None
    assert failure.failing == HostPort("quay.example", 8443)


def test_the_url_wins_over_the_pinging_prefix() -> None:
    failure = parse_pull_error(
        "error pinging docker registry reg.example: Get https://reg.example:5000/v2/: "
        "x509: certificate signed by unknown authority"
    )
    assert failure is not None
    assert failure.failing == HostPort("reg.example", 5000)


# --- the image --------------------------------------------------------------------------


def test_cri_o_wording_names_the_image_as_a_docker_source() -> None:
    failure = parse_pull_error(
        "initializing source docker://registry.test:5443/lab/tiny:v1: pinging container "
        'registry registry.test:5443: Get "https://registry.test:5443/v2/": tls: failed to '
        "verify certificate: x509: certificate signed by unknown authority"
    )
    assert failure is not None
    assert failure.image == "registry.test:5443/lab/tiny:v1"
    assert failure.failing == HostPort("registry.test", 5443)
    assert failure.remediable


def test_the_image_hint_is_used_when_the_message_names_no_image() -> None:
    failure = parse_pull_error(
        'Get "https://registry-ns.test:5443/v2/": x509: certificate signed by unknown authority',
        "registry-ns.test:5443/lab/tiny:v1",
    )
    assert failure is not None
    assert failure.image == "registry-ns.test:5443/lab/tiny:v1"
    assert failure.registry == HostPort("registry-ns.test", 5443)


def test_the_image_in_the_message_wins_over_the_hint() -> None:
    """A sandbox failure names the pause image; the hint would be the app's image."""
    message = (
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox "
        'image "mirror.corp/pause:3.9": failed to pull image "mirror.corp/pause:3.9": failed '
        'to pull and unpack image "mirror.corp/pause:3.9": failed to resolve reference '
        '"mirror.corp/pause:3.9": failed to do request: Head '
        '"https://mirror.corp/v2/pause/manifests/3.9": x509: certificate signed by unknown '
        "authority"
    )
    failure = parse_pull_error(message, "app.corp/web:1")
    assert failure is not None
    assert failure.image == "mirror.corp/pause:3.9"
    assert failure.registry == HostPort("mirror.corp")


def test_a_malformed_image_in_the_message_or_hint_is_dropped() -> None:
    failure = parse_pull_error(
        'Failed to pull image "bad image ref": Get "https://r.test/v2/": x509: certificate '
        "signed by unknown authority",
        "also bad\x00",
    )
    assert failure is not None
    assert failure.image is None
    assert failure.registry is None
    assert failure.failing == HostPort("r.test")


def test_an_image_whose_registry_is_invalid_keeps_the_image_but_no_registry() -> None:
    failure = parse_pull_error(
        "x509: certificate signed by unknown authority", "bad_host-.test:5000/x:1"
    )
    assert failure is not None
    assert failure.image == "bad_host-.test:5000/x:1"
    assert failure.registry is None


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", "busybox"),
        ("  bitnami/redis:7 ", "bitnami/redis:7"),
        ("docker://registry.test/x:1", "registry.test/x:1"),
        ("registry.test/x@sha256:" + "a" * 64, "registry.test/x@sha256:" + "a" * 64),
        ("[::1]:5000/x", "[::1]:5000/x"),
        ("", None),
        ("has space/x", None),
        ('quote"/x', None),
        ("x" * 513, None),
    ],
)
def test_normalize_image(image: str, expected: str | None) -> None:
    assert normalize_image(image) == expected


# --- image_registry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("redis", DOCKER_HUB),
        ("redis:7", DOCKER_HUB),
        ("redis@sha256:" + "0" * 64, DOCKER_HUB),
        ("bitnami/redis", DOCKER_HUB),
        ("bitnami/redis-cluster:latest", DOCKER_HUB),
        ("library/a/b/c:1", DOCKER_HUB),
        ("docker.io/library/redis", DOCKER_HUB),
        ("index.docker.io/library/redis", DOCKER_HUB),
        ("localhost/x", HostPort("localhost", 443)),
        ("localhost:5000/x", HostPort("localhost", 5000)),
        ("registry.test:5443/lab/tiny:v1", HostPort("registry.test", 5443)),
        ("registry.test/lab/tiny@sha256:" + "f" * 64, HostPort("registry.test", 443)),
        ("registry.test:5443/lab/tiny:v1@sha256:" + "f" * 64, HostPort("registry.test", 5443)),
        ("[::1]:5000/x", HostPort("::1", 5000)),
        ("[2001:db8::1]/x:1", HostPort("2001:db8::1", 443)),
        ("10.0.0.1:5000/x", HostPort("10.0.0.1", 5000)),
        ("Registry/x", HostPort("registry", 443)),
        ("docker://quay.io/x/y:1", HostPort("quay.io", 443)),
    ],
)
def test_image_registry(image: str, expected: HostPort) -> None:
    assert image_registry(image) == expected


@pytest.mark.parametrize("image", ["bad_host-.test/x", "registry.test:notaport/x", "[zz]/x"])
def test_image_registry_rejects_an_invalid_registry(image: str) -> None:
    with pytest.raises(InputError):
        image_registry(image)


# --- the stored message -----------------------------------------------------------------


def test_the_stored_message_is_truncated_to_4_kib_of_utf8() -> None:
    message = UNKNOWN_AUTHORITY + " é" * 5000
    failure = parse_pull_error(message)
    assert failure is not None
    assert len(failure.message.encode("utf-8")) <= MESSAGE_LIMIT_BYTES
    assert message.startswith(failure.message)
    assert failure.failing == HostPort("registry.test", 5443)


def test_non_ascii_before_the_error_does_not_shift_the_url_search() -> None:
    """'İ'.lower() is two characters: lower-casing must not move offsets."""
    failure = parse_pull_error(
        "İ" * 50 + ' Get "https://registry.test/v2/": x509: certificate signed by unknown authority'
    )
    assert failure is not None
    assert failure.failing == HostPort("registry.test")


# --- pods -------------------------------------------------------------------------------


def _pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": "web-0", "uid": "u-1"},
        "spec": {
            "initContainers": [{"name": "init", "image": "registry.test:5443/lab/init:v1"}],
            "containers": [{"name": "web", "image": "registry.test:5443/lab/tiny:v1"}],
        },
        "status": status,
    }


def _waiting(name: str, reason: str, message: str | None, image: str | None = None) -> Any:
    waiting: dict[str, Any] = {"reason": reason}
    if message is not None:
        waiting["message"] = message
    entry: dict[str, Any] = {"name": name, "state": {"waiting": waiting}}
    if image is not None:
        entry["image"] = image
    return entry


def test_a_container_waiting_with_err_image_pull_and_x509_text_is_found() -> None:
    pod = _pod(
        containerStatuses=[
            _waiting("web", "ErrImagePull", UNKNOWN_AUTHORITY, "registry.test:5443/lab/tiny:v1")
        ]
    )
    [found] = pull_failures_from_pod(pod)
    assert found == PodPullFailure(
        pod_namespace="shop",
        pod_name="web-0",
        pod_uid="u-1",
        container="web",
        image="registry.test:5443/lab/tiny:v1",
        reason="ErrImagePull",
        failure=parse_pull_error(UNKNOWN_AUTHORITY),
    )


def test_init_and_ephemeral_containers_are_looked_at_too() -> None:
    pod = _pod(
        initContainerStatuses=[_waiting("init", "ErrImagePull", UNKNOWN_AUTHORITY)],
        ephemeralContainerStatuses=[_waiting("debug", "ImagePullBackOff", UNKNOWN_AUTHORITY)],
    )
    found = pull_failures_from_pod(pod)
    assert [(f.container, f.reason) for f in found] == [
        ("init", "ErrImagePull"),
        ("debug", "ImagePullBackOff"),
    ]
    assert found[0].image == "registry.test:5443/lab/init:v1"  # from the spec
    assert found[1].image == ""  # neither status nor spec names it


def test_image_pull_back_off_without_a_cause_is_kept_with_no_failure() -> None:
    """kubelet < 1.32 writes only 'Back-off pulling image': the cause is in an Event."""
    pod = _pod(
        containerStatuses=[
            _waiting(
                "web", "ImagePullBackOff", 'Back-off pulling image "registry.test:5443/lab/tiny:v1"'
            )
        ],
        initContainerStatuses=[_waiting("init", "ImagePullBackOff", None)],
    )
    found = pull_failures_from_pod(pod)
    assert [(f.container, f.failure) for f in found] == [("init", None), ("web", None)]
    assert found[1].image == "registry.test:5443/lab/tiny:v1"


def test_image_pull_back_off_with_the_cause_appended_is_parsed() -> None:
    message = (
        f'Back-off pulling image "registry.test:5443/lab/tiny:v1": ErrImagePull: '
        f"{UNKNOWN_AUTHORITY}"
    )
    [found] = pull_failures_from_pod(
        _pod(containerStatuses=[_waiting("web", "ImagePullBackOff", message)])
    )
    assert found.failure is not None
    assert found.failure.remediable
    assert found.failure.image == "registry.test:5443/lab/tiny:v1"


def test_pull_failures_for_other_causes_and_other_states_are_ignored() -> None:
    pod = _pod(
        containerStatuses=[
            _waiting("web", "ErrImagePull", 'failed to pull image "x": manifest unknown'),
            _waiting("side", "CrashLoopBackOff", UNKNOWN_AUTHORITY),
            {"name": "run", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
        ]
    )
    assert pull_failures_from_pod(pod) == []


@pytest.mark.parametrize(
    "pod",
    [
        {},
        {"status": None},
        {"status": {"containerStatuses": "nope"}},
        {"status": {"containerStatuses": [None, 3, "x", {"state": []}]}},
        {"status": {"containerStatuses": [{"state": {"waiting": {"reason": 5}}}]}},
        {
            "metadata": [],
            "spec": "x",
            "status": {"containerStatuses": [{"state": {"waiting": []}}]},
        },
    ],
)
def test_a_malformed_pod_yields_nothing_instead_of_an_error(pod: dict[str, Any]) -> None:
    assert pull_failures_from_pod(pod) == []


def test_a_pod_with_wrongly_typed_metadata_still_reports_with_empty_names() -> None:
    pod = {
        "metadata": {"name": 3},
        "status": {"containerStatuses": [_waiting("web", "ErrImagePull", UNKNOWN_AUTHORITY)]},
    }
    [found] = pull_failures_from_pod(pod)
    assert (found.pod_namespace, found.pod_name, found.pod_uid) == ("", "", "")


# --- events -----------------------------------------------------------------------------


def _event(reason: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    involved: dict[str, Any] = {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u-1"}
    if field_path is not None:
        involved["fieldPath"] = field_path
    return {"reason": reason, "type": "Warning", "message": message, "involvedObject": involved}


def test_a_failed_event_from_kubelet_parses_like_its_message() -> None:
    message = f'Failed to pull image "registry.test:5443/lab/tiny:v1": {UNKNOWN_AUTHORITY}'
    assert pull_failure_from_event(_event("Failed", message)) == parse_pull_error(message)


def test_a_sandbox_event_is_parsed() -> None:
    message = (
        'Failed to create pod sandbox: failed to get sandbox image "mirror.corp/pause:3.9": '
        'Head "https://mirror.corp/v2/pause/manifests/3.9": x509: certificate signed by '
        "unknown authority"
    )
    failure = pull_failure_from_event(_event("FailedCreatePodSandBox", message))
    assert failure is not None
    assert failure.image == "mirror.corp/pause:3.9"


def test_events_with_other_reasons_or_no_message_are_ignored() -> None:
    assert pull_failure_from_event(_event("BackOff", UNKNOWN_AUTHORITY)) is None
    assert pull_failure_from_event(_event("Pulled", UNKNOWN_AUTHORITY)) is None
    assert pull_failure_from_event({"reason": "Failed"}) is None
    assert pull_failure_from_event({"reason": "Failed", "message": 7}) is None


def test_the_event_image_hint_fills_in_a_message_without_an_image() -> None:
    message = (
        'Get "https://registry-ns.test:5443/v2/": x509: certificate signed by unknown authority'
    )
    failure = pull_failure_from_event(_event("Failed", message), "registry-ns.test:5443/x:1")
    assert failure is not None
    assert failure.registry == HostPort("registry-ns.test", 5443)


def test_an_event_is_tied_to_its_pod_and_container() -> None:
    message = f'Failed to pull image "registry.test:5443/lab/tiny:v1": {UNKNOWN_AUTHORITY}'
    found = pod_pull_failure_from_event(_event("Failed", message, "spec.containers{web}"))
    assert found is not None
    assert (found.pod_namespace, found.pod_name, found.pod_uid) == ("shop", "web-0", "u-1")
    assert (found.container, found.image, found.reason) == (
        "web",
        "registry.test:5443/lab/tiny:v1",
        "Failed",
    )
    assert found.failure == parse_pull_error(message)


def test_a_sandbox_event_belongs_to_no_container() -> None:
    found = pod_pull_failure_from_event(_event("FailedCreatePodSandBox", UNKNOWN_AUTHORITY))
    assert found is not None
    assert found.container == ""
    assert found.reason == "FailedCreatePodSandBox"


def test_an_event_about_something_else_than_a_pod_is_not_a_pod_failure() -> None:
    event = _event("Failed", UNKNOWN_AUTHORITY)
    event["involvedObject"]["kind"] = "Node"
    assert pod_pull_failure_from_event(event) is None
