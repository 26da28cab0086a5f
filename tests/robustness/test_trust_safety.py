"""One test per threat: the agent trusts nothing it should not, writes nothing, and says why.

CLI threats run the real `install` / `remove` as a process against a host-root tree and a
real TLS server presenting the hostile chain; each must end with its documented exit code,
the error `kind` in `--json` output, and a host root identical, byte for byte, to before.
Cluster threats drive agent.cluster.controller.Controller (pods and policy in, Events out) on a real
engine over a host-root tree, as tests/unit/cluster/test_controller.py does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.cluster.controller import Controller
from agent.core.errors import AgentError
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo, cert_from_der
from agent.node.engine import Engine
from agent.node.host import HostFS
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

CERTS_D = "etc/containerd/certs.d"


def snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every path under `root` with its kind and content (link target for links)."""
    found: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path).encode())
            elif os.path.isdir(path):
                found[rel] = ("dir", b"")
            else:
                found[rel] = ("file", Path(path).read_bytes())
    return found


@dataclass
class Node:
    base: Path
    root: Path

    def install(
        self, server: TLSServer, *extra: str, scope: str = "registry"
    ) -> tuple[int, dict[str, Any]]:
        target = f"127.0.0.1:{server.port}"
        return self.cli("install", target, "--scope", scope, "--timeout", "5", *extra)

    def cli(self, *args: str) -> tuple[int, dict[str, Any]]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                *args,
                "--host-root",
                str(self.root),
                "--runtime",
                "containerd",
                "--runner",
                "direct",
                "--restart",
                "never",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}

    def refused(
        self, server: TLSServer, exit_code: int, kind: str, *extra: str, scope: str = "registry"
    ) -> dict[str, Any]:
        """Install must fail with exactly this exit code and kind and change nothing."""
        before = snapshot(self.base)
        code, out = self.install(server, *extra, scope=scope)
        assert code == exit_code, out
        assert out["error"]["kind"] == kind, out
        assert out["error"]["message"]
        assert snapshot(self.base) == before, "a refused install changed the host root"
        error: dict[str, Any] = out["error"]
        return error

    def store_dir(self, server: TLSServer) -> Path:
        return self.root / CERTS_D / f"127.0.0.1:{server.port}"

    def our_name(self, server: TLSServer) -> str:
        return f"ca-trust-agent-127.0.0.1_{server.port}.crt"


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "host"
    node_root(root)
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/victim.crt").write_text("the node's own file\n")
    return Node(tmp_path, root)


@pytest.fixture
def good(tmp_path: Path) -> Iterator[TLSServer]:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    with TLSServer(ca.chain, ca.leaf) as server:
        yield server


def serve(tmp_path: Path, **kwargs: Any) -> TLSServer:
    ca = pki.make_pki(tmp_path / "bad-pki", **{"ips": ("127.0.0.1",), **kwargs})
    return TLSServer(ca.chain, ca.leaf).start()


# --- the chain itself ---------------------------------------------------------------------


def test_a_pin_mismatch_trusts_nothing(node: Node, good: TLSServer) -> None:
    error = node.refused(good, 4, "pin-mismatch", "--pin", "sha256:" + "AB" * 32)
    assert "sha256:" + "AB" * 32 in error["message"]


def test_a_certificate_for_another_host_name_trusts_nothing(node: Node, tmp_path: Path) -> None:
    server = serve(tmp_path, names=("other.test",), ips=())
    try:
        node.refused(server, 4, "hostname-mismatch")
    finally:
        server.stop()


def test_a_lone_leaf_that_is_not_self_signed_trusts_nothing(node: Node, tmp_path: Path) -> None:
    """Trusting it would pin one server certificate, not a CA."""
    ca = pki.make_pki(tmp_path / "leaf-only", names=("registry.test",), ips=("127.0.0.1",))
    with TLSServer([ca.leaf.cert], ca.leaf) as server:
        node.refused(server, 4, "leaf-not-self-signed")


def test_an_expired_anchor_trusts_nothing(node: Node, tmp_path: Path) -> None:
    server = serve(tmp_path, intermediate_window=pki.expired())
    try:
        node.refused(server, 4, "expired")
    finally:
        server.stop()


