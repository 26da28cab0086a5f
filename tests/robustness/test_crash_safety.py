"""kill -9 at every step of `install` and `remove`: the node is never left half-trusted, and
running the same command again converges.

The CLI runs as a real process against a host-root tree and a real TLS server, and dies by
SIGKILL exactly at a named step (`CA_TRUST_AGENT_FAILPOINT`, see agent/failpoints.py) — the
same as an OOM kill or `kill -9` at that instant. Both scopes are covered:

- registry scope: containerd `certs.d/<registry>/`, no command, no restart;
- system scope: the CLI runs in a private mount namespace where `/usr/local/sbin` holds a
  stand-in `update-ca-certificates` (the DirectRunner's clean PATH looks there first) that
  rebuilds `<root>/etc/ssl/certs/ca-certificates.crt` from `*.crt` like the real one; the
  runtime restart is a recording `--restart-command`, and readiness is answered by a stand-in
  containerd socket that speaks the HTTP/2 SETTINGS frame the probe waits for.

After each kill the test checks what a trust tool or runtime would read: in the store
directories only complete copies of our anchor under our name, plus at most leftover
`.ca-trust-agent-tmp-*` files, which no reader loads (containerd, docker and CRI-O load
`*.crt` from a certs.d host dir, update-ca-certificates `*.crt` from its anchor dir); the
ledger parses, names every file of ours on disk, and every file it names is ours or absent.
Then the same command again must reach the intended final state.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.node.host import HostFS
from agent.node.ledger import LEDGER_PATH, Ledger, LedgerEntry
from agent.node.runtimes import H2_PREFACE
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

ACTIONS = (
    "RecordLedger",
    "MakeDir",
    "WriteFile",
    "RemoveFile",
    "RemoveDir",
    "Refresh",
    "Verify",
    "Restart",
    "DropLedger",
)
WRITE_FAILPOINTS = ("write:temp-written", "write:renamed")
FAILPOINTS = (
    *(f"apply:{when}:{action}" for action in ACTIONS for when in ("before", "after")),
    *WRITE_FAILPOINTS,
)

# Which plan actions each command runs (tests/unit/node/test_engine.py pins the plans themselves).
# A failpoint outside this set is never reached: the run must then simply succeed.
REACHED = {
    ("registry", "install"): {"RecordLedger", "MakeDir", "WriteFile", "Verify"},
    ("registry", "remove"): {"RecordLedger", "RemoveFile", "RemoveDir", "DropLedger"},
    ("system", "install"): {"RecordLedger", "WriteFile", "Refresh", "Verify", "Restart"},
    ("system", "remove"): {"RecordLedger", "RemoveFile", "Refresh", "Restart", "DropLedger"},
}

CERTS_D = "etc/containerd/certs.d"
ANCHOR_DIR = "usr/local/share/ca-certificates"
BUNDLE = "etc/ssl/certs/ca-certificates.crt"
TMP_PREFIX = ".ca-trust-agent-tmp-"
FOREIGN = "corp-root.crt"  # the node's own anchor in the system store: never touched


def _write_failpoints_present() -> bool:
    from agent.node.host import HostFS as _HostFS

    source = inspect.getsource(_HostFS.write_atomic)
    return all(name in source for name in WRITE_FAILPOINTS)


def _cases(command: str) -> list[object]:
    return [_param(scope, command, f) for scope in ("registry", "system") for f in FAILPOINTS]


def _param(scope: str, command: str, failpoint: str) -> object:
    marks: list[pytest.MarkDecorator] = []
    if failpoint in WRITE_FAILPOINTS and not _write_failpoints_present():
        marks.append(
            pytest.mark.xfail(
                strict=True,
                reason="not there yet: HostFS.write_atomic has no write:* failpoint hits",
            )
        )
    return pytest.param(scope, failpoint, marks=marks, id=f"{scope}-{failpoint}")


def expected_to_die(scope: str, command: str, failpoint: str) -> bool:
    if failpoint in WRITE_FAILPOINTS:
        return True  # every install and remove writes the ledger first
    return failpoint.rsplit(":", 1)[1] in REACHED[(scope, command)]


class FakeRuntimeSocket:
    """A unix socket that answers the runtime-readiness probe like containerd's gRPC server."""

    SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # sun_path is ~107 bytes: bind through a directory fd, as the probe connects.
        dfd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
        try:
            self._sock.bind(f"/proc/self/fd/{dfd}/{path.name}")
        finally:
            os.close(dfd)
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = b""
                    while len(data) < len(H2_PREFACE):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(self.SETTINGS)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@dataclass
