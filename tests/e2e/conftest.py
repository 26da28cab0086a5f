"""Real daemons for end-to-end tests: registry, containerd, dockerd, inside the sandbox.

These tests play node: they write /etc/containerd/certs.d, /etc/docker/certs.d, run the
real update-ca-certificates and resolve lab names through /etc/hosts. They therefore only
run as root in a private mount namespace, where lab.isolation.sandbox makes all of those paths
private; anywhere else every test here is skipped with the command that runs them:

    unshare --mount --propagation private -- .venv/bin/pytest tests/e2e tests/integration

The fixtures are session-scoped (a daemon starts once per run) and importable from other
test directories (`from tests.e2e.conftest import lab_registry, sandbox, ...`). Tests
that change daemon state leave it as they found it (trust removed, image removed).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.isolation.netns import NetnsHost, free_slash30, netns_host
from lab.isolation.sandbox import (
    HOW_TO_RUN,
    Sandbox,
    in_private_mount_namespace,
    isolate_node_paths,
)
from lab.procs import become_subreaper, free_port
from lab.registry.distribution import Registry, run_registry
from lab.registry.push import push_tiny_image
from lab.runtimes.containerd import Containerd, node_layout, run_containerd
from lab.runtimes.cri import PullResult
from lab.runtimes.dockerd import Dockerd, run_dockerd
from lab.runtimes.dockerd import layout as dockerd_layout
from lab.runtimes.imagebuild import (
    Built,
    build_image,
    docker,
    import_standin,
    layers,
    standin_rootfs,
)
from lab.tls.pki import PKI, make_pki

REPO = Path(__file__).resolve().parents[2]
REGISTRY_NAME = "registry.test"  # -> 127.0.0.1 in the sandbox's /etc/hosts
NETNS_REGISTRY_NAME = "registry-ns.test"  # -> the netns address (dockerd: not loopback)
NETNS_REGISTRY_PORT = 5443


def require_sandbox() -> None:
    """Skip (never touch the real paths) unless root in a private mount namespace."""
    if os.geteuid() != 0:
        pytest.skip(f"not root: {HOW_TO_RUN}")
    if not in_private_mount_namespace():
        pytest.skip(f"not in a private mount namespace: {HOW_TO_RUN}")


def timing(what: str, seconds: float) -> None:
    """Print a lab timing (visible with -s); never asserted."""
    print(f"[lab timing] {what}: {seconds:.3f}s")


@dataclass(frozen=True)
class LabRegistry:
    """A TLS registry holding lab/tiny:v1, signed by the lab's private CA."""

    host: str
    port: int
    image: str  # host:port/lab/tiny:v1
    pki: PKI
    registry: Registry

    @property
    def target(self) -> str:
        """host:port, as the agent's CLI takes it."""
        return f"{self.host}:{self.port}"

    @property
    def safe_key(self) -> str:
        """`safe(HostPort.key)`: the suffix of the agent's file names."""
        return f"{self.host}_{self.port}"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    require_sandbox()
    become_subreaper()  # daemons restarted by the lab restart command get reaped by us
    base = tmp_path_factory.mktemp("sandbox")
    with isolate_node_paths(base, {REGISTRY_NAME: "127.0.0.1"}) as box:
        yield box


@pytest.fixture(scope="session")
def lab_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(
        tmp_path_factory.mktemp("pki"),
        names=(REGISTRY_NAME, NETNS_REGISTRY_NAME),
        ips=("127.0.0.1",),
    )


def _registry(
    workdir: Path,
    lab_pki: PKI,
    *,
    name: str,
    address: str,
    port: int,
    netns: str | None = None,
) -> Iterator[LabRegistry]:
    with run_registry(
        workdir,
        chain=lab_pki.paths.chain,
        key=lab_pki.paths.key,
        address=address,
        port=port,
        netns=netns,
    ) as reg:
        timing(f"registry start ({name})", reg.daemon.started_in)
        began = time.monotonic()
        pushed = push_tiny_image(name, port, lab_pki.paths.root, connect_to=address)
        timing("image push", time.monotonic() - began)
        yield LabRegistry(name, port, pushed.reference, lab_pki, reg)


@pytest.fixture(scope="session")
def lab_registry(
    sandbox: Sandbox, lab_pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabRegistry]:
    """registry.test:<free port> on 127.0.0.1, presenting leaf + intermediate."""
    yield from _registry(
        tmp_path_factory.mktemp("registry"),
        lab_pki,
        name=REGISTRY_NAME,
        address="127.0.0.1",
        port=free_port(),
    )


@pytest.fixture(scope="session")
def lab_netns(sandbox: Sandbox) -> Iterator[NetnsHost]:
    host_ip, ns_ip = free_slash30()
    with netns_host(host_ip, ns_ip) as ns:
        sandbox.add_host(NETNS_REGISTRY_NAME, ns.ns_ip)
        yield ns