def test_a_not_yet_valid_anchor_trusts_nothing(node: Node, tmp_path: Path) -> None:
    server = serve(tmp_path, intermediate_window=pki.not_yet_valid())
    try:
        node.refused(server, 4, "not-yet-valid")
    finally:
        server.stop()


def test_an_intermediate_without_ca_true_trusts_nothing(node: Node, tmp_path: Path) -> None:
    server = serve(tmp_path, intermediate_is_ca=False)
    try:
        node.refused(server, 4, "not-a-ca")
    finally:
        server.stop()


# --- the node's file system ---------------------------------------------------------------


def test_a_symlink_planted_at_our_file_is_not_written_through(node: Node, good: TLSServer) -> None:
    node.store_dir(good).mkdir(parents=True)
    (node.store_dir(good) / node.our_name(good)).symlink_to(node.base / "outside/victim.crt")
    node.refused(good, 6, "symlink")
    assert (node.base / "outside/victim.crt").read_text() == "the node's own file\n"


def test_a_symlink_planted_at_the_registry_directory_is_not_written_through(
    node: Node, good: TLSServer
) -> None:
    (node.root / CERTS_D).mkdir(parents=True)
    node.store_dir(good).symlink_to(node.base / "outside")
    node.refused(good, 6, "symlink")
    assert sorted(p.name for p in (node.base / "outside").iterdir()) == ["victim.crt"]


def test_a_symlink_planted_at_a_parent_directory_is_not_written_through(
    node: Node, good: TLSServer
) -> None:
    (node.root / CERTS_D).symlink_to(node.base / "outside")
    node.refused(good, 6, "symlink")
    assert sorted(p.name for p in (node.base / "outside").iterdir()) == ["victim.crt"]


def test_a_symlink_planted_at_the_system_anchor_directory_is_not_written_through(
    node: Node, good: TLSServer
) -> None:
    anchors = node.root / "usr/local/share/ca-certificates"
    anchors.rmdir()
    anchors.symlink_to(node.base / "outside")
    node.refused(good, 6, "symlink", scope="system")
    assert sorted(p.name for p in (node.base / "outside").iterdir()) == ["victim.crt"]


def test_a_symlink_swapped_in_for_our_file_is_not_followed_by_remove(
    node: Node, good: TLSServer
) -> None:
    """Between install and remove, our file becomes a link to a file of the node."""
    code, out = node.install(good)
    assert code == 0, out
    ours = node.store_dir(good) / node.our_name(good)
    ours.unlink()
    ours.symlink_to(node.base / "outside/victim.crt")
    code, out = node.cli("remove", f"127.0.0.1:{good.port}")
    assert code == 6 and out["error"]["kind"] == "symlink", out
    assert (node.base / "outside/victim.crt").read_text() == "the node's own file\n"
    assert ours.is_symlink()


def test_a_foreign_hosts_toml_is_a_conflict_not_a_silent_no_op(node: Node, good: TLSServer) -> None:
    """containerd ignores *.crt in a host dir that has hosts.toml: our CA would do nothing."""
    node.store_dir(good).mkdir(parents=True)
    (node.store_dir(good) / "hosts.toml").write_text('server = "https://mirror.test"\n')
    error = node.refused(good, 6, "conflict")
    assert "hosts.toml" in error["message"]


def test_a_foreign_file_with_our_name_is_not_overwritten(node: Node, good: TLSServer) -> None:
    node.store_dir(good).mkdir(parents=True)
    (node.store_dir(good) / node.our_name(good)).write_text("someone else's CA\n")
    node.refused(good, 6, "conflict")


# --- the cluster: policy decides ----------------------------------------------------------

NODE = "node-a"
IMAGE = "registry.test:5443/lab/tiny:v1"


