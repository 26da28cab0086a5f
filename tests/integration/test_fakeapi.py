"""The fake apiserver speaks the real protocol: the OFFICIAL kubernetes client is the referee.

Every test drives `lab.fakes.apiserver.FakeApiServer` through `kubernetes.client.CoreV1Api`,
`CoordinationV1Api` and `kubernetes.watch.Watch`, whose strict models reject anything a real
apiserver would not send. Watches are made deterministic by changing state first and then
watching from an older resourceVersion (the fake replays its history), with a short
`timeout_seconds` so the stream ends by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from lab.fakes.apiserver import (
    FakeApiServer,
    make_configmap,
    make_event,
    make_lease,
    make_node,
    make_pod,
)

pytestmark = pytest.mark.integration

iter_resp_lines: Any = watch.watch.iter_resp_lines  # untyped upstream
Watch: Any = watch.Watch


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def api_client(fake: FakeApiServer) -> Iterator[Official]:
    config = client.Configuration()
    config.host = fake.url
    with client.ApiClient(config) as api:
        api.set_default_header("X-Fake-Client", "official")
        yield api


# The official client's models make every field Optional; these tests read fields the fake
# must have filled, so they hold the client as Any rather than assert None away on each line.
Official = Any


@pytest.fixture
def core(api_client: Official) -> Official:
    return client.CoreV1Api(api_client)


def watch_events(func: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """All events of one watch that ends by itself after kwargs["timeout_seconds"]."""
    return list(Watch().stream(func, **kwargs))


def names(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events
            if e["type"] != "BOOKMARK"]


def test_list_records_a_resource_version_and_a_watch_from_it_replays_only_later_changes(
    core: Official,
) -> None:
    core.create_namespaced_pod("default", make_pod("before"))
    listed = core.list_namespaced_pod("default")
    core.create_namespaced_pod("default", make_pod("after"))
    core.patch_namespaced_pod("before", "default", {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("after", "default")

    events = watch_events(core.list_namespaced_pod, namespace="default",
                          resource_version=listed.metadata.resource_version, timeout_seconds=1)

    assert [i.metadata.name for i in listed.items] == ["before"]
    assert names(events) == [("ADDED", "after"), ("MODIFIED", "before"), ("DELETED", "after")]
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(listed.metadata.resource_version)


def test_a_watch_without_resource_version_starts_with_synthetic_added_events(
    core: Official,
) -> None:
    core.create_namespaced_pod("default", make_pod("p1"))
    core.create_namespaced_pod("default", make_pod("p2"))

    events = watch_events(core.list_namespaced_pod, namespace="default", timeout_seconds=1)

    assert names(events) == [("ADDED", "p1"), ("ADDED", "p2")]
    assert isinstance(events[0]["object"], client.V1Pod)


def test_field_selector_on_spec_node_name_selects_pods_of_one_node_in_list_and_watch(
    core: Official, fake: FakeApiServer
) -> None:
    core.create_namespaced_pod("default", make_pod("mine", node="node-a"))
    core.create_namespaced_pod("other", make_pod("theirs", node="node-b", namespace="other"))
    start = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    core.create_namespaced_pod("default", make_pod("mine-too", node="node-a"))
    core.create_namespaced_pod("default", make_pod("not-mine", node="node-b"))
    # kubelet rescheduling is not a thing, but a selector that stops matching must be DELETED
    moved = fake.get_object("pods", "default", "mine-too")
    assert moved is not None
    moved["spec"]["nodeName"] = "node-b"
    fake.put_object(moved)

    events = watch_events(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-a",
                          resource_version=start.metadata.resource_version, timeout_seconds=1)

    assert [i.metadata.name for i in start.items] == ["mine"]
    assert names(events) == [("ADDED", "mine-too"), ("DELETED", "mine-too")]


def test_event_field_selectors_on_involved_object_and_reason(core: Official) -> None:
    pod = {"kind": "Pod", "namespace": "default", "name": "web", "uid": "u-1"}
    core.create_namespaced_event("default", make_event("e1", reason="Failed", involved=pod))
    core.create_namespaced_event("default", make_event("e2", reason="Pulled", involved=pod))
    core.create_namespaced_event("default", make_event(
        "e3", reason="Failed", involved={**pod, "name": "db", "uid": "u-2"}))

    by_pod = core.list_namespaced_event(
        "default", field_selector="involvedObject.name=web,involvedObject.kind=Pod,reason=Failed")
    by_uid = core.list_event_for_all_namespaces(field_selector="involvedObject.uid=u-2")
    not_failed = core.list_namespaced_event("default", field_selector="reason!=Failed")

    assert [e.metadata.name for e in by_pod.items] == ["e1"]
    assert [e.metadata.name for e in by_uid.items] == ["e3"]
    assert [e.metadata.name for e in not_failed.items] == ["e2"]


def test_a_field_label_the_server_does_not_support_is_a_400(core: Official) -> None:
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_pod("default", field_selector="spec.containers=x")
    assert caught.value.status == 400
    assert "field label not supported" in str(caught.value.body)


def test_label_selectors_equality_inequality_and_existence(core: Official) -> None:
    core.create_namespaced_pod("default", make_pod("a", labels={"app": "web", "tier": "1"}))
    core.create_namespaced_pod("default", make_pod("b", labels={"app": "db"}))
    core.create_namespaced_pod("default", make_pod("c"))

    def selected(selector: str) -> list[str]:
        listed = core.list_namespaced_pod("default", label_selector=selector)
        return [p.metadata.name for p in listed.items]

    assert selected("app=web") == ["a"]
    assert selected("app!=web") == ["b", "c"]
    assert selected("tier") == ["a"]
    assert selected("!tier") == ["b", "c"]
    assert selected("app in (web,db)") == ["a", "b"]


def test_limit_and_continue_page_through_a_list_at_one_resource_version(
    core: Official,
) -> None:
    for i in range(5):
        core.create_namespaced_pod("default", make_pod(f"p{i}"))

    first = core.list_namespaced_pod("default", limit=2)
    second = core.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_pod("default", limit=2, _continue=second.metadata._continue)

    pages = [[p.metadata.name for p in page.items] for page in (first, second, third)]
    assert pages == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert first.metadata.remaining_item_count == 3
    assert third.metadata._continue is None
    assert first.metadata.resource_version == third.metadata.resource_version


def test_a_watch_from_a_resource_version_older_than_the_history_gets_410_expired(
    core: Official, fake: FakeApiServer
) -> None:
    old = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", make_pod("p1"))
    fake.expire_history()

    with pytest.raises(ApiException) as caught:
        watch_events(core.list_namespaced_pod, namespace="default", resource_version=old,
                     timeout_seconds=1)

    assert caught.value.status == 410
    assert "Expired" in str(caught.value.reason)


def test_an_open_watch_gets_an_error_event_with_a_410_status_when_history_expires(
    core: Official, fake: FakeApiServer
) -> None:
    """Raw: the official Watch would hide the in-stream ERROR event behind its own retry."""
    rv = core.list_namespaced_pod("default").metadata.resource_version
    response = core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                        timeout_seconds=30, _preload_content=False)
    fake.wait_for_watches(1, "pods")
    fake.expire_history()

    lines = [line for line in iter_resp_lines(response) if line]

    events = [json.loads(line) for line in lines]
    assert events[-1]["type"] == "ERROR"
    assert events[-1]["object"]["kind"] == "Status"
    assert events[-1]["object"]["code"] == 410
    assert events[-1]["object"]["reason"] == "Expired"


def test_bookmarks_arrive_when_allowed_and_advance_the_watch_resource_version(
    core: Official, fake: FakeApiServer
) -> None:
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_config_map("default", make_configmap("unrelated", {"k": "v"}))
    w = Watch()

    events = list(w.stream(core.list_namespaced_pod, namespace="default", resource_version=start,
                           allow_watch_bookmarks=True, timeout_seconds=1))
    without = watch_events(core.list_namespaced_pod, namespace="default", resource_version=start,
                           timeout_seconds=1)

    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert w.resource_version == str(fake.resource_version)
    assert without == []


def test_timeout_seconds_ends_the_stream_cleanly(core: Official) -> None:
    events = watch_events(core.list_namespaced_pod, namespace="default", timeout_seconds=1)
    assert events == []


def test_merge_strategic_and_json_patches_apply_and_bump_the_resource_version(
    core: Official,
) -> None:
    node = core.create_node(make_node("node-a", annotations={"keep": "1", "drop": "1"}))

    merged = core.patch_node("node-a", {"metadata": {"annotations": {"new": "2", "drop": None}}})
    jsonpatched = core.patch_node(
        "node-a", [{"op": "add", "path": "/metadata/labels/zone", "value": "z1"}])

    assert merged.metadata.annotations == {"keep": "1", "new": "2"}
    assert int(merged.metadata.resource_version) > int(node.metadata.resource_version)
    assert jsonpatched.metadata.labels["zone"] == "z1"
    assert jsonpatched.metadata.annotations == {"keep": "1", "new": "2"}


def test_a_patch_that_changes_nothing_keeps_the_resource_version(core: Official) -> None:
    node = core.create_node(make_node("node-a", annotations={"a": "1"}))
    again = core.patch_node("node-a", {"metadata": {"annotations": {"a": "1"}}})
    assert again.metadata.resource_version == node.metadata.resource_version


def test_a_patch_carrying_a_stale_resource_version_is_a_409_conflict(
    core: Official,
) -> None:
    node = core.create_node(make_node("node-a"))
    core.patch_node("node-a", {"metadata": {"annotations": {"a": "1"}}})
    stale = {"metadata": {"resourceVersion": node.metadata.resource_version,
                          "annotations": {"a": "2"}}}
    with pytest.raises(ApiException) as caught:
        core.patch_node("node-a", stale)
    assert caught.value.status == 409


def test_generate_name_gives_each_create_a_fresh_random_suffix(core: Official) -> None:
    body = make_event("", reason="Failed")
    body["metadata"] = {"generateName": "node-a.", "namespace": "default"}

    first = core.create_namespaced_event("default", body)
    second = core.create_namespaced_event("default", body)

    assert first.metadata.name.startswith("node-a.")
    assert len(first.metadata.name) == len("node-a.") + 5
    assert first.metadata.name != second.metadata.name
    assert first.metadata.uid != second.metadata.uid


def test_creating_an_existing_name_is_a_409_already_exists(core: Official) -> None:
    core.create_namespaced_config_map("default", make_configmap("policy", {"a": "1"}))
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map("default", make_configmap("policy", {"a": "2"}))
    assert caught.value.status == 409
    assert '"reason": "AlreadyExists"' in str(caught.value.body)


def test_replace_with_a_stale_resource_version_is_a_409_conflict(core: Official) -> None:
    created = core.create_namespaced_config_map("default", make_configmap("cm", {"a": "1"}))
    created.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("cm", "default", created)
    created.data = {"a": "3"}  # still carries the first resourceVersion

    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_config_map("cm", "default", created)

    assert updated.data == {"a": "2"}
    assert caught.value.status == 409
    assert '"reason": "Conflict"' in str(caught.value.body)
    assert core.read_namespaced_config_map("cm", "default").data == {"a": "2"}


def test_leases_are_served_by_coordination_v1(api_client: Official) -> None:
    leases: Official = client.CoordinationV1Api(api_client)
    lease = leases.create_namespaced_lease("ca-trust-agent", make_lease(
        "restart-slot-0", namespace="ca-trust-agent", holder="node-a"))
    lease.spec.holder_identity = "node-b"

    taken = leases.replace_namespaced_lease("restart-slot-0", "ca-trust-agent", lease)

    assert taken.spec.holder_identity == "node-b"
    assert [x.metadata.name for x in leases.list_namespaced_lease("ca-trust-agent").items] == [
        "restart-slot-0"]


def test_the_status_subresource_is_separate_from_the_main_resource(
    core: Official,
) -> None:
    core.create_namespaced_pod("default", make_pod("p"))

    core.patch_namespaced_pod("p", "default", {"status": {"phase": "Running"}})
    ignored = core.read_namespaced_pod("p", "default")
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}})
    applied = core.read_namespaced_pod("p", "default")

    assert ignored.status.phase == "Pending"
    assert applied.status.phase == "Running"


def test_delete_removes_the_object_and_a_second_delete_is_404(core: Official) -> None:
    core.create_namespaced_pod("default", make_pod("p"))
    deleted = core.delete_namespaced_pod("p", "default")

    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_pod("p", "default")

    assert deleted.metadata.name == "p"
    assert caught.value.status == 404
    assert '"reason": "NotFound"' in str(caught.value.body)


def test_drop_watches_cuts_open_streams_without_the_final_chunk(
    core: Official, fake: FakeApiServer
) -> None:
    response = core.list_namespaced_pod("default", watch=True, timeout_seconds=30,
                                        _preload_content=False)
    fake.wait_for_watches(1)
    fake.drop_watches()

    with pytest.raises(urllib3.exceptions.ProtocolError):
        list(iter_resp_lines(response))


def test_pause_drops_every_request_until_resume(core: Official,
                                                fake: FakeApiServer) -> None:
    fake.pause()
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_pod("default", _request_timeout=2)
    fake.resume()
    assert core.list_namespaced_pod("default").items == []


def test_injected_errors_answer_the_next_requests_with_a_status(core: Official,
                                                                fake: FakeApiServer) -> None:
    fake.inject_errors(500)
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_pod("default")
    assert caught.value.status == 500
    assert core.list_namespaced_pod("default").items == []


def test_an_injected_429_carries_retry_after_which_urllib3_honours(
    core: Official, fake: FakeApiServer
) -> None:
    fake.inject_errors(429)
    assert core.list_namespaced_pod("default").items == []
    assert [r.method for r in fake.requests()] == ["GET", "GET"]


def test_every_watcher_receives_the_whole_object_on_every_change(
    core: Official, fake: FakeApiServer
) -> None:
    """As kube-apiserver's cacher does it: no diffs, no coalescing; what a shared object
    written by every node costs the API server is changes x watchers x object size."""
    start = core.create_namespaced_config_map(
        "default", make_configmap("record", {"k": "x" * 1000})
    ).metadata.resource_version
    for i in range(3):
        obj = core.read_namespaced_config_map("record", "default")
        obj.data = {"k": str(i) * 1000}
        core.replace_namespaced_config_map("record", "default", obj)
    before = fake.watch_bytes("configmaps")
    streams = [
        watch_events(core.list_namespaced_config_map, namespace="default",
                     resource_version=start, timeout_seconds=1)
        for _ in range(3)
    ]
    for events in streams:
        changes = [e for e in events if e["type"] == "MODIFIED"]
        assert [e["raw_object"]["data"]["k"] for e in changes] == [
            str(i) * 1000 for i in range(3)
        ]
    assert fake.watch_bytes("configmaps") - before > 3 * 3 * 1000


def test_a_configmap_over_1_mib_is_refused_with_422(core: Official) -> None:
    big = make_configmap("record", {"k": "x" * (1024 * 1024)})
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map("default", big)
    assert caught.value.status == 422
    assert "must have at most 1048576 bytes" in str(caught.value.body)
    core.create_namespaced_config_map("default", make_configmap("record", {"k": "x" * 1000}))


def test_bytes_sent_are_counted_per_client_and_requests_are_logged(
    core: Official, fake: FakeApiServer
) -> None:
    core.create_namespaced_pod("default", make_pod("p"))
    core.list_namespaced_pod("default", field_selector="spec.nodeName=node-a")

    log = fake.requests()

    assert fake.bytes_sent("official") > 0
    assert fake.bytes_sent("somebody-else") == 0
    assert [(r.method, r.path) for r in log] == [
        ("POST", "/api/v1/namespaces/default/pods"),
        ("GET", "/api/v1/namespaces/default/pods"),
    ]
    assert log[1].query == {"fieldSelector": "spec.nodeName=node-a"}
    assert log[1].client == "official"


def test_stall_mode_holds_requests_until_resume(core: Official,
                                                fake: FakeApiServer) -> None:
    fake.pause("stall")
    with pytest.raises(urllib3.exceptions.HTTPError, match="Read timed out"):
        core.list_namespaced_pod("default", _request_timeout=(2, 0.5))
    fake.resume()
    assert core.list_namespaced_pod("default").items == []


def test_the_lab_fixtures_are_schema_complete_for_the_official_models(
    core: Official, fake: FakeApiServer
) -> None:
    """Other tests build state from these; the strict models must accept them as served."""
    fake.put_object(make_pod("failing", waiting_reason="ErrImagePull",
                             waiting_message="x509: certificate signed by unknown authority"))
    fake.put_object(make_node("node-a", annotations={"ca-trust-agent.io/remediate": "enabled"}))
    fake.put_object(make_event("e", reason="Failed"))
    fake.put_object(make_configmap("cm", {"policy.yaml": ""}))
    fake.put_object(make_lease("l", holder="node-a"))

    pod = core.read_namespaced_pod("failing", "default")
    node = core.read_node("node-a")
    leases: Official = client.CoordinationV1Api(core.api_client).list_namespaced_lease("default")

    assert pod.status.container_statuses[0].state.waiting.reason == "ErrImagePull"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert core.read_namespaced_event("e", "default").involved_object.kind == "Pod"
    assert core.read_namespaced_config_map("cm", "default").data == {"policy.yaml": ""}
    assert leases.items[0].spec.holder_identity == "node-a"
