"""`recyclePods` end to end: the agent against the fake API server and a real TLS registry.

Pods on the node fail to pull with x509 while the node has not opted in yet; the operator
opts in, the agent trusts the registry's CA (registry scope, host-root tree) and then — only
with `recyclePods: true` — evicts the failing pods whose controller recreates them, through
`pods/NAME/eviction` so PodDisruptionBudgets are honoured. Bare pods are only told.
"""

from __future__ import annotations

import contextlib
import functools
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.cluster.evict import EVICTED, GONE, REFUSED, Eviction, evict
from agent.core.recycle import DEFAULT_LIMITS, Limits
from agent.metrics import serve
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import failing_pod
from lab.fakes.doubles import node as node_object
from lab.fakes.doubles import policy as policy_configmap
from lab.fakes.doubles import wait_until as _wait_until
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

NS = "ca-trust-agent"
NODE = "node-a"
RECYCLE = 'recyclePods: true\nregistries:\n  - host: "127.0.0.1"\n'
NO_RECYCLE = 'registries:\n  - host: "127.0.0.1"\n'
REPLICASET = {"kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-uid"}


# evictions retried after a PDB refusal take a few back-off rounds
wait_until = functools.partial(_wait_until, timeout=15.0)


@dataclass
class Cluster:
    api: FakeApiServer
    server: TLSServer
    root: Path

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, attempts: int = 3) -> KubeClient:
        config = Configuration()
        config.host = self.api.url
        return KubeClient(
            config,
            retry=RetryPolicy(attempts=attempts, initial=0.01, max_wait=0.05),
            user_agent=f"ca-trust-agent/test ({NODE})",
        )

    def agent(self, limits: Limits) -> Agent:
        engine = Engine(HostFS(str(self.root)), DirectRunner())
        return Agent(
            self.client(),
            NODE,
            NS,
            engine,
            reconcile_seconds=3600,
            evict_client=self.client(attempts=1),  # as `run` wires it
            recycle_limits=limits,
        )

    def failing_pod(self, name: str, owner: dict[str, str] | None = REPLICASET) -> str:
        """Store a pod whose pull failed with x509 at the registry; returns its uid."""
        stored = self.api.put_object(failing_pod(name, NODE, self.hostport, owner=owner))
        return str(stored["metadata"]["uid"])

    def pod(self, name: str) -> dict[str, Any] | None:
        return self.api.get_object("pods", "shop", name)

    def events(self, reason: str, kind: str = "Node", name: str = NODE) -> list[dict[str, Any]]:
        return [
            ev
            for ev in self.api.objects("events")
            if ev.get("reason") == reason
            and (ev.get("involvedObject") or {}).get("kind") == kind
            and (ev.get("involvedObject") or {}).get("name") == name
        ]

    def eviction_posts(self) -> list[str]:
        return [
            r.path
            for r in self.api.requests()
            if r.method == "POST" and r.path.endswith("/eviction")
        ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    root = tmp_path / "host"
    node_root(root)
    with FakeApiServer() as api, TLSServer(ca.chain, ca.leaf) as server:
        api.put_object(node_object(NODE, opted_in=False))
        yield Cluster(api, server, root)


@contextlib.contextmanager
def fixed(
    cluster: Cluster,
    policy: str,
    pods: dict[str, dict[str, str] | None],
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[tuple[Agent, dict[str, str]]]:
    """The pods fail while the node is not opted in; the agent sees them all; then the
    operator opts in and the one remediation for the registry runs. Yields the agent and
    the pods' uids."""
    cluster.api.put_object(policy_configmap(policy))
    uids = {name: cluster.failing_pod(name, owner) for name, owner in pods.items()}
    agent = cluster.agent(limits)
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        seen = agent.controller.still_failing
        wait_until(lambda: all(seen(uid, cluster.hostport) for uid in uids.values()))
        cluster.api.put_object(node_object(NODE, opted_in=True))
        wait_until(lambda: cluster.events("CATrusted"))
        yield agent, uids
    finally:
        agent.stop()
        agent.join()


def test_owned_pods_are_evicted_and_bare_pods_only_told(cluster: Cluster) -> None:
    with fixed(cluster, RECYCLE, {"web-0": REPLICASET, "bare": None}) as (agent, _):
        wait_until(lambda: cluster.pod("web-0") is None)  # evicted: its ReplicaSet recreates it
        summary = wait_until(lambda: cluster.events("PodRecycled"))
        assert summary[0]["type"] == "Normal"
        assert summary[0]["message"] == (
            f"recycled 1 pods for {cluster.hostport}; 1 bare pods left to kubelet's retry; "
            "0 refused by PodDisruptionBudget, retrying"
        )
        recycled = wait_until(lambda: cluster.events("PodRecycled", "Pod", "web-0"))
        assert (
            "evicted so its controller (ReplicaSet web-7d9f) recreates it"
            in (recycled[0]["message"])
        )
        told = wait_until(
            lambda: [
                e
                for e in cluster.events("CATrusted", "Pod", "bare")
                if "kubelet will" in e["message"]
            ]
        )
        assert f"registry {cluster.hostport} is trusted now" in told[0]["message"]
        assert cluster.pod("bare") is not None  # never touched
        assert cluster.eviction_posts() == ["/api/v1/namespaces/shop/pods/web-0/eviction"]
        server = serve(agent.metrics, host="127.0.0.1", port=0)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as r:
                text = r.read().decode()
        finally:
            server.stop()
        assert 'ca_trust_agent_pods_recycled_total{result="evicted"} 1.0' in text
        assert 'ca_trust_agent_pods_recycled_total{result="bare"} 1.0' in text


def test_recycle_pods_false_touches_nothing(cluster: Cluster) -> None:
    with fixed(cluster, NO_RECYCLE, {"web-0": REPLICASET, "bare": None}) as (agent, _):
        # the remediation is done (any hand-off to the recycler with it) and the recycler
        # has nothing left to do: a wrong eviction would have been made by now
        wait_until(agent.controller.wait_idle)
        wait_until(lambda: agent.recycler.pending() == 0)
        agent.recorder.flush()
        assert cluster.eviction_posts() == []
        assert cluster.pod("web-0") is not None and cluster.pod("bare") is not None
        assert cluster.events("PodRecycled") == []
        assert cluster.events("PodRecycled", "Pod", "web-0") == []


def test_a_pdb_refusal_is_reported_and_retried_with_backoff(cluster: Cluster) -> None:
    cluster.api.refuse_evictions(1, pod=("shop", "web-0"), retry_after=1)
    limits = Limits(retry_base=0.2)
    with fixed(cluster, RECYCLE, {"web-0": REPLICASET, "web-1": REPLICASET}, limits):
        summary = wait_until(lambda: cluster.events("PodRecycled"))
        assert summary[0]["message"] == (
            f"recycled 1 pods for {cluster.hostport}; 0 bare pods left to kubelet's retry; "
            "1 refused by PodDisruptionBudget, retrying"
        )
        wait_until(lambda: cluster.pod("web-0") is None)  # the retry, after Retry-After: 1
        done = wait_until(
            lambda: [e for e in cluster.events("PodRecycled") if "after retries" in e["message"]]
        )
        assert done[0]["message"] == (
            f"recycling for {cluster.hostport} done after retries: 2 pods recycled"
        )
        # one POST per attempt: the client itself does not retry a 429
        assert cluster.eviction_posts().count("/api/v1/namespaces/shop/pods/web-0/eviction") == 2


def test_a_pod_replaced_before_its_retry_is_left_alone(cluster: Cluster) -> None:
    """A StatefulSet recreates web-0 under the same name while the eviction waits for its
    retry: the agent sees the old uid gone and does not evict the newcomer."""
    statefulset = {"kind": "StatefulSet", "name": "web", "uid": "sts-uid"}
    cluster.api.refuse_evictions(1, pod=("shop", "web-0"), retry_after=1)
    with fixed(cluster, RECYCLE, {"web-0": statefulset}, Limits(retry_base=0.2)) as (agent, uids):
        wait_until(lambda: cluster.events("PodRecycled"))
        cluster.api.delete_object("pods", "shop", "web-0")
        cluster.api.put_object(
            {
                "kind": "Pod",
                "metadata": {"name": "web-0", "namespace": "shop"},
                "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "x"}]},
                "status": {"phase": "Running"},
            }
        )
        wait_until(lambda: agent.recycler.pending() == 0)
        replacement = cluster.pod("web-0")
        assert replacement is not None and replacement["metadata"]["uid"] != uids["web-0"]
        assert cluster.eviction_posts() == ["/api/v1/namespaces/shop/pods/web-0/eviction"]


def test_the_eviction_call_against_the_api(cluster: Cluster) -> None:
    """The wire answers `evict` maps: 201, 404, 409 on a stale uid, 429 from a budget."""
    uid = cluster.failing_pod("web-0")
    client = cluster.client(attempts=1)
    try:
        assert evict(client, "shop", "web-0", uid="stale-uid").outcome == GONE
        cluster.api.refuse_evictions(1, retry_after=3)
        refused = evict(client, "shop", "web-0", uid=uid)
        assert refused == Eviction(
            REFUSED, "Cannot evict pod as it would violate the pod's disruption budget.", 3.0
        )
        assert cluster.pod("web-0") is not None
        assert evict(client, "shop", "web-0", uid=uid) == Eviction(EVICTED)
        assert cluster.pod("web-0") is None
        assert evict(client, "shop", "web-0", uid=uid).outcome == GONE
    finally:
        client.close()


def test_the_cap_bounds_one_remediation(cluster: Cluster) -> None:
    pods: dict[str, dict[str, str] | None] = {f"web-{i}": REPLICASET for i in range(4)}
    with fixed(cluster, RECYCLE, pods, Limits(cap=2, burst=1, per_second=20.0)):
        summary = wait_until(lambda: cluster.events("PodRecycled"))
        assert summary[0]["message"].startswith(f"recycled 2 pods for {cluster.hostport}; ")
        assert (
            "2 over the cap of 2 per remediation left to kubelet's retry" in (summary[0]["message"])
        )
        # paced one at a time by the rate limit, in a stable order
        assert cluster.eviction_posts() == [
            "/api/v1/namespaces/shop/pods/web-0/eviction",
            "/api/v1/namespaces/shop/pods/web-1/eviction",
        ]
        assert cluster.pod("web-2") is not None and cluster.pod("web-3") is not None
