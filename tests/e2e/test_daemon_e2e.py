"""The DaemonSet loop end to end on a real containerd: kubelet's error in, a working pull out.

The pod status carries the exact error text containerd's CRI returned for the pull (what
kubelet copies into `state.waiting.message`); the agent, watching the fake API server,
detects it, trusts the registry's CA in registry scope under the node's real
/etc/containerd/certs.d (private to the sandbox), and the next CRI pull works. Taking the
registry out of the policy removes the CA again, and the pull fails again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import node, pod, policy, wait_until
from lab.runtimes.containerd import Containerd
from tests.e2e.conftest import LabRegistry, cri_pull

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NS = "ca-trust-agent"
NODE = "lab-node"
X509_UNKNOWN = "x509: certificate signed by unknown authority"


@pytest.fixture
def cluster(node_containerd: Containerd, lab_registry: LabRegistry) -> Iterator[FakeApiServer]:
    with FakeApiServer() as api:
        api.put_object(node(NODE))
        api.put_object(policy(f'registries:\n  - host: "{lab_registry.target}"\n', NS))
        yield api


def events(api: FakeApiServer, reason: str) -> list[dict[str, object]]:
    return [e for e in api.objects("events") if e.get("reason") == reason]


def test_the_agent_turns_a_real_cri_x509_failure_into_a_working_pull_and_back(
    cluster: FakeApiServer, node_containerd: Containerd, lab_registry: LabRegistry
) -> None:
    failed = cri_pull(node_containerd, lab_registry.image)
    assert X509_UNKNOWN in failed.error
    config = Configuration()
    config.host = cluster.url
    client = KubeClient(config, retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05))
    agent = Agent(client, NODE, NS, Engine(HostFS("/"), DirectRunner()), reconcile_seconds=3600)
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        waiting = {"reason": "ErrImagePull", "message": failed.error}
        cluster.put_object(pod("web-1", NODE, lab_registry.image, waiting))

        trusted = wait_until(lambda: events(cluster, "CATrusted"), timeout=20)
        assert "registry scope" in str(trusted[0]["message"])
        # the runtime that failed pulled the pod's image through its CRI before CATrusted
        assert f"verified: containerd pulled {lab_registry.image}" in str(trusted[0]["message"])
        pid = node_containerd.pid
        pulled = cri_pull(node_containerd, lab_registry.image)
        assert pulled.ok, pulled.error
        assert node_containerd.pid == pid  # registry scope: no restart

        cluster.put_object(policy("registries: []\n", NS))  # the operator de-lists it
        wait_until(lambda: events(cluster, "CARemoved"), timeout=20)
        assert X509_UNKNOWN in cri_pull(node_containerd, lab_registry.image).error
    finally:
        agent.stop()
        agent.join()
