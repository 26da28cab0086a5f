"""The EulerOS/CentOS path of the vendor procedure, end to end: containerd trusting a RHEL store.

Inside the sandbox, `lab.isolation.rhel.rhel_trust` turns the node into a RHEL-family one: EulerOS's
os-release, `/etc/pki/ca-trust` extracted by the real p11-kit through an `update-ca-trust`
driver, the package link `/etc/pki/tls/certs/ca-bundle.crt`, and an empty `/etc/ssl/certs`,
so Go (containerd 1.6 here) finds no Debian bundle and loads `ca-bundle.crt`, as on RHEL.
The CRI pull (what kubelet does) fails with x509; `ca-trust-agent install --scope system`
anchors the registry's CA in `anchors/`, runs `update-ca-trust extract`, checks the bundle,
verifies and restarts containerd; the pull works. `remove` brings the failure back.
Root + private mount namespace only; see conftest.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.node.stores.bundle import bundle_digests
from lab.isolation.rhel import ANCHORS, CA_BUNDLE_LINK, RhelStore, rhel_trust
from lab.procs import clean_env
from lab.runtimes.containerd import Containerd
from tests.e2e.conftest import LabRegistry, agent_cli, cri_pull
from tests.e2e.test_containerd_e2e import X509_UNKNOWN, install, remove, restart_env

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def rhel_node(
    node_containerd: Containerd, lab_registry: LabRegistry, tmp_path: Path
) -> Iterator[tuple[Containerd, LabRegistry, RhelStore]]:
    with rhel_trust(tmp_path / "rhel", style="el", os_release="euleros-2.0") as store:
        try:
            yield node_containerd, lab_registry, store
        finally:
            if lab_registry.target in agent_cli("list", "--json").stdout:
                agent_cli("remove", lab_registry.target, env=restart_env(node_containerd))
    # containerd cached the RHEL layout's roots: let it read the sandbox's Debian store again
    argv = [a.replace("{runtime}", "containerd") for a in node_containerd.restart_command]
    subprocess.run(argv, env=clean_env(), check=True, timeout=120)


def anchored(registry: LabRegistry) -> bool:
    assert registry.pki.intermediate is not None
    data = CA_BUNDLE_LINK.read_bytes() if CA_BUNDLE_LINK.exists() else b""
    return registry.pki.intermediate.sha256 in bundle_digests(data)


def test_system_scope_on_a_rhel_layout_fixes_the_cri_pull_and_remove_undoes_it(
    rhel_node: tuple[Containerd, LabRegistry, RhelStore],
) -> None:
    daemon, registry, _store = rhel_node
    assert not Path("/etc/ssl/certs/ca-certificates.crt").exists()  # Go must use the RHEL file
    assert X509_UNKNOWN in cri_pull(daemon, registry.image).error
    before = daemon.pid

    installed = install(daemon, registry, "system")
    assert installed["status"] == "installed"
    assert installed["restarted"] == ["containerd"]
    assert sorted(p.name for p in ANCHORS.iterdir()) == [f"ca-trust-agent-{registry.safe_key}.crt"]
    assert anchored(registry)  # the real p11-kit extracted it into what Go reads
    assert daemon.pid != before

    pulled = cri_pull(daemon, registry.image)
    assert pulled.ok, pulled.error

    removed = remove(daemon, registry)
    assert removed["status"] == "removed"
    assert list(ANCHORS.iterdir()) == []
    assert not anchored(registry)
    assert X509_UNKNOWN in cri_pull(daemon, registry.image).error
