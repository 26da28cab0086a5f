"""The package as a user installs it: a fresh venv, `pip install` of the project, no extras.

Every other test imports the agent from the checkout, in a venv that also holds the test
extras, so a module the product imports but does not declare is there all the same. That is
how issue 17 shipped: grpc came only with the `lab` extra, and `install --image` crashed on
every plain install and in the image. Here the product runs from a venv of its own, made
once per run (module fixture) from a copy of what the package build reads (pyproject.toml,
README.md, agent/), installed non-editable (a wheel built by pip) with the machine's pip
configuration only. Every command
then runs that venv's `ca-trust-agent` console script (or its python with -I) from a
directory outside the repo, with nothing but PATH in its environment: neither the checkout
nor the test venv can leak in.

The install is judged by a real containerd, 1.6.20 (Debian 12) and 2.1.9: it runs in a
mount namespace of its own whose /etc/containerd and /run/containerd are directories of the
test's host root, so the agent, given `--host-root`, reads the same config.toml, writes into
the same certs.d and reaches the same CRI socket as the daemon. The registry sits on a
network-namespace address (2.x never verifies TLS for loopback registries).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.fakes.hostroot import node_root
from lab.isolation.nodens import HostRoot
from lab.procs import CLEAN_PATH
from lab.runtimes.containerd2 import CERTS_D, VERSION, Containerd2, available
from lab.runtimes.cri import PullResult
from tests.e2e.conftest import REPO, CliResult, LabRegistry, timing

pytestmark = [pytest.mark.e2e, pytest.mark.root]

X509 = "x509: certificate signed by unknown authority"
CHECKER = REPO / "lab" / "importcheck.py"
# What `pip install` of the project reads: pyproject's package list is agent* only.
SHIPPED = ("pyproject.toml", "README.md", "agent")
V1_TABLE = '[plugins."io.containerd.grpc.v1.cri".registry]'
V2_TABLE = "[plugins.'io.containerd.cri.v1.images'.registry]"


@dataclass(frozen=True)
class PlainInstall:
    venv: Path
    package: Path  # site-packages/agent of the venv
    cwd: Path  # outside the repo

    def run(self, *argv: str, timeout: float = 180.0) -> CliResult:
        done = subprocess.run(
            argv, cwd=self.cwd, env={"PATH": CLEAN_PATH}, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        return CliResult(argv, done.returncode, done.stdout, done.stderr)

    def python(self, *args: str) -> CliResult:
        return self.run(str(self.venv / "bin/python"), "-I", *args)

    def cli(self, *args: str) -> CliResult:
        return self.run(str(self.venv / "bin/ca-trust-agent"), *args)


def pip_env() -> dict[str, str]:
    """pip with the machine's pip configuration (index, certificate), and nothing else."""
    env = {"PATH": CLEAN_PATH, "HOME": os.environ.get("HOME", "/root")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    return env


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> PlainInstall:
    work = tmp_path_factory.mktemp("plain-install")
    source = work / "source"
    source.mkdir()
    for name in SHIPPED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    venv = work / "venv"
    began = time.monotonic()
    # The interpreter the dev venv was made from (`-m venv` in a venv uses its base python).
    # As the Dockerfile does: no pip in the venv, the test venv's pip installs into it
    # (`--python`), compiling no bytecode up front (an import compiles what it loads). 31 s
    # against 103 s with ensurepip and pip's compile step (measured here on a quiet machine);
    # nothing about what is importable changes.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   env={"PATH": CLEAN_PATH}, check=True, capture_output=True)
    pip = subprocess.run(
        [sys.executable, "-I", "-m", "pip", "--python", str(venv / "bin/python"), "install",
         "--no-input", "--no-compile", str(source)],
        cwd=work, env=pip_env(), capture_output=True, text=True, timeout=600, check=False,
    )
    timing("plain venv + pip install (no extras)", time.monotonic() - began)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    found = PlainInstall(venv, Path(), work)
    where = found.python("-c", "import agent, os; print(os.path.dirname(agent.__file__))")
    assert where.returncode == 0, where.explain()
    return PlainInstall(venv, Path(where.stdout.strip()), work)


def test_the_plain_venv_holds_the_installed_product_and_no_test_extra(
    plain: PlainInstall,
) -> None:
    assert plain.package.is_relative_to(plain.venv)
    probe = ("import importlib.util as u, json; print(json.dumps("
             "[n for n in ('grpc_tools', 'pytest', 'hypothesis', 'lab', 'tests')"
             " if u.find_spec(n)]))")
    extras = plain.python("-c", probe)
    assert extras.returncode == 0, extras.explain()
    assert json.loads(extras.stdout) == []
    version = plain.cli("--version")
    assert (version.returncode, version.stdout.strip()) == (0, "ca-trust-agent 0.1.0")


def test_every_module_the_agent_can_import_imports_in_the_plain_install(
    plain: PlainInstall,
) -> None:
    began = time.monotonic()
    checked = plain.python(str(CHECKER), str(plain.package), "--verbose")
    timing("import check (plain venv)", time.monotonic() - began)
    print(checked.stderr.strip())
    failures = [line for line in checked.stdout.splitlines() if not line.startswith("ok ")]
    assert (checked.returncode, failures) == (0, []), checked.explain()
    ok = set(checked.stdout.split())
    # the lazy imports are among them: the CRI client's, inside a method and a function
    assert {"grpc", "google.protobuf:descriptor_pool", "agent.node.runtimes.cri"} <= ok


@dataclass(frozen=True)
class Node:
    root: Path
    daemon: Containerd2
    registry: LabRegistry

    def pull(self) -> PullResult:
        """A kubelet-style pull through the CRI that leaves no image behind."""
        with self.daemon.cri() as cri:
            result = cri.pull(self.registry.image)
            if result.ok:
                cri.remove(self.registry.image)
        return result

    def agent(self, plain: PlainInstall, *args: str) -> dict[str, Any]:
        # registry scope and direct commands: this host root must never lead the agent to
        # system scope or into PID 1's namespaces (this machine's, not the test node's)
        result = plain.cli(*args, self.registry.target, "--host-root", str(self.root),
                           "--runner", "direct", "--json")
        assert result.returncode == 0, result.explain()
        data = result.json()
        assert isinstance(data, dict)
        return data


@pytest.fixture(scope="module", params=["1.6.20", VERSION])
def node(
    request: pytest.FixtureRequest,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    version = str(request.param)
    if version == VERSION and not available():
        pytest.fail(f"containerd {VERSION} is missing: scripts/bootstrap unpacks it")
    base = tmp_path_factory.mktemp(f"plain-node-{version}")
    root = node_root(base / "host")
    daemon = Containerd2(HostRoot(root), base / "daemon", version)
    table = V1_TABLE if version.startswith("1.") else V2_TABLE
    daemon.write_config(f'{daemon.base_config()}{table}\n  config_path = "{CERTS_D}"\n')
    daemon.start()
    try:
        yield Node(root, daemon, netns_registry)
    finally:
        daemon.stop()


def test_install_with_image_is_verified_by_the_runtime_and_remove_undoes_it(
    plain: PlainInstall, node: Node
) -> None:
    registry = node.registry
    assert X509 in (node.pull().error or "")

    began = time.monotonic()
    installed = node.agent(plain, "install", "--image", registry.image, "--scope", "registry",
                           "--timeout", "30")
    timing(f"plain install --image (containerd {node.daemon.version})", time.monotonic() - began)
    assert (installed["status"], installed["scope"]) == ("installed", "registry")
    assert (installed["verified"], installed["verification"]) == (True, "runtime")
    assert installed["verdict"]["runtime"] == "containerd"
    assert installed["verdict"]["image"] == registry.image
    assert installed["verdict"]["kind"] == "pulled"
    ours = node.daemon.certs_d / registry.target / f"ca-trust-agent-{registry.safe_key}.crt"
    assert ours.is_file()

    pulled = node.pull()
    assert pulled.ok, pulled.error

    removed = node.agent(plain, "remove")
    assert removed["status"] == "removed"
    assert not (node.daemon.certs_d / registry.target).exists()
    listed = plain.cli("list", "--json", "--host-root", str(node.root))
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
    assert X509 in (node.pull().error or "")
