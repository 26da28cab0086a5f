"""Safe first trust end to end on a real containerd: `approval: required` holds the CA back
until an operator runs the command the agent gave, then the pull works.

The pod status carries the exact error containerd's CRI returned for the pull; the agent
(the DaemonSet loop, watching the fake API server) fetches the registry's chain, records the
anchor in the cluster's trust record and installs nothing: `CATrustPendingApproval` carries a
one-line kubectl command. The test runs that command verbatim in a shell, as an operator
pastes it, with the real kubectl talking to the fake API server. The agent sees the approval
(a pin in the policy ConfigMap), trusts the CA in registry scope under the node's real
/etc/containerd/certs.d (private to the sandbox), and the next CRI pull works. Taking the
registry out of the policy removes the CA again.

The time from the approval to `CATrusted` is printed (run with -s), never asserted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.core import firsttrust as ft
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import node, pod, policy, wait_until
from lab.runtimes.containerd import Containerd
from tests.e2e.conftest import LabRegistry, cri_pull, timing

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NS = "ca-trust-agent"
NODE = "lab-node"
X509_UNKNOWN = "x509: certificate signed by unknown authority"
VENV_BIN = Path(sys.executable).parent  # kubectl and the kubectl-ca_trust plugin


@pytest.fixture
def cluster(node_containerd: Containerd, lab_registry: LabRegistry) -> Iterator[FakeApiServer]:
    with FakeApiServer() as api:
        api.put_object(node(NODE))
        text = f'approval: required\nregistries:\n  - host: "{lab_registry.target}"\n'
        api.put_object(policy(text, NS))
        yield api


def events(api: FakeApiServer, reason: str) -> list[dict[str, object]]:
    return [e for e in api.objects("events") if e.get("reason") == reason]


def operator_shell(api: FakeApiServer, tmp: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`bash -c COMMAND` as an operator runs it: a clean environment, kubectl on the PATH,
    a kubeconfig naming the fake API server."""
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: lab, cluster: {{server: "{api.url}"}}}}]\n'
        "users: [{name: op, user: {}}]\n"
        "contexts: [{name: op, context: {cluster: lab, user: op}}]\n"
        "current-context: op\n"
    )
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp), "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_approval_required_the_command_in_the_event_makes_the_real_pull_work(
    cluster: FakeApiServer,
    node_containerd: Containerd,
    lab_registry: LabRegistry,
    tmp_path: Path,
) -> None:
    failed = cri_pull(node_containerd, lab_registry.image)
    assert X509_UNKNOWN in failed.error
    certs_d = Path("/etc/containerd/certs.d") / lab_registry.target
    config = Configuration()
    config.host = cluster.url
    client = KubeClient(config, retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05))
    agent = Agent(client, NODE, NS, Engine(HostFS("/"), DirectRunner()), reconcile_seconds=3600)
    agent.start()
    try:
        wait_until(lambda: agent.ready().ready)
        waiting = {"reason": "ErrImagePull", "message": failed.error}
        cluster.put_object(pod("web-1", NODE, lab_registry.image, waiting))

        asked = wait_until(lambda: events(cluster, "CATrustPendingApproval"), timeout=20)
        message = str(asked[0]["message"])
        # the registry presents leaf + intermediate: the anchor is the top of what it shows
        assert lab_registry.pki.intermediate is not None
        anchor = lab_registry.pki.intermediate.sha256
        assert lab_registry.target in message and anchor in message
        # nothing is trusted before the operator says so: no file, and the pull still fails
        assert not certs_d.exists()
        assert events(cluster, "CATrusted") == []
        assert X509_UNKNOWN in cri_pull(node_containerd, lab_registry.image).error
        record = (cluster.get_object("configmaps", NS, ft.RECORD_NAME) or {}).get("data") or {}
        seen = ft.parse_record(lab_registry.target, record.get(ft.record_key(lab_registry.target)))
        assert seen.accepted is None and seen.sightings[0].anchor.sha256 == anchor

        command = message.split("To approve: ", 1)[1]
        approved = operator_shell(cluster, tmp_path, command)  # verbatim, as pasted
        assert approved.returncode == 0, approved.stderr
        began = time.monotonic()
        trusted = wait_until(lambda: events(cluster, "CATrusted"), timeout=20)
        timing("approval -> CATrusted", time.monotonic() - began)

        assert "registry scope" in str(trusted[0]["message"])
        assert anchor in str(trusted[0]["message"])
        assert f"verified: containerd pulled {lab_registry.image}" in str(trusted[0]["message"])
        pulled = cri_pull(node_containerd, lab_registry.image)
        assert pulled.ok, pulled.error
        data = (cluster.get_object("configmaps", NS, "ca-trust-agent") or {}).get("data") or {}
        assert data[ft.approval_key(lab_registry.target)] == f"{lab_registry.target} {anchor}"

        cluster.put_object(policy("registries: []\n", NS))  # the operator de-lists it
        wait_until(lambda: events(cluster, "CARemoved"), timeout=20)
        assert not certs_d.exists()
        assert X509_UNKNOWN in cri_pull(node_containerd, lab_registry.image).error
    finally:
        agent.stop()
        agent.join()
