"""kill -9 at every step of a system-scope install and removal on a RHEL-family node.

The same kills as test_crash_safety.py, but the store is the one of EulerOS/CentOS/RHEL
(`lab.isolation.rhel.rhel_trust`: the real p11-kit behind an EL-style `update-ca-trust`) and the CLI
runs with `--host-root /` in the sandbox, as on a node. After each kill the test runs
`update-ca-trust extract` itself, as the next package update on the node would, and checks
what the runtimes would then trust: our anchor exactly when our complete file is in
`anchors/`, and never anything from a half-done write (p11-kit reads every file there, dot
files included). Then the same command again must converge, bundle included.

Root in a private mount namespace only (see tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.node.host import STAGING_DIR, TMP_PREFIX, HostFS
from agent.node.ledger import Ledger
from agent.node.stores.bundle import bundle_digests
from lab.isolation.rhel import ANCHORS, CA_BUNDLE_LINK, RhelStore, rhel_trust
from lab.isolation.sandbox import Sandbox
from lab.tls import pki
from lab.tls.servers import TLSServer
from tests.e2e.conftest import REPO, sandbox
from tests.robustness.test_crash_safety import (
    FAILPOINTS,
    FakeRuntimeSocket,
    expected_to_die,
)

__all__ = ["sandbox"]

pytestmark = [pytest.mark.integration, pytest.mark.root]

SOCKET = Path("/run/containerd/containerd.sock")


@dataclass
class RhelNode:
    store: RhelStore
    server: TLSServer
    anchor: pki.Issued
    bin: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def our_name(self) -> str:
        return f"ca-trust-agent-127.0.0.1_{self.server.port}.crt"

    def run(self, command: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent", command, self.target, "--host-root", "/"]
        argv += ["--runtime", "containerd", "--runner", "direct", "--json"]
        argv += ["--restart-command", f"{self.bin}/restart-runtime {{runtime}}"]
        if command == "install":
            argv += ["--scope", "system", "--timeout", "5"]
        env = {k: v for k, v in os.environ.items() if k != "CA_TRUST_AGENT_FAILPOINT"}
        if failpoint is not None:
            env["CA_TRUST_AGENT_FAILPOINT"] = failpoint
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False, env=env, cwd=REPO
        )

    def trusted(self) -> bool:
        """Whether what Go reads (ca-bundle.crt, the package link) holds our anchor."""
        return self.anchor.sha256 in bundle_digests(CA_BUNDLE_LINK.read_bytes())

    def restarts(self) -> list[str]:
        log = self.bin / "restart.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> pki.PKI:
    return pki.make_pki(
        tmp_path_factory.mktemp("pki"), names=("registry.test",), ips=("127.0.0.1",)
    )


@pytest.fixture
def node(sandbox: Sandbox, lab_ca: pki.PKI, tmp_path: Path) -> Iterator[RhelNode]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    restart = bin_dir / "restart-runtime"
    restart.write_text(f'#!/bin/sh\necho "restart $*" >> "{bin_dir}/restart.log"\n')
    restart.chmod(0o755)
    # The readiness probe after the "restart" needs an answering socket: the session's
    # real containerd when the e2e tests run in this process, a stand-in otherwise.
    fake = None if SOCKET.exists() else FakeRuntimeSocket(SOCKET)
    assert lab_ca.intermediate is not None
    try:
        with (
            rhel_trust(tmp_path / "rhel", style="el") as store,
            TLSServer(lab_ca.chain, lab_ca.leaf) as server,
        ):
            yield RhelNode(store, server, lab_ca.intermediate, bin_dir)
            if any(e.startswith("127.0.0.1:") for e in Ledger(HostFS("/")).entries()):
                RhelNode(store, server, lab_ca.intermediate, bin_dir).run("remove")
    finally:
        if fake is not None:
            fake.close()
            SOCKET.unlink(missing_ok=True)


def check_anchors_after_the_kill(node: RhelNode) -> None:
    """In anchors/: our complete file or nothing, plus the staging dir; never a temp file."""
    for entry in sorted(ANCHORS.iterdir()):
        if entry.name == STAGING_DIR:
            assert all(p.name.startswith(TMP_PREFIX) for p in entry.iterdir())
            continue
        assert not entry.name.startswith(TMP_PREFIX), f"{entry.name} would be trusted"
        assert entry.name == node.our_name, f"unexpected {entry}"
        assert entry.read_bytes() == node.anchor.pem


def check_the_next_extract_trusts_exactly_what_is_complete(node: RhelNode) -> None:
    node.store.extract()
    assert node.trusted() == (ANCHORS / node.our_name).exists()


def check_the_ledger_names_our_file(node: RhelNode) -> None:
    entries = Ledger(HostFS("/")).entries()
    named = {f for e in entries.values() for f in e.files}
    if (ANCHORS / node.our_name).exists():
        assert str(ANCHORS / node.our_name) in named


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_install_killed_at_any_step_converges_on_the_real_extractor(
    node: RhelNode, failpoint: str
) -> None:
    killed = node.run("install", failpoint)
    dies = expected_to_die("system", "install", failpoint)
    assert killed.returncode == (-9 if dies else 0), killed.stdout + killed.stderr
    check_anchors_after_the_kill(node)
    check_the_ledger_names_our_file(node)
    check_the_next_extract_trusts_exactly_what_is_complete(node)

    again = node.run("install")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["status"] in ("installed", "unchanged")
    # the next install sweeps what the killed write left: no staging dir, no temp file
    assert sorted(p.name for p in ANCHORS.iterdir()) == [node.our_name]
    assert node.trusted()
    assert node.restarts()[-1] == "restart containerd"


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_remove_killed_at_any_step_converges_on_the_real_extractor(
    node: RhelNode, failpoint: str
) -> None:
    installed = node.run("install")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert node.trusted()

    killed = node.run("remove", failpoint)
    dies = expected_to_die("system", "remove", failpoint)
    assert killed.returncode == (-9 if dies else 0), killed.stdout + killed.stderr
    check_anchors_after_the_kill(node)
    check_the_ledger_names_our_file(node)
    check_the_next_extract_trusts_exactly_what_is_complete(node)

    again = node.run("remove")
    assert again.returncode == 0, again.stdout + again.stderr
    assert list(ANCHORS.iterdir()) == []  # staging dir and stale temp files gone too
    assert Ledger(HostFS("/")).entries() == {}
    assert not node.trusted()
    assert node.restarts()[-1] == "restart containerd"
