"""The agent's own API access (`agent.cluster.client`) and its reflector (`agent.cluster.watch`)
against the fake apiserver: JSON dicts, typed errors, per-call retries, streamed watches, and
a Watcher that survives dropped streams, expired history and outages without losing state.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import Configuration
from kubernetes.config import incluster_config

from agent.cluster.client import ApiError, KubeClient, RetryPolicy, load_config, resource_path
from agent.cluster.watch import Backoff, BackoffPolicy, Watcher, relist_diff
from lab.fakes.apiserver import FakeApiServer, make_configmap, make_node, make_pod
from lab.tls.pki import make_ca, make_leaf, write_key, write_pem

pytestmark = pytest.mark.integration

PODS = resource_path("v1", "pods")
MY_NODE = "spec.nodeName=node-a"
Event = tuple[str, dict[str, Any]]


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server


def make_client(fake: FakeApiServer, attempts: int = 4) -> KubeClient:
    config = Configuration()
    config.host = fake.url
    return KubeClient(config, retry=RetryPolicy(attempts=attempts, initial=0.05, max_wait=0.5),
                      user_agent="agent-under-test")


@pytest.fixture
def kube(fake: FakeApiServer) -> Iterator[KubeClient]:
    kc = make_client(fake)
    yield kc
    kc.close()


def methods(fake: FakeApiServer, path_prefix: str = "/") -> list[str]:
    return [r.method for r in fake.requests() if r.path.startswith(path_prefix)]


def relabel(fake: FakeApiServer, name: str, **labels: str) -> None:
    """Change a pod as kubelet or a user would, straight in the store."""
    pod = fake.get_object("pods", "default", name)
    assert pod is not None
    pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **labels}
    fake.put_object(pod)


# --- KubeClient ------------------------------------------------------------------------------


def test_client_verbs_speak_plain_json_dicts(kube: KubeClient) -> None:
    path = resource_path("v1", "configmaps", "ca-trust-agent")
    one = resource_path("v1", "configmaps", "ca-trust-agent", "policy")

    created = kube.create(path, make_configmap("policy", {"policy.yaml": "a"},
                                               namespace="ca-trust-agent"))
    patched = kube.patch_merge(one, {"metadata": {"annotations": {"seen": "yes"}}})
    replaced = kube.replace(one, {**patched, "data": {"policy.yaml": "b"}})
    listed = kube.list(path, field_selector="metadata.name=policy")
    fetched = kube.get(one)
    deleted = kube.delete(one, resource_version=replaced["metadata"]["resourceVersion"])

    assert created["metadata"]["uid"] == replaced["metadata"]["uid"]
    assert patched["metadata"]["annotations"] == {"seen": "yes"}
    assert fetched == replaced
    assert [i["data"] for i in listed["items"]] == [{"policy.yaml": "b"}]
    assert listed["metadata"]["resourceVersion"] == replaced["metadata"]["resourceVersion"]
    assert deleted["status"] == "Success"


def test_resource_paths_follow_the_api_layout() -> None:
    assert resource_path("v1", "pods") == "/api/v1/pods"
    assert resource_path("v1", "nodes", name="node-a") == "/api/v1/nodes/node-a"
    assert resource_path("coordination.k8s.io/v1", "leases", "ns", "slot-0") == (
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/slot-0")
    assert resource_path("v1", "pods", "ns", "p", "status") == "/api/v1/namespaces/ns/pods/p/status"


def test_list_all_follows_continue_tokens(kube: KubeClient, fake: FakeApiServer) -> None:
    for i in range(7):
        fake.put_object(make_pod(f"p{i}"))

    items, rv = kube.list_all(PODS, page_size=3)

    assert [i["metadata"]["name"] for i in items] == [f"p{i}" for i in range(7)]
    assert rv == str(fake.resource_version)
    assert methods(fake) == ["GET", "GET", "GET"]


def test_a_4xx_is_a_typed_api_error_and_is_not_retried(kube: KubeClient,
                                                       fake: FakeApiServer) -> None:
    with pytest.raises(ApiError) as caught:
        kube.get(resource_path("v1", "nodes", name="missing"))

    assert caught.value.status == 404
    assert caught.value.reason == "NotFound"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["details"] == {"name": "missing", "kind": "nodes"}
    assert methods(fake) == ["GET"]


def test_a_conflict_is_raised_at_once(kube: KubeClient, fake: FakeApiServer) -> None:
    node = fake.put_object(make_node("node-a"))
    kube.patch_merge(resource_path("v1", "nodes", name="node-a"),
                     {"metadata": {"annotations": {"x": "1"}}})
    with pytest.raises(ApiError) as caught:
        kube.patch_merge(resource_path("v1", "nodes", name="node-a"),
                         {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}})
    assert caught.value.status == 409
    assert methods(fake) == ["PATCH", "PATCH"]


def test_429_and_5xx_are_retried_until_success(kube: KubeClient, fake: FakeApiServer) -> None:
    fake.inject_errors(503)
    fake.inject_errors(429)

    assert kube.list(PODS)["items"] == []
    assert methods(fake) == ["GET", "GET", "GET"]


def test_retries_are_bounded(fake: FakeApiServer) -> None:
    kube = make_client(fake, attempts=3)
    fake.inject_errors(500, count=10)

    with pytest.raises(ApiError) as caught:
        kube.list(PODS)

    assert caught.value.status == 500
    assert caught.value.transient
    assert methods(fake) == ["GET"] * 3


def test_a_connection_error_is_retried_and_succeeds_once_the_api_is_back(
    fake: FakeApiServer,
) -> None:
    kube = make_client(fake, attempts=20)
    fake.pause()
    threading.Timer(0.5, fake.resume).start()

    assert kube.list(PODS)["items"] == []
    assert len(methods(fake)) >= 2


def test_a_create_whose_connection_broke_midway_is_not_sent_twice(
    kube: KubeClient, fake: FakeApiServer
) -> None:
    fake.pause()  # the request is read, then the connection is closed without an answer
    with pytest.raises(ApiError) as caught:
        kube.create(resource_path("v1", "pods", "default"), make_pod("p"))
    fake.resume()

    assert caught.value.status == 0
    assert caught.value.reason == "ConnectionError"
    assert methods(fake) == ["POST"]


def test_watch_lines_streams_event_dicts_including_bookmarks(
    kube: KubeClient, fake: FakeApiServer
) -> None:
    fake.put_object(make_pod("p", node="node-a"))
    _, rv = kube.list_all(PODS, field_selector=MY_NODE)
    relabel(fake, "p", seen="1")

    with kube.watch_lines(PODS, resource_version=rv, field_selector=MY_NODE,
                          timeout_seconds=1) as stream:
        events = list(stream)

    assert events[0]["type"] == "MODIFIED"
    assert events[0]["object"]["metadata"]["labels"] == {"seen": "1"}
    assert {e["type"] for e in events[1:]} == {"BOOKMARK"}
    assert fake.requests()[-1].query == {
        "watch": "true", "resourceVersion": rv, "fieldSelector": MY_NODE,
        "timeoutSeconds": "1", "allowWatchBookmarks": "true"}


def test_watch_lines_passes_a_410_error_event_through(kube: KubeClient,
                                                      fake: FakeApiServer) -> None:
    _, rv = kube.list_all(PODS)
    fake.put_object(make_pod("p"))
    fake.expire_history()

    with kube.watch_lines(PODS, resource_version=rv, timeout_seconds=5) as stream:
        events = list(stream)

    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


def test_a_watch_stream_closed_from_another_thread_ends_quietly(
    kube: KubeClient, fake: FakeApiServer
) -> None:
    stream = kube.watch_lines(PODS, resource_version=None, timeout_seconds=60,
                              allow_bookmarks=False)
    fake.wait_for_watches(1)
    threading.Timer(0.2, stream.close).start()

    assert list(stream) == []


def test_a_broken_watch_stream_raises_a_connection_error(kube: KubeClient,
                                                         fake: FakeApiServer) -> None:
    stream = kube.watch_lines(PODS, resource_version=None, timeout_seconds=60)
    fake.wait_for_watches(1)
    fake.drop_watches()

    with pytest.raises(ApiError) as caught:
        list(stream)
    assert caught.value.status == 0


_PROBE = """
import json, sys
from kubernetes.client import Configuration
from kubernetes.config import incluster_config
from agent.cluster.client import KubeClient, resource_path
from agent.cluster.watch import Watcher

