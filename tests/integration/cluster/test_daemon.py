"""`ca-trust-agent run` against the fake API server, with a real TLS registry stand-in.

The agent watches its own Node, the policy ConfigMap and the Pods on its node through the
official client's HTTP stack; a pod whose pull failed with x509 gets the CA trusted in
registry scope on a host-root tree, and the operator sees it in Events (found with the
field selectors `kubectl describe` uses) and in the node annotation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer, write_kubeconfig
from lab.fakes.doubles import FakeRestarts, RecordingRunner, failing_pod, wait_until
from lab.fakes.doubles import node as node_object
from lab.fakes.doubles import policy as policy_configmap
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

NS = "ca-trust-agent"
NODE = "node-a"


@dataclass
class Cluster:
    api: FakeApiServer
    server: TLSServer
    root: Path
    tmp: Path

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def image(self) -> str:
        return f"{self.hostport}/lab/tiny:v1"

    def client(self, agent_name: str = NODE) -> KubeClient:
        config = Configuration()
        config.host = self.api.url
        return KubeClient(
            config,
            retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05),
            user_agent=f"ca-trust-agent/test ({agent_name})",
        )

    def agent(self, node: str = NODE, root: Path | None = None) -> Agent:
        engine = Engine(HostFS(str(root or self.root)), DirectRunner())
        return Agent(self.client(node), node, NS, engine, reconcile_seconds=3600)

    def fail_pod(self, name: str, node: str = NODE) -> None:
        self.api.put_object(failing_pod(name, node, self.hostport))

    def node_events(self, node: str = NODE, reason: str | None = None) -> list[dict[str, Any]]:
        """What `kubectl describe node` lists: involvedObject kind/name/uid, any namespace."""
        out = []
        for ev in self.api.objects("events"):
            io = ev.get("involvedObject") or {}
            if (io.get("kind"), io.get("name"), io.get("uid")) == ("Node", node, node) and (
                reason is None or ev.get("reason") == reason
            ):
                out.append(ev)
        return out

    def pod_events(self, name: str) -> list[dict[str, Any]]:
        pod = self.api.get_object("pods", "shop", name)
        assert pod is not None
        uid = pod["metadata"]["uid"]
        return [
            ev
            for ev in self.api.objects("events")
            if (ev.get("involvedObject") or {}).get("uid") == uid
        ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    root = tmp_path / "host"
    node_root(root)
    with FakeApiServer() as api, TLSServer(ca.chain, ca.leaf) as server:
        api.put_object(node_object(NODE))
        api.put_object(node_object("node-b"))
        api.put_object(policy_configmap('registries:\n  - host: "127.0.0.1"\n'))
        yield Cluster(api, server, root, tmp_path)


@pytest.fixture
def running(cluster: Cluster) -> Iterator[Agent]:
    agent = cluster.agent()
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        yield agent
    finally:
        agent.stop()
        agent.join()


def test_a_failing_pull_is_fixed_and_reported_on_the_node_and_the_pod(
    cluster: Cluster, running: Agent
) -> None:
    cluster.fail_pod("web-1")
    trusted = wait_until(lambda: cluster.node_events(reason="CATrusted"))
    assert trusted[0]["type"] == "Normal"
    assert trusted[0]["source"]["component"] == "ca-trust-agent"
    assert trusted[0]["metadata"]["namespace"] == "default"
    assert cluster.hostport in trusted[0]["message"]
    ours = cluster.root / f"etc/containerd/certs.d/{cluster.hostport}"
    assert [p.name for p in ours.iterdir()] == [
        f"ca-trust-agent-127.0.0.1_{cluster.server.port}.crt"
    ]
    reasons = {ev["reason"] for ev in wait_until(lambda: cluster.pod_events("web-1"))}
    assert {"UntrustedRegistryDetected"} <= reasons
    wait_until(lambda: {e["reason"] for e in cluster.pod_events("web-1")} >= {"CATrusted"})
    node = wait_until(
        lambda: (
            (cluster.api.get_object("nodes", None, NODE) or {})
            .get("metadata", {})
            .get("annotations", {})
            .get("ca-trust-agent.io/trusted-registries")
        )
    )
    assert node == cluster.hostport


def test_a_thousand_failing_pods_make_one_fetch_and_one_trusted_event(
    cluster: Cluster, running: Agent
) -> None:
    for i in range(1000):
        cluster.fail_pod(f"web-{i}")
    wait_until(lambda: cluster.node_events(reason="CATrusted"), timeout=30)
    # the agent has seen every pod fail and finished all the work they queued
    wait_until(lambda: len(running.controller.state.failing()) == 1000, timeout=30)
    wait_until(running.controller.wait_idle)
    running.recorder.flush()
    events = cluster.node_events(reason="CATrusted")
    assert len(events) == 1 and events[0].get("count", 1) == 1
    # one handshake to fetch the chain, one to verify the installed CA
    assert cluster.server.handshakes == 2


def test_pods_on_other_nodes_are_never_sent_to_this_agent(cluster: Cluster, running: Agent) -> None:
    before = cluster.api.bytes_sent(f"ca-trust-agent/test ({NODE})")
    for i in range(200):
        cluster.fail_pod(f"elsewhere-{i}", node="node-b")
    # the agent's pods watch has reached the version of the last write (a BOOKMARK says
    # so): whatever the API server would send this node about those pods, it has sent
    written = cluster.api.resource_version
    wait_until(lambda: int(running.watchers["pods"].resource_version or 0) >= written)
    assert cluster.api.bytes_sent(f"ca-trust-agent/test ({NODE})") - before < 2048  # bookmarks only
    assert cluster.node_events() == []


def test_a_node_that_has_not_opted_in_stays_idle(cluster: Cluster) -> None:
    cluster.api.put_object(node_object(NODE, opted_in=False))
    agent = cluster.agent()
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        cluster.fail_pod("web-1")
        uid = (cluster.api.get_object("pods", "shop", "web-1") or {})["metadata"]["uid"]
        wait_until(lambda: agent.controller.state.is_failing(uid))  # seen, and left alone
        assert agent.controller.wait_idle()
        agent.recorder.flush()
        assert cluster.node_events() == []
        assert cluster.server.handshakes == 0
        cluster.api.put_object(node_object(NODE, opted_in=True))  # the operator opts in
        cluster.fail_pod("web-2")
        wait_until(lambda: cluster.node_events(reason="CATrusted"))
    finally:
        agent.stop()
        agent.join()


def test_a_denied_registry_is_reported_until_the_policy_allows_it(
    cluster: Cluster,
) -> None:
    cluster.api.put_object(policy_configmap('registries:\n  - host: "registry.corp.example"\n'))
    agent = cluster.agent()
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        cluster.fail_pod("web-1")
        denied = wait_until(lambda: cluster.node_events(reason="RegistryNotAllowed"))
        assert "not" in denied[0]["message"] and denied[0]["type"] == "Warning"
        assert cluster.server.handshakes == 0
        # the operator allows it: the pod still failing is fixed at once, without waiting
        # for kubelet's next back-off attempt to update its status
        cluster.api.put_object(policy_configmap('registries:\n  - host: "127.0.0.1"\n'))
        wait_until(lambda: cluster.node_events(reason="CATrusted"))
    finally:
        agent.stop()
        agent.join()


def test_a_broken_policy_is_a_warning_and_the_last_good_one_stays(
    cluster: Cluster, running: Agent
) -> None:
    cluster.api.put_object(policy_configmap("registries: {not: a list}\n"))
    warning = wait_until(lambda: cluster.node_events(reason="PolicyInvalid"))
    assert "registries" in warning[0]["message"]
    cluster.fail_pod("web-1")
    wait_until(lambda: cluster.node_events(reason="CATrusted"))


def test_the_agent_recovers_from_dropped_watches_and_410_gone(
    cluster: Cluster, running: Agent
) -> None:
    cluster.api.drop_watches()
    cluster.api.expire_history()
    time.sleep(0.3)
    cluster.fail_pod("after-410")
    wait_until(lambda: cluster.node_events(reason="CATrusted"), timeout=20)


def test_an_api_outage_does_not_lose_a_failure_made_during_it(
    cluster: Cluster, running: Agent
) -> None:
    cluster.api.pause("drop")
    time.sleep(1.0)
    cluster.fail_pod("during-outage")  # written while the agent cannot see anything
    cluster.api.resume()
    wait_until(lambda: cluster.node_events(reason="CATrusted"), timeout=30)


def test_dry_run_reports_and_writes_nothing(cluster: Cluster) -> None:
    cluster.api.put_object(policy_configmap('dryRun: true\nregistries:\n  - host: "127.0.0.1"\n'))
    agent = cluster.agent()
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        cluster.fail_pod("web-1")
        wait_until(lambda: cluster.node_events(reason="CATrustDryRun"))
        assert not (cluster.root / "etc/containerd/certs.d").exists()
    finally:
        agent.stop()
        agent.join()


def test_the_run_command_serves_probes_and_exits_cleanly_on_sigterm(cluster: Cluster) -> None:
    from lab.procs import free_port

    port = free_port()
    kubeconfig = write_kubeconfig(cluster.tmp / "kubeconfig", cluster.api.url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--host-root",
            str(cluster.root),
            "--runner",
            "direct",
            "--namespace",
            NS,
            "--metrics-address",
            f"127.0.0.1:{port}",
            "--kubeconfig",
            str(kubeconfig),
            "--log-json",
        ],
        env={**os.environ, "NODE_NAME": NODE},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout=20)
        cluster.fail_pod("web-1")
        wait_until(lambda: cluster.node_events(reason="CATrusted"), timeout=20)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            metrics = r.read().decode()
        assert 'ca_trust_agent_remediations_total{result="trusted"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        _, err = proc.communicate()
        first = json.loads(err.splitlines()[0])
        assert {"message", "levelname"} <= first.keys() or "message" in first
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_system_scope_restarts_take_turns_across_nodes_through_leases(cluster: Cluster) -> None:
    cluster.api.put_object(
        policy_configmap(
            'scope: system\nmaxConcurrentRestarts: 1\nregistries:\n  - host: "127.0.0.1"\n'
        )
    )
    restarts = FakeRestarts(seconds=0.5)
    agents = []
    for node in ("node-a", "node-b", "node-c"):
        cluster.api.put_object(node_object(node))
        root = cluster.tmp / node
        (root / "etc").mkdir(parents=True)
        (root / "etc/os-release").write_text("ID=debian\n")
        engine = Engine(
            HostFS(str(root)),
            RecordingRunner(root),
            manager=restarts,  # type: ignore[arg-type]
            verify=lambda target, cafile: None,
        )
        agent = Agent(cluster.client(node), node, NS, engine, reconcile_seconds=3600)
        agent.slots.poll_seconds = 0.1
        agents.append(agent)
    for agent in agents:
        agent.start()
    try:
        for agent in agents:
            wait_until(lambda a=agent: a.ready().ready)
        for node in ("node-a", "node-b", "node-c"):
            cluster.fail_pod(f"web-{node}", node=node)
        wait_until(lambda: len(restarts.done) == 3, timeout=30)
        assert restarts.max_active == 1
        for node in ("node-a", "node-b", "node-c"):
            wait_until(lambda n=node: cluster.node_events(n, "ContainerRuntimeRestarted"))
        deferred = [
            e
            for n in ("node-a", "node-b", "node-c")
            for e in cluster.node_events(n, "ContainerRuntimeRestartDeferred")
        ]
        assert deferred, "at least one node waited for the restart slot"
    finally:
        for agent in agents:
            agent.stop()
        for agent in agents:
            agent.join()
