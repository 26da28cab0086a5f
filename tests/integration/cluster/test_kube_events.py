"""EventRecorder against the fake apiserver, through the real KubeClient.

What an operator sees: our Events sit next to kubelet's in `kubectl describe node/pod`,
a repeated event is one object whose count grows, a flood is cut off, and nothing about
Events can ever fail a remediation.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy, Timeouts
from agent.cluster.events import (
    MAX_MESSAGE_BYTES,
    EventRecorder,
    TokenBucket,
    event_name,
    truncate_message,
)
from lab.fakes.apiserver import ApiFailure, FakeApiServer

JSON = dict[str, Any]
T0 = 1_800_000_000.25  # 2027-01-15T08:00:00Z, a quarter second in


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingEventsApi(FakeApiServer):
    """Answers every request on events with `code` while `failing` is set."""

    def __init__(self, code: int = 500) -> None:
        super().__init__()
        self.code = code
        self.failing = True

    def __enter__(self) -> FailingEventsApi:
        self.start()
        return self

    def handle(self, method: str, route: Any, query: dict[str, str], body: Any,
               content_type: str) -> tuple[int, JSON]:
        if self.failing and route.kind.plural == "events":
            raise ApiFailure(self.code, "InternalError", "etcd is having a bad day")
        return super().handle(method, route, query, body, content_type)


def make_client(url: str) -> KubeClient:
    config = Configuration()
    config.host = url
    return KubeClient(config, timeouts=Timeouts(connect=1.0, read=5.0),
                      retry=RetryPolicy(attempts=2, initial=0.01, max_wait=0.02))


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def client(api: FakeApiServer) -> Iterator[KubeClient]:
    c = make_client(api.url)
    yield c
    c.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def recorder(client: KubeClient, clock: FakeClock, **kwargs: Any) -> EventRecorder:
    return EventRecorder(client, host="node-a", clock=clock, **kwargs)


def describe_node_events(client: KubeClient, node: str) -> list[JSON]:
    """The second query `kubectl describe node` makes (uid = the node's name, as kubelet
    writes it): all namespaces, namespace "" selected explicitly."""
    selector = (f"involvedObject.name={node},involvedObject.namespace=,"
                f"involvedObject.kind=Node,involvedObject.uid={node}")
    items: list[JSON] = client.list("/api/v1/events", field_selector=selector)["items"]
    return items


def describe_pod_events(client: KubeClient, namespace: str, name: str, uid: str) -> list[JSON]:
    selector = (f"involvedObject.name={name},involvedObject.namespace={namespace},"
                f"involvedObject.kind=Pod,involvedObject.uid={uid}")
    path = f"/api/v1/namespaces/{namespace}/events"
    items: list[JSON] = client.list(path, field_selector=selector)["items"]
    return items


# --- what an Event looks like ----------------------------------------------------------------


def test_node_event_is_written_like_kubelet_writes_its_own(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    rec.node("node-a", "Normal", "CATrusted", "registry.test:5443 trusted")

    [event] = api.objects("events")
    assert event["metadata"]["namespace"] == "default"
    assert event["metadata"]["name"] == f"node-a.{int(T0 * 1e9):x}"
    assert event["involvedObject"] == {"kind": "Node", "name": "node-a", "uid": "node-a"}
    assert event["type"] == "Normal"
    assert event["reason"] == "CATrusted"
    assert event["message"] == "registry.test:5443 trusted"
    assert event["source"] == {"component": "ca-trust-agent", "host": "node-a"}
    assert event["reportingComponent"] == "ca-trust-agent"
    assert event["reportingInstance"] == "node-a"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2027-01-15T08:00:00Z"
    assert event["eventTime"] is None
    assert event["count"] == 1


def test_kubectl_describe_node_finds_the_node_event(client: KubeClient, clock: FakeClock) -> None:
    rec = recorder(client, clock)
    rec.node("node-a", "Warning", "UntrustedRegistryDetected", "x509 from registry.test:5443")
    rec.node("node-b", "Normal", "CATrusted", "another node's event")

    found = describe_node_events(client, "node-a")
    assert [e["reason"] for e in found] == ["UntrustedRegistryDetected"]


def test_pod_event_lives_in_the_pod_namespace_and_kubectl_describe_pod_finds_it(
    client: KubeClient, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    rec.pod("shop", "web-1", "0b7f-uid", "Warning", "RegistryNotAllowed", "not in policy")

    [event] = describe_pod_events(client, "shop", "web-1", "0b7f-uid")
    assert event["metadata"]["namespace"] == "shop"
    assert event["metadata"]["name"].startswith("web-1.")
    assert event["involvedObject"] == {"kind": "Pod", "namespace": "shop", "name": "web-1",
                                       "uid": "0b7f-uid", "apiVersion": "v1"}
    assert describe_pod_events(client, "shop", "web-1", "other-uid") == []


def test_event_names_are_unique_even_when_the_clock_does_not_move(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    for n in range(3):
        rec.node("node-a", "Normal", "CATrusted", f"registry-{n}.test:443 trusted")
    names = sorted(e["metadata"]["name"] for e in api.objects("events"))
    assert len(set(names)) == 3
    assert rec.dropped == {}


def test_long_messages_are_cut_to_1024_bytes_keeping_head_and_tail(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    message = "HEAD " + "é" * 3000 + " TAIL"
    recorder(client, clock).node("node-a", "Warning", "CATrustFailed", message)

    [event] = api.objects("events")
    stored = event["message"]
    assert len(stored.encode()) <= MAX_MESSAGE_BYTES
    assert stored.startswith("HEAD é")
    assert stored.endswith("é TAIL")
    assert "..." in stored


def test_truncate_message_leaves_short_messages_alone_and_never_splits_a_character() -> None:
    assert truncate_message("short") == "short"
    exact = "x" * MAX_MESSAGE_BYTES
    assert truncate_message(exact) == exact
    for width in range(1, 5):  # 1- to 4-byte characters, every cut position
        char = {1: "a", 2: "é", 3: "€", 4: "🔒"}[width]
        for limit in range(10, 20):
            cut = truncate_message(char * 40, limit)
            assert len(cut.encode()) <= limit
            assert cut.replace("...", "").strip(char) == ""


def test_event_name_is_client_go_style() -> None:
    assert event_name("node-a", 255) == "node-a.ff"


# --- aggregation -----------------------------------------------------------------------------


def test_an_identical_event_is_counted_on_the_existing_object(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    rec.node("node-a", "Warning", "CAExpiringSoon", "anchor expires in 9 days")
    clock.now += 61
    rec.node("node-a", "Warning", "CAExpiringSoon", "anchor expires in 9 days")

    [event] = api.objects("events")
    assert event["count"] == 2
    assert event["firstTimestamp"] == "2027-01-15T08:00:00Z"
    assert event["lastTimestamp"] == "2027-01-15T08:01:01Z"
    methods = [r.method for r in api.requests() if "/events" in r.path]
    assert methods == ["POST", "PATCH"]


def test_different_messages_or_reasons_or_objects_are_separate_events(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    rec.node("node-a", "Warning", "CATrustFailed", "registry-a.test:443: pin mismatch")
    rec.node("node-a", "Warning", "CATrustFailed", "registry-b.test:443: pin mismatch")
    rec.node("node-a", "Warning", "CATrustDryRun", "registry-a.test:443: pin mismatch")
    rec.pod("default", "web", "uid-1", "Warning", "CATrustFailed",
            "registry-a.test:443: pin mismatch")

    events = api.objects("events")
    assert len(events) == 4
    assert all(e["count"] == 1 for e in events)


def test_a_repeat_after_the_window_starts_a_new_event(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock, dedup_window=600.0)
    rec.node("node-a", "Normal", "CATrusted", "same")
    clock.now += 601
    rec.node("node-a", "Normal", "CATrusted", "same")
    assert [e["count"] for e in api.objects("events")] == [1, 1]


def test_a_garbage_collected_event_is_created_anew_when_it_repeats(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    rec.node("node-a", "Normal", "CATrusted", "same")
    [first] = api.objects("events")
    api.delete_object("events", "default", first["metadata"]["name"])  # event TTL passed

    clock.now += 5
    rec.node("node-a", "Normal", "CATrusted", "same")
    [again] = api.objects("events")
    assert again["metadata"]["name"] != first["metadata"]["name"]
    assert again["count"] == 1
    rec.node("node-a", "Normal", "CATrusted", "same")  # and the new one is aggregated on
    assert [e["count"] for e in api.objects("events")] == [2]
    assert rec.dropped == {}


# --- rate limiting ---------------------------------------------------------------------------


def test_a_flood_on_one_object_is_cut_off_at_the_burst_and_counted(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    drops: list[str] = []
    rec = recorder(client, clock, burst=3, refill_seconds=300.0, on_drop=drops.append)
    for n in range(5):
        rec.node("node-a", "Warning", "CATrustFailed", f"attempt {n}")
    rec.pod("default", "web", "uid-1", "Warning", "CATrustFailed", "other object, own bucket")

    messages = sorted(e["message"] for e in api.objects("events"))
    assert messages == ["attempt 0", "attempt 1", "attempt 2", "other object, own bucket"]
    assert drops == ["rate-limited", "rate-limited"]
    assert rec.dropped == {"rate-limited": 2}


def test_repeats_spend_tokens_too_and_tokens_come_back_over_time(
    client: KubeClient, api: FakeApiServer, clock: FakeClock
) -> None:
    rec = recorder(client, clock, burst=2, refill_seconds=300.0)
    for _ in range(3):
        rec.node("node-a", "Warning", "CATrustFailed", "same")
    assert [e["count"] for e in api.objects("events")] == [2]

    clock.now += 300  # one token back
    rec.node("node-a", "Warning", "CATrustFailed", "same")
    rec.node("node-a", "Warning", "CATrustFailed", "same")
    assert [e["count"] for e in api.objects("events")] == [3]
    assert rec.dropped == {"rate-limited": 2}


def test_token_bucket_refills_to_burst_only_and_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(burst=2, refill_seconds=10.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(50.0) is False  # clock stepped back: no refill
    assert bucket.take(10_000.0) is True  # a long pause refills at most `burst`
    assert [bucket.take(10_000.0) for _ in range(2)] == [True, False]


# --- failures never reach the caller ---------------------------------------------------------


def test_an_api_answering_500_is_logged_and_counted_never_raised(clock: FakeClock) -> None:
    drops: list[str] = []
    with FailingEventsApi(500) as api:
        client = make_client(api.url)
        rec = recorder(client, clock, on_drop=drops.append)
        rec.node("node-a", "Normal", "CATrusted", "first")
        rec.pod("default", "web", "uid-1", "Normal", "CATrusted", "second")
        assert drops == ["api-error", "api-error"]

        api.failing = False  # the API recovers: the next event goes through
        rec.node("node-a", "Normal", "CATrusted", "first")
        [event] = api.objects("events")
        assert event["count"] == 1
        client.close()


def test_a_failing_patch_keeps_the_count_for_the_next_repeat(clock: FakeClock) -> None:
    with FailingEventsApi(503) as api:
        api.failing = False
        client = make_client(api.url)
        rec = recorder(client, clock)
        rec.node("node-a", "Normal", "CATrusted", "same")
        api.failing = True
        rec.node("node-a", "Normal", "CATrusted", "same")
        api.failing = False
        rec.node("node-a", "Normal", "CATrusted", "same")
        assert [e["count"] for e in api.objects("events")] == [2]
        assert rec.dropped == {"api-error": 1}
        client.close()


def test_an_api_that_is_down_is_logged_and_counted_never_raised(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    api.pause("drop")
    rec.node("node-a", "Warning", "CATrustFailed", "during the outage")
    api.resume()
    assert rec.dropped == {"api-error": 1}

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = make_client(f"http://127.0.0.1:{port}")
    EventRecorder(nowhere, host="node-a", clock=clock).node("node-a", "Normal", "CATrusted", "x")
    nowhere.close()


def test_an_invalid_type_is_dropped_not_raised(client: KubeClient, clock: FakeClock) -> None:
    rec = recorder(client, clock)
    rec.node("node-a", "Error", "CATrustFailed", "no such event type")
    assert rec.dropped == {"invalid": 1}


def test_a_failing_drop_callback_does_not_raise_either(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    def broken(_why: str) -> None:
        raise RuntimeError("metrics broke")

    rec = recorder(client, clock, burst=0, on_drop=broken)
    rec.node("node-a", "Normal", "CATrusted", "dropped, and the callback raises")
    assert rec.dropped == {"rate-limited": 1}
    assert api.objects("events") == []


# --- async mode ------------------------------------------------------------------------------


def test_async_mode_does_not_wait_on_a_hanging_api(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    rec = recorder(client, clock, queue_size=8)
    api.pause("stall")  # every request hangs until resume()
    rec.node("node-a", "Normal", "ContainerRuntimeRestarted", "containerd restarted")
    # record() returned although the API hangs; the event is still on its way
    assert rec.flush(timeout=0.2) is False
    api.resume()
    assert rec.flush(timeout=10) is True
    [event] = api.objects("events")
    assert event["reason"] == "ContainerRuntimeRestarted"
    rec.close()


def test_async_mode_drops_when_the_queue_is_full_and_after_close(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    drops: list[str] = []
    rec = recorder(client, clock, queue_size=1, on_drop=drops.append)
    api.pause("stall")
    for n in range(4):  # one in flight, one queued, the rest do not fit
        rec.node("node-a", "Normal", "CATrusted", f"event {n}")
    api.resume()
    assert rec.flush(timeout=10) is True
    written = len(api.objects("events"))
    assert written >= 1
    assert written + drops.count("queue-full") == 4

    rec.close()
    rec.node("node-a", "Normal", "CATrusted", "after close")
    assert drops[-1] == "closed"
    assert len(api.objects("events")) == written


def test_async_mode_aggregates_like_sync_mode(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    with recorder(client, clock, queue_size=16) as rec:
        for _ in range(3):
            rec.node("node-a", "Normal", "ContainerRuntimeRestartDeferred", "waiting for a slot")
        assert rec.flush(timeout=10)
    assert [e["count"] for e in api.objects("events")] == [3]


def test_the_official_client_reads_our_events_as_valid_v1_events(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    """The typed models (what kubectl-like tools decode into) accept every field we write."""
    # the referee; agent code never loads the typed models
    from kubernetes.client import ApiClient, CoreV1Api

    rec = recorder(client, clock)
    rec.node("node-a", "Normal", "CATrusted", "registry.test:5443 trusted")
    rec.node("node-a", "Normal", "CATrusted", "registry.test:5443 trusted")
    config = Configuration()
    config.host = api.url
    with ApiClient(config) as typed:
        found = CoreV1Api(typed).list_event_for_all_namespaces(
            field_selector="involvedObject.kind=Node,involvedObject.name=node-a")
    [event] = found.items
    assert event.count == 2
    assert event.involved_object.uid == "node-a"
    assert event.source is not None
    assert event.source.component == "ca-trust-agent"
    assert event.event_time is None


def test_after_close_a_sync_recorder_drops_too(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    rec = recorder(client, clock)
    rec.close()
    rec.node("node-a", "Normal", "CATrusted", "after close")
    assert rec.dropped == {"closed": 1}
    assert api.objects("events") == []


def test_the_per_pod_event_lookup_reads_the_watch_cache_not_etcd(
    api: FakeApiServer, client: KubeClient, clock: FakeClock
) -> None:
    """A pod in back-off whose status has no error text costs one Event list per lookup; with
    resourceVersion=0 kube-apiserver serves it from its watch cache (a failing workload of
    1,000 pods is 1,000 lookups, none of them a quorum read from etcd)."""
    from agent.cluster.daemon import ApiCluster

    rec = recorder(client, clock)
    rec.pod("shop", "web-1", "0b7f-uid", "Warning", "Failed", "x509: unknown authority")
    rec.pod("shop", "web-2", "other-uid", "Warning", "Failed", "x509: unknown authority")
    api.clear_requests()
    [event] = ApiCluster(client, "node-a").pod_events("shop", "0b7f-uid")
    assert event["involvedObject"]["name"] == "web-1"
    [lookup] = api.requests()
    assert lookup.method == "GET" and lookup.path == "/api/v1/namespaces/shop/events"
    assert lookup.query["resourceVersion"] == "0"
    assert lookup.query["fieldSelector"] == "involvedObject.uid=0b7f-uid"