config = Configuration()
config.host = sys.argv[1]
watcher = Watcher(KubeClient(config), resource_path("v1", "pods"),
                  field_selector="spec.nodeName=node-a", timeout_seconds=30)
seen = []
for kind, obj in watcher.events():
    seen.append([kind, obj["metadata"]["name"]])
    if kind == "MODIFIED":
        watcher.stop()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "seen": seen,
    "typed": sorted(m for m in sys.modules if m.startswith("kubernetes.client.models.")
                    or m == "kubernetes.client.api.core_v1_api"),
    "rss_kib": int(status["VmRSS"].split()[0]),
    "peak_kib": int(status["VmHWM"].split()[0]),
}))
"""


def test_a_field_selected_list_and_watch_loads_no_typed_models(fake: FakeApiServer) -> None:
    """The memory budget: the agent process never imports CoreV1Api or a pydantic model
    module (`import kubernetes` itself imports kubernetes.watch, which costs nothing unused).
    Prints the probe's RSS (the budget is 56 MiB for the whole agent)."""
    fake.put_object(make_pod("mine", node="node-a"))
    fake.put_object(make_pod("theirs", node="node-b"))
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, fake.url], stdout=subprocess.PIPE, text=True,
        cwd=str(Path(__file__).resolve().parents[3]),
    )
    try:
        fake.wait_for_watches(1, "pods", timeout=30)
        relabel(fake, "mine", touched="1")
        out, _ = probe.communicate(timeout=60)
    finally:
        probe.kill()

    result = json.loads(out)
    print(f"\nlist+watch probe: RSS {result['rss_kib'] / 1024:.1f} MiB, "
          f"peak {result['peak_kib'] / 1024:.1f} MiB")
    assert result["seen"] == [["ADDED", "mine"], ["MODIFIED", "mine"]]
    assert result["typed"] == []


