"""Outages: the API server goes away for a minute, the policy ConfigMap is deleted.

The agent must come back by itself, miss no failure that happened while it was blind, and
keep enforcing the last good policy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer, make_configmap, make_node
from lab.fakes.doubles import failing_pod, wait_until
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

NS = "ca-trust-agent"
NODE = "node-a"
OUTAGE_SECONDS = 60


class World:
    def __init__(self, api: FakeApiServer, server: TLSServer, root: Path) -> None:
        self.api, self.server, self.root = api, server, root

    def fail_pod(self, name: str) -> None:
        self.api.put_object(failing_pod(name, NODE, f"127.0.0.1:{self.server.port}"))

    def node_events(self, reason: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.objects("events")
            if e.get("reason") == reason and e["involvedObject"].get("name") == NODE
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, Agent]]:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    root = node_root(tmp_path / "host")
    with FakeApiServer() as api, TLSServer(ca.chain, ca.leaf) as server:
        api.put_object(make_node(NODE, annotations={"ca-trust-agent.io/remediate": "enabled"}))
        api.put_object(
            make_configmap(
                "ca-trust-agent",
                {"policy.yaml": 'registries:\n  - host: "127.0.0.1"\n'},
                namespace=NS,
            )
        )
        config = Configuration()
        config.host = api.url
        client = KubeClient(config, retry=RetryPolicy(attempts=2, initial=0.05, max_wait=0.2))
        agent = Agent(
            client, NODE, NS, Engine(HostFS(str(root)), DirectRunner()), reconcile_seconds=3600
        )
        agent.start()
        try:
            wait_until(lambda: agent.ready().ready, 10)
            yield World(api, server, root), agent
        finally:
            agent.stop()
            agent.join()


def test_a_failure_made_during_a_one_minute_api_outage_is_fixed_when_it_returns(
    world: tuple[World, Agent],
) -> None:
    w, agent = world
    w.api.pause("drop")
    time.sleep(OUTAGE_SECONDS / 2)
    w.fail_pod("during-outage")  # kubelet wrote it; the agent cannot see anything yet
    time.sleep(OUTAGE_SECONDS / 2)
    assert agent.stopping.is_set() is False, "an outage never stops the agent"
    w.api.resume()
    # the watches back off (capped at 30 s) and resume; the failure is not missed
    wait_until(lambda: w.node_events("CATrusted"), timeout=60)
    assert w.api.watch_count("pods") >= 1
    # and the resumed watch keeps delivering (the host is trusted now, so the agent only
    # records the pod; no new Event is due)
    w.fail_pod("after-outage")
    wait_until(
        lambda: agent.controller.state.is_failing(
            (w.api.get_object("pods", "shop", "after-outage") or {})["metadata"]["uid"]
        ),
        timeout=10,
    )


def test_a_deleted_policy_configmap_keeps_the_last_good_policy_and_warns(
    world: tuple[World, Agent],
) -> None:
    w, _ = world
    w.api.delete_object("configmaps", NS, "ca-trust-agent")
    warning = wait_until(lambda: w.node_events("PolicyInvalid"), timeout=10)
    assert "last good policy" in warning[0]["message"]
    w.fail_pod("web-1")  # still allowed by the last good policy
    wait_until(lambda: w.node_events("CATrusted"), timeout=10)
