"""CAs the cluster already holds, end to end on a real containerd: the registry's CA is put
in a ConfigMap (as trust-manager writes it) or a ClusterTrustBundle, the agent watching the
fake API server installs it in registry scope, and a CRI pull works without any failure
having to happen first. Deleting the source takes the CA away again, and the pull fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer, make_configmap
from lab.fakes.doubles import node, policy, wait_until
from lab.runtimes.containerd import Containerd
from tests.e2e.conftest import LabRegistry, cri_pull

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NS = "ca-trust-agent"
NODE = "lab-node"
X509_UNKNOWN = "x509: certificate signed by unknown authority"


def config_map_source(pem: str) -> tuple[str, dict[str, Any], tuple[str, str | None, str]]:
    return (
        "{configMap: {name: corp-ca, key: ca.crt}}",
        make_configmap("corp-ca", {"ca.crt": pem}, namespace=NS),
        ("configmaps", NS, "corp-ca"),
    )


def trust_bundle_source(pem: str) -> tuple[str, dict[str, Any], tuple[str, str | None, str]]:
    bundle = {
        "apiVersion": "certificates.k8s.io/v1beta1",
        "kind": "ClusterTrustBundle",
        "metadata": {"name": "lab-registry-ca", "labels": {"trust.lab/registry": "true"}},
        "spec": {"signerName": "lab.test/registry-ca", "trustBundle": pem},
    }
    selector = (
        "{clusterTrustBundle: {signerName: lab.test/registry-ca,"
        " labelSelector: {matchLabels: {trust.lab/registry: 'true'}}}}"
    )
    return selector, bundle, ("clustertrustbundles", None, "lab-registry-ca")


@pytest.fixture
def agent_api(node_containerd: Containerd) -> Iterator[tuple[FakeApiServer, Agent]]:
    with FakeApiServer() as api:
        api.put_object(node(NODE))
        config = Configuration()
        config.host = api.url
        client = KubeClient(config, retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05))
        agent = Agent(client, NODE, NS, Engine(HostFS("/"), DirectRunner()), reconcile_seconds=3600)
        agent.start()
        try:
            wait_until(lambda: agent.ready().ready)
            yield api, agent
        finally:
            agent.stop()
            agent.join()


def reasons(api: FakeApiServer) -> list[str]:
    return [str(e.get("reason")) for e in api.objects("events")]


@pytest.mark.parametrize(
    "make_source", [config_map_source, trust_bundle_source], ids=["configmap", "clustertrustbundle"]
)
def test_a_ca_from_the_cluster_makes_the_cri_pull_work_and_its_removal_undoes_it(
    make_source: Any,
    agent_api: tuple[FakeApiServer, Agent],
    node_containerd: Containerd,
    lab_registry: LabRegistry,
) -> None:
    api, agent = agent_api
    assert X509_UNKNOWN in cri_pull(node_containerd, lab_registry.image).error
    ca_from, obj, (plural, namespace, name) = make_source(lab_registry.pki.root.pem.decode())
    api.put_object(obj)
    api.put_object(
        policy(f'registries:\n  - host: "{lab_registry.target}"\n    caFrom: {ca_from}\n', NS)
    )
    wait_until(lambda: "CATrusted" in reasons(api), timeout=20)
    entry = agent.engine.entries()[lab_registry.target]
    assert entry.sha256 == lab_registry.pki.root.sha256
    pid = node_containerd.pid
    pulled = cri_pull(node_containerd, lab_registry.image)
    assert pulled.ok, pulled.error
    assert node_containerd.pid == pid  # registry scope: no restart

    api.delete_object(plural, namespace, name)
    wait_until(lambda: "CARemoved" in reasons(api), timeout=20)
    assert X509_UNKNOWN in cri_pull(node_containerd, lab_registry.image).error