# --- Watcher ---------------------------------------------------------------------------------


class Running:
    """A Watcher consumed on its own thread, as the daemon does."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.events: queue.Queue[Event] = queue.Queue()
        self.restarts: list[str] = []
        watcher.on_restart = self.restarts.append
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for event in self.watcher.events():
            self.events.put(event)

    def next_matching(self, wanted: Callable[[Event], bool], timeout: float = 20.0) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if wanted(event):
                return event

    def take(self, n: int, timeout: float = 20.0) -> list[tuple[str, str]]:
        got = [self.events.get(timeout=timeout) for _ in range(n)]
        return [(kind, obj["metadata"]["name"]) for kind, obj in got]

    def stop(self) -> None:
        self.watcher.stop()
        self.thread.join(timeout=10)


@pytest.fixture
def running(kube: KubeClient, fake: FakeApiServer) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**kwargs: Any) -> Running:
        kwargs.setdefault("field_selector", MY_NODE)
        kwargs.setdefault("backoff", BackoffPolicy(base=0.1, cap=0.5))
        r = Running(Watcher(kube, PODS, **kwargs))
        started.append(r)
        r.watcher.synced.wait(10)
        fake.wait_for_watches(len(started), "pods")
        return r

    yield start
    for r in started:
        r.stop()


def labelled(name: str, key: str) -> Callable[[Event], bool]:
    def wanted(event: Event) -> bool:
        kind, obj = event
        labels = obj["metadata"].get("labels") or {}
        return bool(kind == "MODIFIED" and obj["metadata"]["name"] == name and key in labels)

    return wanted


def test_watcher_yields_listed_pods_of_its_node_then_only_their_changes(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("mine", node="node-a"))
    fake.put_object(make_pod("theirs", node="node-b"))
    r = running()
    fake.put_object(make_pod("theirs-too", node="node-b"))
    fake.put_object(make_pod("mine-too", node="node-a"))
    relabel(fake, "mine", step="1")

    assert r.take(3) == [("ADDED", "mine"), ("ADDED", "mine-too"), ("MODIFIED", "mine")]


def test_watcher_delivers_a_modification_while_it_is_watching(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("p", node="node-a"))
    r = running()
    relabel(fake, "p", pulled="no")

    _, obj = r.next_matching(labelled("p", "pulled"))
    assert obj["metadata"]["labels"]["pulled"] == "no"
    assert r.watcher.resource_version == obj["metadata"]["resourceVersion"]


def test_watcher_resumes_a_dropped_stream_from_its_resource_version_without_a_relist(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("p", node="node-a"))
    r = running()
    rv = r.watcher.resource_version
    fake.drop_watches()
    relabel(fake, "p", during="drop")  # most likely before the watcher is back

    r.next_matching(labelled("p", "during"))
    lists = [q for q in fake.requests() if q.path == PODS and "watch" not in q.query]
    rewatch = [q for q in fake.requests() if q.query.get("watch")][1]
    assert len(lists) == 1
    assert rewatch.query["resourceVersion"] == rv
    assert "error" in r.restarts


def test_watcher_relists_after_the_history_expired_and_reports_the_difference(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("changed", node="node-a"))
    fake.put_object(make_pod("removed", node="node-a"))
    r = running()
    assert r.take(2) == [("ADDED", "changed"), ("ADDED", "removed")]

    fake.pause()  # while it is away, the world moves on and the history is compacted
    relabel(fake, "changed", v="2")
    fake.delete_object("pods", "default", "removed")
    fake.put_object(make_pod("new", node="node-a"))
    fake.expire_history()
    fake.resume()

    assert sorted(r.take(3)) == [("ADDED", "new"), ("DELETED", "removed"), ("MODIFIED", "changed")]
    assert "expired" in r.restarts


def test_watcher_relists_when_its_open_stream_gets_a_410_and_keeps_watching(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("p", node="node-a"))
    r = running()
    assert r.take(1) == [("ADDED", "p")]

    fake.expire_history()
    fake.wait_for_watches(1, "pods")
    while "expired" not in r.restarts:
        time.sleep(0.05)
    relabel(fake, "p", after="410")

    r.next_matching(labelled("p", "after"))
    assert r.events.empty()  # the relist found nothing new to report


def test_watcher_survives_an_api_outage_and_then_sees_updates(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("p", node="node-a"))
    r = running()

    fake.pause()
    relabel(fake, "p", during="outage")
    time.sleep(2)  # the outage lasts; the watcher keeps trying with backoff
    fake.resume()
    r.next_matching(labelled("p", "during"))
    relabel(fake, "p", after="outage")

    r.next_matching(labelled("p", "after"))
    assert "error" in r.restarts


def test_watcher_rewatches_when_the_server_ends_the_stream(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    fake.put_object(make_pod("p", node="node-a"))
    r = running(timeout_seconds=1)
    while "stream-end" not in r.restarts:
        time.sleep(0.05)
    relabel(fake, "p", later="1")

    r.next_matching(labelled("p", "later"))


def test_watcher_stops_promptly_from_another_thread_while_watching(
    running: Callable[..., Running],
) -> None:
    r = running(timeout_seconds=300)
    r.stop()
    assert not r.thread.is_alive()


def test_watcher_stops_promptly_while_backing_off(
    fake: FakeApiServer, running: Callable[..., Running]
) -> None:
    r = running(backoff=BackoffPolicy(base=60, cap=60))
    fake.pause()  # the stream breaks and every retry fails: the watcher sleeps a minute
    while fake.watch_count("pods"):
        time.sleep(0.05)
    time.sleep(0.5)

    r.stop()

    assert not r.thread.is_alive()
    assert r.restarts == []  # it never got to retry


# --- pure pieces -----------------------------------------------------------------------------


def test_relist_diff_reports_added_modified_deleted_and_replaced_objects() -> None:
    def pod(name: str, uid: str, rv: str) -> dict[str, Any]:
        return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": rv}}

    seen = {("ns", "same"): ("u1", "5"), ("ns", "changed"): ("u2", "5"),
            ("ns", "gone"): ("u3", "5"), ("ns", "recreated"): ("u4", "5")}
    listed = [pod("same", "u1", "5"), pod("changed", "u2", "9"), pod("recreated", "u5", "9"),
              pod("new", "u6", "9")]

    events = [(kind, obj["metadata"]["name"]) for kind, obj in relist_diff(seen, listed)]

    assert sorted(events) == [("ADDED", "new"), ("ADDED", "recreated"), ("DELETED", "gone"),
                              ("DELETED", "recreated"), ("MODIFIED", "changed")]
    assert events.index(("DELETED", "recreated")) < events.index(("ADDED", "recreated"))


def test_backoff_grows_like_fibonacci_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(BackoffPolicy(base=1.0, cap=5.0, jitter=0.0))
    assert [backoff.next() for _ in range(7)] == [1.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0


# --- configuration ---------------------------------------------------------------------------


def test_a_kubeconfig_file_configures_server_and_token(tmp_path: Path, fake: FakeApiServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": fake.url}}],
        "users": [{"name": "agent", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}],
    }))

    kube = KubeClient.from_config(str(kubeconfig))
    kube.list(PODS)

    assert fake.requests()[-1].authorization == "Bearer t0ken"


def test_in_cluster_the_service_account_token_is_sent_and_reread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a pod: HTTPS to $KUBERNETES_SERVICE_HOST, the CA and token from the service
    account directory; a rotated token is picked up on a later call."""
    ca = make_ca("fake-apiserver-ca")
    leaf = make_leaf(ca, names=("kubernetes.default.svc",), ips=("127.0.0.1",))
    write_pem(tmp_path / "ca.crt", ca)
    tls = (str(write_pem(tmp_path / "tls.crt", leaf)), str(write_key(tmp_path / "tls.key", leaf)))
    (tmp_path / "token").write_text("first")

    with FakeApiServer(tls=tls) as fake:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", fake.url.rsplit(":", 1)[1])
        kube = KubeClient(load_config(service_account_dir=str(tmp_path)))
        kube.list(PODS)
        (tmp_path / "token").write_text("rotated")
        with monkeypatch.context() as m:  # minutes later, as far as the loader can tell
            later = datetime.now() + timedelta(minutes=2)
            clock = SimpleNamespace(datetime=_Clock(later), timedelta=timedelta)
            m.setattr(incluster_config, "datetime", clock)
            kube.list(PODS)
        kube.close()

    assert fake.url.startswith("https://")
    assert [r.authorization for r in fake.requests()] == ["bearer first", "bearer rotated"]


class _Clock:
    """Stands in for datetime.datetime inside kubernetes' in-cluster loader."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now
