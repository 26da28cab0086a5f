"""The product end to end on containerd: a real x509 pull failure, fixed and undone by the CLI.

Each scenario is what an operator sees on a node: the CRI pull (what kubelet does) fails
with "x509: certificate signed by unknown authority"; `ca-trust-agent install` fixes it;
`ca-trust-agent remove` brings the failure back. The containerd here is laid out like a
node's (/etc/containerd/config.toml with config_path, /run/containerd/containerd.sock);
the agent finds both on its own under --host-root /. It is not under systemd, so the lab
restart command stands in for `systemctl restart containerd`
(CA_TRUST_AGENT_RESTART_COMMAND). Root + private mount namespace only; see conftest.py.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.runtimes.containerd import Containerd
from tests.e2e.conftest import LabRegistry, agent_cli, cri_pull, timing

pytestmark = [pytest.mark.e2e, pytest.mark.root]

X509_UNKNOWN = "x509: certificate signed by unknown authority"
LEDGER = Path("/var/lib/ca-trust-agent/ledger.json")
ANCHORS = Path("/usr/local/share/ca-certificates")
BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def restart_env(daemon: Containerd) -> dict[str, str]:
    return {"CA_TRUST_AGENT_RESTART_COMMAND": shlex.join(daemon.restart_command)}


def ledger_endpoints() -> list[str]:
    if not LEDGER.exists():
        return []
    return sorted(json.loads(LEDGER.read_text()).get("entries", {}))


def body(pem: bytes) -> bytes:
    """The base64 body of a single-certificate PEM (bundles re-wrap headers identically)."""
    return b"".join(pem.strip().splitlines()[1:-1])


def bundle_body() -> bytes:
    return b"".join(BUNDLE.read_bytes().split())


@pytest.fixture
def node(
    node_containerd: Containerd, lab_registry: LabRegistry
) -> Iterator[tuple[Containerd, LabRegistry]]:
    """Both scenarios start from an untrusted node and leave one behind, even on failure."""
    assert not (node_containerd.layout.certs_d / lab_registry.target).exists()
    assert not list(ANCHORS.glob("ca-trust-agent-*"))
    yield node_containerd, lab_registry
    listed = agent_cli("list", "--json").stdout
    if lab_registry.target in listed:  # a failed scenario: undo it through the product
        agent_cli("remove", lab_registry.target, "--json", env=restart_env(node_containerd))


def install(daemon: Containerd, registry: LabRegistry, scope: str) -> dict[str, Any]:
    began = time.monotonic()
    result = agent_cli(
        "install", registry.target, "--scope", scope, "--json", env=restart_env(daemon)
    )
    timing(f"agent install --scope {scope}", time.monotonic() - began)
    assert result.returncode == 0, result.explain()
    data = result.json()
    assert isinstance(data, dict)
    return data


def remove(daemon: Containerd, registry: LabRegistry) -> dict[str, Any]:
    began = time.monotonic()
    result = agent_cli("remove", registry.target, "--json", env=restart_env(daemon))
    timing("agent remove", time.monotonic() - began)
    assert result.returncode == 0, result.explain()
    data = result.json()
    assert isinstance(data, dict)
    return data


def test_registry_scope_fixes_the_cri_pull_without_restart_and_remove_undoes_it(
    node: tuple[Containerd, LabRegistry],
) -> None:
    daemon, registry = node
    pid = daemon.pid
    assert X509_UNKNOWN in cri_pull(daemon, registry.image).error

    installed = install(daemon, registry, "registry")
    assert installed["status"] == "installed"
    assert installed["scope"] == "registry"
    assert installed["restarted"] == []
    ours = daemon.layout.certs_d / registry.target / f"ca-trust-agent-{registry.safe_key}.crt"
    assert registry.pki.intermediate is not None
    # the registry sends leaf + intermediate; the topmost CA sent becomes the anchor
    assert ours.read_bytes() == registry.pki.intermediate.pem
    assert ledger_endpoints() == [registry.target]

    pulled = cri_pull(daemon, registry.image)
    assert pulled.ok, pulled.error
    assert daemon.pid == pid

    removed = remove(daemon, registry)
    assert removed["status"] == "removed"
    assert not (daemon.layout.certs_d / registry.target).exists()
    assert ledger_endpoints() == []
    assert X509_UNKNOWN in cri_pull(daemon, registry.image).error
    assert daemon.pid == pid


def test_system_scope_fixes_the_cri_pull_through_a_restart_and_remove_undoes_it(
    node: tuple[Containerd, LabRegistry],
) -> None:
    daemon, registry = node
    # a first TLS connection: from here on containerd holds the system roots cached
    assert X509_UNKNOWN in cri_pull(daemon, registry.image).error
    before = daemon.pid
    assert registry.pki.intermediate is not None
    anchor = registry.pki.intermediate.pem

    installed = install(daemon, registry, "system")
    assert installed["status"] == "installed"
    assert installed["scope"] == "system"
    assert installed["restarted"] == ["containerd"]
    assert (ANCHORS / f"ca-trust-agent-{registry.safe_key}.crt").read_bytes() == anchor
    assert body(anchor) in bundle_body()  # the real update-ca-certificates ran (sandboxed)
    restarted = daemon.pid
    assert restarted != before

    pulled = cri_pull(daemon, registry.image)
    assert pulled.ok, pulled.error

    removed = remove(daemon, registry)
    assert removed["status"] == "removed"
    assert removed["restarted"] == ["containerd"]
    assert not list(ANCHORS.glob("ca-trust-agent-*"))
    assert body(anchor) not in bundle_body()
    assert daemon.pid != restarted
    assert X509_UNKNOWN in cri_pull(daemon, registry.image).error