@pytest.fixture(scope="session")
def netns_registry(
    lab_netns: NetnsHost, lab_pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabRegistry]:
    """registry-ns.test:5443 inside a network namespace (dockerd sees a non-loopback host)."""
    yield from _registry(
        tmp_path_factory.mktemp("registry-ns"),
        lab_pki,
        name=NETNS_REGISTRY_NAME,
        address=lab_netns.ns_ip,
        port=NETNS_REGISTRY_PORT,
        netns=lab_netns.name,
    )


@pytest.fixture(scope="session")
def node_containerd(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd]:
    """containerd laid out like a node's: /etc/containerd/config.toml, certs.d, /run socket."""
    began = time.monotonic()
    with run_containerd(node_layout(tmp_path_factory.mktemp("containerd"))) as daemon:
        timing("containerd start to CRI ready", time.monotonic() - began)
        yield daemon


@pytest.fixture(scope="session")
def lab_dockerd(
    sandbox: Sandbox, lab_netns: NetnsHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dockerd]:
    """dockerd reading the sandbox's private /etc/docker/certs.d.

    Started after the netns name is in /etc/hosts: Go caches the hosts file for 5 s after
    a daemon's first lookup, and a name added later would not resolve in the meantime.
    """
    began = time.monotonic()
    with run_dockerd(dockerd_layout(tmp_path_factory.mktemp("dockerd"))) as daemon:
        timing("dockerd start", time.monotonic() - began)
        yield daemon


def cri_pull(daemon: Containerd, image: str) -> PullResult:
    """A kubelet-style pull that leaves no image behind (the next pull hits the registry)."""
    with daemon.cri() as cri:
        began = time.monotonic()
        result = cri.pull(image)
        timing(f"CRI pull ({'ok' if result.ok else 'refused'})", time.monotonic() - began)
        if result.ok:
            cri.remove(image)
    return result


@dataclass(frozen=True)
class CliResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)

    def explain(self) -> str:
        return f"$ {shlex.join(self.argv)}\nexit {self.returncode}\n{self.stdout}\n{self.stderr}"


def agent_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 180.0
) -> CliResult:
    """`python -m agent ARGS` from the repo, as an operator would run it on the node."""
    argv = (sys.executable, "-m", "agent", *args)
    result = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(argv, result.returncode, result.stdout, result.stderr)


# The DaemonSet's securityContext and volumes, minus hostPID (no host PID namespace here:
# `nsenter -t 1` would reach this machine's init). `privileged: true` as far as this VM
# allows: its bounding set lacks CAP_SYS_RESOURCE, and `docker run --privileged` asks runc
# for every capability ("unable to apply caps: operation not permitted"), ignoring
# --cap-drop. So: every capability but that one, no seccomp or AppArmor profile, /proc and
# /sys unmasked -- what privileged means otherwise.
PRIVILEGED = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
)
DAEMONSET = ("--read-only", "--tmpfs", "/tmp", *PRIVILEGED, "--network", "host")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN = "image-test-token"  # noqa: S105 (a fake API server's bearer token)
AGENT_NS = "ca-trust-agent"


@dataclass(frozen=True)
class AgentImage:
    """The image built from the repo's Dockerfile, in the dockerd that built it."""

    daemon: Dockerd
    built: Built

    def run(self, *args: str, opts: tuple[str, ...] = (), timeout: float = 120.0) -> Any:
        return docker(self.daemon, "run", "--rm", *DAEMONSET, *opts, self.built.tag, *args,
                      timeout=timeout)


@pytest.fixture(scope="session")
def agent_image(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentImage]:
    """One build per session, shared by every module that runs the image.

    A dockerd of its own (own data root and socket) builds the Dockerfile with BuildKit on
    the lab's stand-in of `python:3.11-slim-bookworm` (lab.runtimes.imagebuild)."""
    with run_dockerd(dockerd_layout(tmp_path_factory.mktemp("image-dockerd"))) as daemon:
        base = import_standin(daemon, standin_rootfs())
        built = build_image(daemon, base)
        timing("docker build", built.seconds)
        for layer in layers(daemon, built.tag):
            print(f"[image layer] {layer.size:>11} {layer.created_by[:110]}")
        yield AgentImage(daemon, built)


@dataclass(frozen=True)
class InCluster:
    """The files and variables a pod's ServiceAccount gives it, for the fake API."""

    secrets: Path  # mount it at SA_DIR
    env: tuple[str, ...]  # NAME=value, as the DaemonSet's env and the kubelet set them


def in_cluster(tmp_path: Path, api_port: int, ca_file: Path, node_name: str) -> InCluster:
    """KUBERNETES_SERVICE_HOST/PORT on loopback (no kube-proxy: host network reaches the API
    server directly), the token/ca.crt/namespace files, and the downward-API variables."""
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    (secrets / "token").write_text(SA_TOKEN)
    (secrets / "ca.crt").write_bytes(ca_file.read_bytes())
    (secrets / "namespace").write_text(AGENT_NS)
    env = ("KUBERNETES_SERVICE_HOST=127.0.0.1", f"KUBERNETES_SERVICE_PORT={api_port}",
           f"NODE_NAME={node_name}", f"POD_NAMESPACE={AGENT_NS}")
    return InCluster(secrets, env)
