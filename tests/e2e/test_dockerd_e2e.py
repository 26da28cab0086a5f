"""The product end to end on dockerd: /etc/docker/certs.d fixes a pull with no restart.

dockerd never shows an x509 error for a 127.0.0.0/8 registry (it treats loopback as
insecure), so this registry runs in a network namespace of the lab's own and is reached
as registry-ns.test:5443. The agent writes /etc/docker/certs.d/<host:port>/ -- private to
the sandbox's mount namespace, which dockerd reads on every pull. Root + private mount
namespace only; see conftest.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lab.runtimes.dockerd import Dockerd
from tests.e2e.conftest import LabRegistry, agent_cli, timing

pytestmark = [pytest.mark.e2e, pytest.mark.root]

X509_UNKNOWN = "x509: certificate signed by unknown authority"
DOCKER_CERTS_D = Path("/etc/docker/certs.d")


def docker_pull(daemon: Dockerd, image: str) -> tuple[bool, str]:
    began = time.monotonic()
    outcome = daemon.pull(image)
    timing(f"docker pull ({'ok' if outcome.ok else 'refused'})", time.monotonic() - began)
    if outcome.ok:
        daemon.remove_image(image)  # the next pull must reach the registry again
    return outcome.ok, outcome.output


def test_registry_scope_fixes_docker_pull_without_restart_and_remove_undoes_it(
    lab_dockerd: Dockerd, netns_registry: LabRegistry
) -> None:
    registry = netns_registry
    pid = lab_dockerd.pid
    ok, output = docker_pull(lab_dockerd, registry.image)
    assert not ok
    assert X509_UNKNOWN in output

    result = agent_cli(
        "install", registry.target, "--scope", "registry", "--runtime", "docker", "--json"
    )
    assert result.returncode == 0, result.explain()
    installed = result.json()
    assert isinstance(installed, dict)
    assert installed["status"] == "installed"
    assert installed["restarted"] == []
    ours = DOCKER_CERTS_D / registry.target / f"ca-trust-agent-{registry.safe_key}.crt"
    assert ours.is_file()

    ok, output = docker_pull(lab_dockerd, registry.image)
    assert ok, output
    assert lab_dockerd.pid == pid

    result = agent_cli("remove", registry.target, "--runtime", "docker", "--json")
    assert result.returncode == 0, result.explain()
    assert json.loads(result.stdout)["status"] == "removed"
    assert not (DOCKER_CERTS_D / registry.target).exists()
    ok, output = docker_pull(lab_dockerd, registry.image)
    assert not ok
    assert X509_UNKNOWN in output
    assert lab_dockerd.pid == pid


def test_dockerd_judges_the_install_through_its_engine_api(
    lab_dockerd: Dockerd, netns_registry: LabRegistry
) -> None:
    """The verification client the agent uses for docker nodes, against the real daemon:
    the same x509 refusal as `docker pull` before, a pull after, nothing in between."""
    from agent.node.runtimes import dockerapi

    registry = netns_registry
    socket = str(lab_dockerd.layout.socket)
    before = dockerapi.pull(socket, registry.image, timeout=30)
    assert before.kind == "untrusted", before.describe()
    assert X509_UNKNOWN in before.detail

    result = agent_cli("install", registry.target, "--scope", "registry", "--runtime", "docker")
    assert result.returncode == 0, result.explain()
    try:
        after = dockerapi.pull(socket, registry.image, timeout=30)
        assert after.kind == "pulled", after.describe()
        lab_dockerd.remove_image(registry.image)
    finally:
        agent_cli("remove", registry.target, "--runtime", "docker")