def pull_error(failing_url: str) -> str:
    return (
        f'failed to pull and unpack image "{IMAGE}": failed to resolve reference "{IMAGE}": '
        f'failed to do request: Head "{failing_url}": '
        "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    )


@dataclass
class Recorder:
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def node(self, node_name: str, type: str, reason: str, message: str) -> None:
        self.events.append(("Node", reason, message))

    def pod(
        self, namespace: str, name: str, uid: str, type: str, reason: str, message: str
    ) -> None:
        self.events.append(("Pod", reason, message))

    def reasons(self) -> list[str]:
        return [reason for kind, reason, _ in self.events if kind == "Node"]

    def message(self, reason: str) -> str:
        return next(m for _, r, m in self.events if r == reason)


@dataclass
class Cluster:
    annotations: list[list[str]] = field(default_factory=list)

    def pod_events(self, namespace: str, uid: str) -> list[Mapping[str, Any]]:
        return []

    def set_trusted_registries(self, node_name: str, keys: Sequence[str]) -> None:
        self.annotations.append(list(keys))


class Manager:
    def check_restart_allowed(self, runtime: str, **_: object) -> None:
        pass

    def restart(self, runtime: str, **_: object) -> float:
        raise AssertionError("registry scope never restarts a runtime")


class NoRunner:
    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> Any:
        raise AssertionError(f"no command expected, got {argv}")


@dataclass
class World:
    root: Path
    controller: Controller
    recorder: Recorder
    fetches: list[HostPort]

    def opt_in_with_policy(self, text: str) -> None:
        self.controller.on_node(
            {
                "metadata": {
                    "name": NODE,
                    "annotations": {"ca-trust-agent.io/remediate": "enabled"},
                },
                "status": {"nodeInfo": {"containerRuntimeVersion": "containerd://1.6.20"}},
            }
        )
        self.set_policy(text)

    def set_policy(self, text: str) -> None:
        self.controller.on_policy(
            {"metadata": {"name": "ca-trust-agent"}, "data": {"policy.yaml": text}}
        )
        self.controller.drain()

    def failing_pod(self, failing_url: str) -> None:
        self.controller.on_pod(
            {
                "metadata": {"namespace": "shop", "name": "web-1", "uid": "uid-web-1"},
                "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": IMAGE}]},
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": "app",
                            "image": IMAGE,
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "waiting": {
                                    "reason": "ErrImagePull",
                                    "message": pull_error(failing_url),
                                }
                            },
                        }
                    ],
                },
            }
        )
        self.controller.drain()


@pytest.fixture
def world(tmp_path: Path) -> World:
    root = tmp_path / "host"
    node_root(root)
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test", "auth.corp.test", "cdn.corp.test"))
    chain = tuple(cert_from_der(c.public_bytes(Encoding.DER)) for c in ca.chain)
    fetches: list[HostPort] = []

    def fetch(target: HostPort) -> tuple[CertInfo, ...]:
        fetches.append(target)
        return chain

    engine = Engine(
        HostFS(str(root)),
        NoRunner(),
        runtimes=("containerd",),
        manager=Manager(),  # type: ignore[arg-type]
        fetch=fetch,
        verify=lambda target, cafile: None,
    )
    recorder = Recorder()
    controller = Controller(node_name=NODE, engine=engine, recorder=recorder, cluster=Cluster())
    return World(root, controller, recorder, fetches)


ALLOW_REGISTRY = 'registries:\n  - host: "registry.test:5443"\n'


def test_a_registry_missing_from_the_policy_is_not_allowed_and_nothing_is_written(
    world: World,
) -> None:
    world.opt_in_with_policy('registries:\n  - host: "other.test"\n')
    before = snapshot(world.root)
    world.failing_pod("https://registry.test:5443/v2/lab/tiny/manifests/v1")
    assert world.recorder.reasons() == ["RegistryNotAllowed"]
    assert "registry.test:5443" in world.recorder.message("RegistryNotAllowed")
    assert world.fetches == []
    assert snapshot(world.root) == before


def test_an_auth_host_the_policy_does_not_allow_is_refused_even_for_an_allowed_registry(
    world: World,
) -> None:
    """The failing TLS host is a token server: allowing the registry does not allow it."""
    world.opt_in_with_policy(ALLOW_REGISTRY)
    before = snapshot(world.root)
    world.failing_pod("https://auth.corp.test/token?scope=repository:lab/tiny:pull")
    assert world.recorder.reasons() == ["RegistryNotAllowed"]
    assert "auth.corp.test" in world.recorder.message("RegistryNotAllowed")
    assert world.fetches == []
    assert snapshot(world.root) == before


