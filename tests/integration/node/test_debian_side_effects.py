"""The real update-ca-certificates in the sandbox changes nothing of the machine's own.

`update-ca-certificates` runs every hook in /etc/ca-certificates/update.d, and this
machine's `jks-keystore` (from ca-certificates-java) appends to
/var/lib/ca-certificates-java/pending and runs `dpkg-trigger` and `dpkg --triggers-only`:
writes outside the trust directories the sandbox copies. `lab.isolation.sandbox` therefore
empties its private copy of update.d. This test runs a full system-scope install and removal through
the real tool and compares the machine's hook targets and dpkg state, mtimes included,
before and after. The sandbox also watches the first two paths for the whole session and
fails its teardown if they change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.hostport import parse_hostport
from agent.node.engine import Engine, InstallRequest
from agent.node.host import DirectRunner, HostFS
from lab.isolation.sandbox import HOOKS_DIR, Sandbox
from lab.tls import pki
from lab.tls.servers import TLSServer
from tests.e2e.conftest import sandbox

__all__ = ["sandbox"]

pytestmark = [pytest.mark.integration, pytest.mark.root]

MACHINE_STATE = (
    "/var/lib/ca-certificates-java",
    "/var/lib/dpkg/triggers",
    "/var/lib/dpkg/status",
    "/var/lib/dpkg/updates",
)


def state() -> dict[str, object]:
    """Each path's and each entry's (size, mtime): a hook that appended and cleaned up
    after itself still moves an mtime."""
    seen: dict[str, object] = {}
    for path in MACHINE_STATE:
        if not os.path.lexists(path):
            seen[path] = None
            continue
        st = os.lstat(path)
        seen[path] = (st.st_size, st.st_mtime_ns)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                entry = os.lstat(os.path.join(path, name))
                seen[f"{path}/{name}"] = (entry.st_size, entry.st_mtime_ns)
    return seen


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TLSServer]:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    with TLSServer(ca.chain, ca.leaf) as srv:
        yield srv


def test_the_sandbox_hides_the_update_hooks_but_the_machine_keeps_them(sandbox: Sandbox) -> None:
    assert os.listdir(HOOKS_DIR) == []
    real = sandbox.real_fds["/etc/ca-certificates"]  # opened before the tmpfs went over it
    assert "jks-keystore" in os.listdir(f"/proc/self/fd/{real}/update.d")


def test_a_real_system_install_and_removal_leave_the_hook_targets_and_dpkg_alone(
    sandbox: Sandbox, server: TLSServer
) -> None:
    before = state()
    engine = Engine(HostFS("/"), DirectRunner(), runtimes=("containerd",))
    target = parse_hostport(server.hostport)
    installed = engine.install(InstallRequest(target, scope="system", restart="never"))
    assert installed.status == "installed" and installed.verified
    assert engine.remove(target, restart="never").status == "removed"
    assert state() == before
