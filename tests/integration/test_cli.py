"""The CLI as an operator runs it: real processes, real TLS servers, a host-root tree.

`fetch` shows a chain; `install` / `list` / `remove` change a host root exactly as the
ledger says; bad input ends with a clear message and its documented exit code.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    root: Path
    server: TLSServer
    ca: pki.PKI

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def node(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command against the host root, with containerd as the runtime."""
        return self.cli(
            *args, "--host-root", str(self.root), "--runtime", "containerd", "--runner", "direct"
        )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    root = tmp_path / "host"
    node_root(root)
    with TLSServer(ca.chain, ca.leaf) as server:
        yield Setup(root, server, ca)


def test_fetch_shows_each_certificate_and_marks_the_anchor(setup: Setup) -> None:
    out = setup.cli("fetch", setup.target)
    assert out.returncode == 0, out.stderr
    assert "2 certificates" in out.stdout
    assert "[0] leaf" in out.stdout
    assert "[1] intermediate   <== anchor" in out.stdout
    assert setup.ca.intermediate is not None
    assert setup.ca.intermediate.sha256 in out.stdout


def test_fetch_json_is_data_for_scripts(setup: Setup) -> None:
    out = setup.cli("fetch", setup.target, "--json", "--pem")
    data = json.loads(out.stdout)
    assert data["target"] == setup.target
    assert [c["role"] for c in data["certificates"]] == ["leaf", "intermediate"]
    assert data["anchor"]["index"] == 1
    assert data["certificates"][1]["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert data["trustable"] is True


def test_install_list_remove_round_trip_in_registry_scope(setup: Setup) -> None:
    installed = setup.node("install", setup.target, "--scope", "registry", "--json")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    result = json.loads(installed.stdout)
    assert result["status"] == "installed" and result["verified"] is True
    ours = setup.root / f"etc/containerd/certs.d/{setup.target}"
    assert [p.name for p in ours.iterdir()] == [f"ca-trust-agent-127.0.0.1_{setup.server.port}.crt"]

    listed = json.loads(setup.cli("list", "--json", "--host-root", str(setup.root)).stdout)
    assert [e["endpoint"] for e in listed] == [setup.target]
    assert listed[0]["state"] == "installed"

    again = json.loads(setup.node("install", setup.target, "--scope", "registry", "--json").stdout)
    assert again["status"] == "unchanged"

    removed = setup.node("remove", setup.target, "--json")
    assert removed.returncode == 0
    assert json.loads(removed.stdout)["status"] == "removed"
    assert not ours.exists()
    assert json.loads(setup.cli("list", "--json", "--host-root", str(setup.root)).stdout) == []


def test_dry_run_prints_the_plan_and_writes_nothing(setup: Setup) -> None:
    out = setup.node("install", setup.target, "--scope", "registry", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "Plan:" in out.stdout and "write /etc/containerd/certs.d/" in out.stdout
    assert not (setup.root / "etc/containerd/certs.d").exists()
    assert not (setup.root / "var/lib/ca-trust-agent").exists()


def test_a_pin_that_does_not_match_is_refused_with_exit_4(setup: Setup) -> None:
    out = setup.node("install", setup.target, "--pin", "sha256:" + "00" * 32)
    assert out.returncode == 4
    assert "pin" in out.stderr
    assert not (setup.root / "etc/containerd/certs.d").exists()


def test_a_bad_host_name_is_exit_2_and_never_becomes_a_path(setup: Setup) -> None:
    out = setup.node("install", "../../etc:443")
    assert out.returncode == 2
    assert "host" in out.stderr
    assert not (setup.root / "var").exists()


def test_an_unreachable_registry_is_exit_3(setup: Setup) -> None:
    setup.server.stop()
    out = setup.cli("fetch", setup.target, "--timeout", "2")
    assert out.returncode == 3
    assert "ca-trust-agent:" in out.stderr


def test_a_host_name_the_certificate_does_not_cover_is_exit_4(tmp_path: Path) -> None:
    ca = pki.make_pki(tmp_path / "other", names=("other.test",))
    with TLSServer(ca.chain, ca.leaf) as server:
        out = subprocess.run(
            [sys.executable, "-m", "agent", "fetch", f"127.0.0.1:{server.port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 4
    assert "Would NOT trust" in out.stdout


def test_install_with_a_ca_file_trusts_that_ca_after_verifying_the_leaf(setup: Setup) -> None:
    out = setup.node(
        "install",
        setup.target,
        "--scope",
        "registry",
        "--ca-file",
        str(setup.ca.paths.root),
        "--json",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["anchor"]["sha256"] == setup.ca.root.sha256


def test_help_lists_the_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, check=False
    )
    assert "exit codes:" in out.stdout and "rolled back" in out.stdout


def test_a_verification_that_breaks_is_exit_7_in_one_line_and_leaves_nothing(
    setup: Setup,
) -> None:
    """The shipped failure, reproduced: the CRI client's grpc cannot be imported. The CA
    that was written is taken out again, the ledger holds nothing, and the operator reads
    one line naming what broke instead of a traceback."""
    sock = setup.root / "run/containerd/containerd.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as s:  # a runtime socket: the runtime will be asked
        s.bind(str(sock))
    no_grpc = "import sys; sys.modules['grpc'] = None; from agent.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", no_grpc, "install", setup.target, "--scope", "registry",
         "--image", f"{setup.target}/lab/tiny:v1", "--host-root", str(setup.root),
         "--runtime", "containerd", "--runner", "direct"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ca-trust-agent: "), proc.stderr
    assert "grpc" in lines[0] and "rolled back" in lines[0]
    assert not (setup.root / f"etc/containerd/certs.d/{setup.target}").exists() or not any(
        (setup.root / f"etc/containerd/certs.d/{setup.target}").iterdir()
    )
    assert json.loads(setup.cli("list", "--json", "--host-root", str(setup.root)).stdout) == []