class Node:
    scope: str
    root: Path
    bin: Path
    server: TLSServer
    anchor_pem: bytes

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def our_name(self) -> str:
        return f"ca-trust-agent-127.0.0.1_{self.server.port}.crt"

    @property
    def store_dir(self) -> Path:
        if self.scope == "registry":
            return self.root / CERTS_D / self.target
        return self.root / ANCHOR_DIR

    @property
    def our_file(self) -> Path:
        return self.store_dir / self.our_name

    def run(self, command: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "agent",
            command,
            self.target,
            "--host-root",
            str(self.root),
            "--runtime",
            "containerd",
            "--runner",
            "direct",
            "--json",
        ]
        if command == "install":
            argv += ["--scope", self.scope, "--timeout", "5"]
        if self.scope == "system":
            argv += ["--restart-command", f"{self.bin}/restart-runtime {{runtime}}"]
            # A private mount namespace: our stand-in shadows /usr/local/sbin for this
            # process alone; the machine's trust store is never involved.
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                'mount --bind "$0" /usr/local/sbin && exec "$@"',
                str(self.bin),
                *argv,
            ]
        env = dict(os.environ)
        env.pop("CA_TRUST_AGENT_FAILPOINT", None)
        if failpoint is not None:
            env["CA_TRUST_AGENT_FAILPOINT"] = failpoint
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=env
        )

    def ledger(self) -> dict[str, LedgerEntry]:
        return Ledger(HostFS(str(self.root))).entries()

    def log(self, name: str) -> list[str]:
        path = self.bin / name
        return path.read_text().splitlines() if path.exists() else []


REFRESH_SCRIPT = """#!/bin/sh
# Stand-in for update-ca-certificates on the test's host root: rebuild the bundle from
# *.crt in the anchor dir (the glob the real tool uses), atomically, and record the call.
set -e
echo "update-ca-certificates $*" >> "{bin}/refresh.log"
out="{root}/{bundle}"
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
: > "$tmp"
for f in "{root}/{anchors}"/*.crt; do
  [ -e "$f" ] && cat "$f" >> "$tmp"
done
mv "$tmp" "$out"
"""

RESTART_SCRIPT = """#!/bin/sh
echo "restart $*" >> "{bin}/restart.log"
"""


def _make_node(base: Path, server_chain: pki.PKI) -> tuple[Path, Path]:
    root = base / "host"
    node_root(root)
    (root / ANCHOR_DIR).mkdir(parents=True)
    (root / ANCHOR_DIR / FOREIGN).write_bytes(server_chain.root.pem)  # any other CA will do
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("update-ca-certificates", REFRESH_SCRIPT),
        ("restart-runtime", RESTART_SCRIPT),
    ):
        path = bin_dir / name
        path.write_text(text.format(bin=bin_dir, root=root, bundle=BUNDLE, anchors=ANCHOR_DIR))
        path.chmod(0o755)
    return root, bin_dir


@pytest.fixture(scope="module")
def ca() -> Iterator[pki.PKI]:
    with tempfile.TemporaryDirectory(prefix="crash-pki-") as tmp:
        yield pki.make_pki(Path(tmp), names=("registry.test",), ips=("127.0.0.1",))


