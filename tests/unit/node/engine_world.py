"""The node the engine unit tests install into: a host-root tree with containerd's
config_path, Debian's trust directories, a test PKI, and stand-ins for the network, the
refresh command, runtime restarts and the runtime's own pull (recorded, or made to fail)."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.core.errors import ApplyError, RuntimeRestartError
from agent.core.hostport import HostPort, parse_hostport
from agent.core.pull_verdict import PullVerdict
from agent.core.trust import CertInfo, cert_from_der
from agent.node.engine import Engine
from agent.node.host import CommandResult, HostFS
from lab.fakes.doubles import rebuild_debian_bundle
from lab.tls import pki

REG = parse_hostport("registry.test:5443")
CERTS_D = "/etc/containerd/certs.d"
OUR_FILE = f"{CERTS_D}/registry.test:5443/ca-trust-agent-registry.test_5443.crt"
SYSTEM_FILE = "/usr/local/share/ca-certificates/ca-trust-agent-registry.test_5443.crt"

@dataclass
class Runner:
    """Records every command; commands named in `fail` exit 1."""

    fail: set[str] = field(default_factory=set)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    root: Path | None = None  # update-ca-certificates rebuilds this root's bundle

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        self.calls.append(tuple(argv))
        rc = 1 if argv[0] in self.fail else 0
        if rc == 0 and self.root is not None and argv[0] == "update-ca-certificates":
            rebuild_debian_bundle(self.root)
        return CommandResult(tuple(argv), rc, "", "boom" if rc else "", 0.01, False)


@dataclass
class Manager:
    """Stands in for RuntimeManager: records restarts, can refuse or fail them."""

    refuse: bool = False
    fail: bool = False
    restarts: list[str] = field(default_factory=list)

    def check_restart_allowed(
        self, runtime: str, *, allow_docker_without_live_restore: bool
    ) -> None:
        if self.refuse:
            raise RuntimeRestartError(f"{runtime}: live-restore is off", kind="refused")

    def restart(self, runtime: str, *, timeout: float = 60.0) -> float:
        if self.fail:
            raise RuntimeRestartError(f"{runtime} did not come back", kind="failed")
        self.restarts.append(runtime)
        return 0.1


@dataclass
class Node:
    root: Path
    fs: HostFS
    runner: Runner
    manager: Manager
    chain: tuple[CertInfo, ...]
    ca: pki.PKI
    verified: list[tuple[HostPort, str]]
    verify_fails: bool = False

    def engine(self, **kw: object) -> Engine:
        def verify(target: HostPort, cafile: str) -> None:
            self.verified.append((target, cafile))
            if self.verify_fails:
                raise ApplyError("handshake failed", kind="verify-failed")

        return Engine(
            self.fs,
            self.runner,
            runtimes=("containerd",),
            manager=self.manager,  # type: ignore[arg-type]
            fetch=lambda _t: self.chain,
            verify=verify,
            **kw,  # type: ignore[arg-type]
        )

    def files(self) -> set[str]:
        return {
            "/" + str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and "ca-trust-agent" in str(p.relative_to(self.root))
        }


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        f'  config_path = "{CERTS_D}"\n'
    )
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)
    (root / "etc/ssl/certs").mkdir(parents=True)
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",))
    chain = tuple(cert_from_der(c.public_bytes(der())) for c in ca.chain)
    return Node(root, HostFS(str(root)), Runner(root=root), Manager(), chain, ca, [])


def der():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def ledger(node: Node) -> dict[str, object]:
    data = json.loads((node.root / "var/lib/ca-trust-agent/ledger.json").read_text())
    assert isinstance(data, dict)
    return data


IMAGE = "registry.test:5443/lab/tiny:v1"


@dataclass
class Pulls:
    """Stands in for the CRI / Engine API pull: answers with the scripted verdict kinds."""

    answers: list[str]
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, runtime: str, socket: str, image: str, timeout: float) -> PullVerdict:
        self.calls.append((runtime, socket, image))
        kind = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        detail = {
            "untrusted": "failed to resolve reference: tls: failed to verify certificate: "
            "x509: certificate signed by unknown authority",
            "past-handshake": "unexpected status from HEAD request: 401 Unauthorized",
            "inconclusive": "connection refused",
            "pulled": "sha256:0123",
        }[kind]
        return PullVerdict(kind, runtime, image, detail, 0.01)


def with_runtime_socket(node: Node) -> str:
    """A containerd socket on the host root: only a runtime that answers is asked."""
    path = node.root / "run/containerd/containerd.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return str(path)