def test_an_allowed_cdn_host_for_a_registry_the_policy_does_not_allow_is_refused(
    world: World,
) -> None:
    world.opt_in_with_policy('registries:\n  - host: "cdn.corp.test"\n')
    before = snapshot(world.root)
    world.failing_pod("https://cdn.corp.test/blobs/sha256:0123")
    assert world.recorder.reasons() == ["RegistryNotAllowed"]
    assert "registry.test:5443" in world.recorder.message("RegistryNotAllowed")
    assert world.fetches == []
    assert snapshot(world.root) == before


def test_a_ca_removed_from_the_policy_disappears_from_the_node(world: World) -> None:
    world.opt_in_with_policy(ALLOW_REGISTRY)
    world.failing_pod("https://registry.test:5443/v2/lab/tiny/manifests/v1")
    assert "CATrusted" in world.recorder.reasons()
    ours = world.root / CERTS_D / "registry.test:5443/ca-trust-agent-registry.test_5443.crt"
    assert ours.exists()
    x509.load_pem_x509_certificate(ours.read_bytes())

    world.set_policy("registries: []\n")
    assert "CARemoved" in world.recorder.reasons()
    assert not ours.exists()
    assert not (world.root / CERTS_D).exists()
    assert world.controller.engine.entries() == {}


# --- names and the ledger: what the engine may overwrite or delete -------------------------


class RecordingRunner:
    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> Any:
        from agent.node.host import CommandResult
        from lab.fakes.doubles import rebuild_debian_bundle

        rebuild_debian_bundle(self.root)  # the engine reads the bundle back
        return CommandResult(tuple(argv), 0, "", "", 0.0, False)


def system_engine(root: Path) -> Engine:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
    return Engine(HostFS(str(root)), RecordingRunner(root), runtimes=("containerd",))


def test_an_endpoint_whose_file_name_collides_never_replaces_another_endpoints_ca(
    tmp_path: Path,
) -> None:
    engine = system_engine(tmp_path / "host")
    first, second = pki.make_pki(tmp_path / "a"), pki.make_pki(tmp_path / "b")

    def install(host: str, ca: pki.PKI) -> None:
        from agent.core.hostport import parse_hostport
        from agent.node.engine import InstallRequest

        req = InstallRequest(
            endpoint=parse_hostport(host),
            scope="system",
            restart="never",
            ca_pem=ca.root.pem,
            source="policy",
        )
        with contextlib.suppress(AgentError):  # refusing the second one is correct too
            engine.install(req)

    install("[::1]", first)
    install("___1_", second)
    entries = engine.entries()
    files = [f for e in entries.values() for f in e.files]
    assert len(files) == len(set(files)), f"two ledger entries share a file: {files}"
    ipv6_file = tmp_path / "host" / entries["[::1]:443"].files[0].lstrip("/")
    assert ipv6_file.read_bytes() == first.root.pem


def test_a_ledger_entry_naming_a_file_that_is_not_ours_never_deletes_it(tmp_path: Path) -> None:
    root = tmp_path / "host"
    engine = system_engine(root)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    entry = {
        "endpoint": "registry.test:443",
        "registry": "registry.test:443",
        "state": "removing",  # recover() converges such an entry without being asked
        "scope": "registry",
        "stores": ["containerd"],
        "files": ["/etc/shadow"],
        "dirs": [],
        "refresh": [],
        "anchor_subject": "CN=x",
        "sha256": "sha256:" + "AB" * 32,
        "not_after": "2030-01-01T00:00:00Z",
        "installed_at": "2026-01-01T00:00:00Z",
        "restarted": [],
        "source": "fetched",
    }
    ledger = root / "var/lib/ca-trust-agent/ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"version": 1, "entries": {"registry.test:443": entry}}))
    with contextlib.suppress(AgentError):
        engine.recover()
    assert (root / "etc/shadow").exists()