@pytest.fixture(scope="module")
def foreign_ca() -> Iterator[pki.PKI]:
    with tempfile.TemporaryDirectory(prefix="crash-foreign-") as tmp:
        yield pki.make_pki(Path(tmp), names=("corp.test",))


@pytest.fixture
def node_factory(
    tmp_path: Path, ca: pki.PKI, foreign_ca: pki.PKI
) -> Iterator[Callable[[str], Node]]:
    servers: list[TLSServer] = []
    sockets: list[FakeRuntimeSocket] = []

    def make(scope: str) -> Node:
        root, bin_dir = _make_node(tmp_path, foreign_ca)
        sockets.append(FakeRuntimeSocket(root / "run/containerd/containerd.sock"))
        server = TLSServer(ca.chain, ca.leaf).start()
        servers.append(server)
        assert ca.intermediate is not None
        return Node(scope, root, bin_dir, server, ca.intermediate.pem)

    yield make
    for server in servers:
        server.stop()
    for sock in sockets:
        sock.close()


# --- what a reader sees after the kill ----------------------------------------------------


def check_readers_see_nothing_partial(node: Node) -> list[str]:
    """No half-written trust where a runtime or trust tool reads; returns leftover temp names."""
    leftovers: list[str] = []
    if not node.store_dir.exists():
        return leftovers
    for entry in sorted(node.store_dir.iterdir()):
        if entry.name.startswith(TMP_PREFIX):
            assert not entry.name.endswith((".crt", ".pem", ".cert", ".key"))
            leftovers.append(entry.name)
        elif entry.name == FOREIGN and node.scope == "system":
            continue
        else:
            assert entry.name == node.our_name, f"unexpected {entry} after the kill"
            assert entry.read_bytes() == node.anchor_pem, f"{entry} is not our complete anchor"
    return leftovers


def check_ledger_names_what_is_ours(node: Node) -> None:
    """The ledger parses; it names every file of ours on disk; what it names is ours or gone."""
    ledger_file = node.root / LEDGER_PATH.lstrip("/")
    if ledger_file.exists():
        json.loads(ledger_file.read_bytes())
    entries = node.ledger()
    named = {f for e in entries.values() for f in e.files}
    for dirpath, _, filenames in os.walk(node.root):
        for name in filenames:
            if name.startswith("ca-trust-agent-") and name.endswith(".crt"):
                host_path = "/" + os.path.relpath(os.path.join(dirpath, name), node.root)
                assert host_path in named, f"{host_path} is on disk but not in the ledger"
    for host_path in named:
        real = node.root / host_path.lstrip("/")
        assert not real.exists() or real.read_bytes() == node.anchor_pem


def ours_anywhere(node: Node) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(node.root):
        for name in filenames:
            if name.startswith("ca-trust-agent-") and name.endswith(".crt"):
                found.append(os.path.join(dirpath, name))
            if name.startswith(TMP_PREFIX) and os.path.basename(dirpath) != "ca-trust-agent":
                found.append(os.path.join(dirpath, name))
    return found


def bundle_has_anchor(node: Node) -> bool:
    bundle = node.root / BUNDLE
    return bundle.exists() and node.anchor_pem in bundle.read_bytes()


# --- the kills ----------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "failpoint"), _cases("install"))
def test_install_killed_at_any_step_leaves_nothing_partial_and_converges(
    node_factory: Callable[[str], Node], scope: str, failpoint: str
) -> None:
    node: Node = node_factory(scope)
    killed = node.run("install", failpoint)
    if expected_to_die(scope, "install", failpoint):
        assert killed.returncode == -9, killed.stdout + killed.stderr
    else:
        assert killed.returncode == 0, killed.stdout + killed.stderr
    check_readers_see_nothing_partial(node)
    check_ledger_names_what_is_ours(node)

    again = node.run("install")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["status"] in ("installed", "unchanged")
    names = {p.name for p in node.store_dir.iterdir() if not p.name.startswith(TMP_PREFIX)}
    expected = {node.our_name, FOREIGN} if scope == "system" else {node.our_name}
    assert names == expected
    assert node.our_file.read_bytes() == node.anchor_pem
    entry = node.ledger()[node.target]
    assert entry.state == "installed"
    assert entry.files == ("/" + str(node.our_file.relative_to(node.root)),)
    if scope == "system":
        assert bundle_has_anchor(node)
        assert node.log("restart.log")[-1] == "restart containerd"


