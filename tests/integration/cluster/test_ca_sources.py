"""`caFrom`: the agent against the fake API server takes a registry's CA from a ConfigMap
(what trust-manager writes) or from ClusterTrustBundles, and follows them: a changed bundle
is installed over the old one, a deleted one is removed, and a policy that names no source
makes no such call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer, make_configmap
from lab.fakes.doubles import node as node_object
from lab.fakes.doubles import policy as policy_configmap
from lab.fakes.doubles import wait_until
from lab.fakes.hostroot import node_root
from lab.tls import pki

pytestmark = pytest.mark.integration

NS = "ca-trust-agent"
NODE = "node-a"
CERTS = Path("etc/containerd/certs.d/harbor.test")


def bundle(name: str, pem: bytes, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "apiVersion": "certificates.k8s.io/v1beta1",
        "kind": "ClusterTrustBundle",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"signerName": "corp.example/registry-ca", "trustBundle": pem.decode()},
    }


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        server.put_object(node_object(NODE))
        yield server


@pytest.fixture
def agent(api: FakeApiServer, tmp_path: Path) -> Iterator[Agent]:
    config = Configuration()
    config.host = api.url
    client = KubeClient(config, retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05))
    engine = Engine(HostFS(str(node_root(tmp_path / "host"))), DirectRunner())
    running = Agent(client, NODE, NS, engine, reconcile_seconds=3600)
    running.start()
    try:
        wait_until(lambda: running.ready().ready)
        yield running
    finally:
        running.stop()
        running.join()


def trusted(agent: Agent) -> str | None:
    # the ledger records an entry before its files (state "installing"): wait for "installed"
    entry = agent.engine.entries().get("harbor.test:443")
    return entry.sha256 if entry is not None and entry.state == "installed" else None


def reasons(api: FakeApiServer) -> list[str]:
    return [str(e.get("reason")) for e in api.objects("events")]


def test_a_ca_from_a_config_map_follows_the_config_map(api: FakeApiServer, agent: Agent) -> None:
    first, second = pki.make_ca("Corp Root 2026"), pki.make_ca("Corp Root 2027")
    api.put_object(
        policy_configmap(
            'registries:\n  - host: "harbor.test:443"\n'
            "    caFrom: {configMap: {name: corp-ca, key: ca.crt}}\n"
        )
    )
    api.put_object(make_configmap("corp-ca", {"ca.crt": first.pem.decode()}, namespace=NS))
    wait_until(lambda: trusted(agent) == first.sha256)
    root = Path(agent.engine.fs.root)
    files = [root / f.lstrip("/") for f in agent.engine.entries()["harbor.test:443"].files]
    anchor = [f for f in files if f.suffix == ".crt"]
    assert anchor and all(f.is_relative_to(root / CERTS) for f in anchor)
    assert first.pem in anchor[0].read_bytes()

    # trust-manager rewrites the key when the Bundle changes: a rotation
    api.put_object(make_configmap("corp-ca", {"ca.crt": second.pem.decode()}, namespace=NS))
    wait_until(lambda: trusted(agent) == second.sha256)

    api.delete_object("configmaps", NS, "corp-ca")
    wait_until(lambda: trusted(agent) is None)
    wait_until(lambda: "CARemoved" in reasons(api))
    assert not any(f.exists() for f in anchor)


def test_a_ca_from_cluster_trust_bundles_by_label(api: FakeApiServer, agent: Agent) -> None:
    ca, other, rotated = pki.make_ca("Registry CA"), pki.make_ca("Other"), pki.make_ca("Next")
    api.put_object(bundle("unrelated", other.pem))  # not labelled: never trusted
    api.put_object(
        policy_configmap(
            'registries:\n  - host: "harbor.test:443"\n'
            "    caFrom:\n      clusterTrustBundle:\n"
            "        signerName: corp.example/registry-ca\n"
            "        labelSelector: {matchLabels: {trust.corp.example/registry: 'true'}}\n"
        )
    )
    labels = {"trust.corp.example/registry": "true"}
    api.put_object(bundle("registry-ca", ca.pem, labels))
    wait_until(lambda: trusted(agent) == ca.sha256)
    api.put_object(bundle("registry-ca", rotated.pem, labels))
    wait_until(lambda: trusted(agent) == rotated.sha256)
    api.delete_object("clustertrustbundles", None, "registry-ca")
    wait_until(lambda: trusted(agent) is None)


def test_a_cluster_trust_bundle_by_name(api: FakeApiServer, agent: Agent) -> None:
    ca = pki.make_ca("Registry CA")
    api.put_object(bundle("corp-registry-ca", ca.pem))
    api.put_object(
        policy_configmap(
            'registries:\n  - host: "harbor.test:443"\n'
            "    caFrom: {clusterTrustBundle: {name: corp-registry-ca}}\n"
        )
    )
    wait_until(lambda: trusted(agent) == ca.sha256)


def test_a_policy_without_sources_makes_no_such_call(api: FakeApiServer, agent: Agent) -> None:
    api.put_object(policy_configmap('registries:\n  - host: "harbor.test:443"\n'))
    wait_until(lambda: agent.controller.policy_loaded)
    paths = {r.path for r in api.requests()}
    assert not any("clustertrustbundles" in p for p in paths)
    # ConfigMaps are only read by name (the policy's own watch): no namespace-wide watch
    configmap_calls = [r for r in api.requests() if "/configmaps" in r.path]
    assert configmap_calls
    assert all(
        r.query.get("fieldSelector", "").startswith("metadata.name=") for r in configmap_calls
    )


def test_sources_dropped_from_the_policy_stop_their_watch(api: FakeApiServer, agent: Agent) -> None:
    api.put_object(
        policy_configmap(
            'registries:\n  - host: "harbor.test:443"\n'
            "    caFrom: {clusterTrustBundle: {name: corp-registry-ca}}\n"
        )
    )
    api.wait_for_watches(1, plural="clustertrustbundles")
    api.put_object(policy_configmap('registries:\n  - host: "harbor.test:443"\n'))
    wait_until(lambda: api.watch_count("clustertrustbundles") == 0)