@pytest.mark.parametrize(("scope", "failpoint"), _cases("remove"))
def test_remove_killed_at_any_step_leaves_nothing_partial_and_converges(
    node_factory: Callable[[str], Node], scope: str, failpoint: str
) -> None:
    node: Node = node_factory(scope)
    installed = node.run("install")
    assert installed.returncode == 0, installed.stdout + installed.stderr

    killed = node.run("remove", failpoint)
    if expected_to_die(scope, "remove", failpoint):
        assert killed.returncode == -9, killed.stdout + killed.stderr
    else:
        assert killed.returncode == 0, killed.stdout + killed.stderr
    check_readers_see_nothing_partial(node)
    check_ledger_names_what_is_ours(node)

    again = node.run("remove")
    assert again.returncode == 0, again.stdout + again.stderr
    assert ours_anywhere(node) == []
    assert node.ledger() == {}
    if scope == "registry":
        assert not (node.root / CERTS_D).exists(), "directories we created must go"
    else:
        assert (node.root / ANCHOR_DIR / FOREIGN).exists()
        assert not bundle_has_anchor(node)
        assert node.log("restart.log")[-1] == "restart containerd"


def test_a_temp_file_from_a_kill_inside_a_store_dir_is_harmless_to_readers(
    node_factory: Callable[[str], Node],
) -> None:
    """A kill between writing the temp file and renaming it leaves `.ca-trust-agent-tmp-*`
    next to our file. Readers only load `*.crt`; install again still converges."""
    node: Node = node_factory("registry")
    assert node.run("install").returncode == 0
    leftover = node.store_dir / (TMP_PREFIX + "0123456789abcdef")
    leftover.write_bytes(node.anchor_pem[:100])  # a half-written temp file
    assert check_readers_see_nothing_partial(node) == [leftover.name]
    again = node.run("install")
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "unchanged"


def test_remove_after_a_kill_inside_a_write_leaves_no_trace(
    node_factory: Callable[[str], Node],
) -> None:
    node: Node = node_factory("registry")
    assert node.run("install").returncode == 0
    (node.store_dir / (TMP_PREFIX + "0123456789abcdef")).write_bytes(b"-----BEGIN CERT")
    assert node.run("remove").returncode == 0
    assert node.ledger() == {}
    assert not node.store_dir.exists()


def test_concurrent_installs_of_different_registries_lose_no_ledger_entry(
    tmp_path: Path, ca: pki.PKI, foreign_ca: pki.PKI
) -> None:
    """The DaemonSet and an operator's CLI can run at the same time: every read-modify-write
    of the ledger must see the others' entries, or a file would be left that nothing undoes."""
    root, _ = _make_node(tmp_path, foreign_ca)
    servers = [TLSServer(ca.chain, ca.leaf).start() for _ in range(6)]
    try:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "install",
                    f"127.0.0.1:{s.port}",
                    "--scope",
                    "registry",
                    "--host-root",
                    str(root),
                    "--runtime",
                    "containerd",
                    "--runner",
                    "direct",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for s in servers
        ]
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for s in servers:
            s.stop()
    assert codes == [0] * len(servers), [p.stderr.read() for p in procs if p.stderr]
    entries = Ledger(HostFS(str(root))).entries()
    assert sorted(entries) == sorted(f"127.0.0.1:{s.port}" for s in servers)
    on_disk = {
        "/" + os.path.relpath(os.path.join(d, n), root)
        for d, _, names in os.walk(root / CERTS_D)
        for n in names
    }
    assert on_disk == {f for e in entries.values() for f in e.files}
