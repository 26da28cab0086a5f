"""Which runtime runs, whether it may be restarted, how, and when it is ready again.

Readiness is probed over real unix sockets served by small in-test servers: a docker-like
`/_ping` HTTP/1.1 server and an HTTP/2 server answering the preface with SETTINGS as gRPC
does. The restart with a real containerd is in tests/integration/node/test_runtime_restart.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from agent.core.errors import InputError, RuntimeRestartError
from agent.node.host import CommandResult, HostFS
from agent.node.runtimes import (
    H2_PREFACE,
    RUNTIMES,
    RestartMethod,
    RuntimeManager,
    detect_runtimes,
    restart_method_from_env,
    runtime_from_version,
)


class RecordingRunner:
    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.returncode = returncode
        self.stderr = stderr

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        self.calls.append(tuple(argv))
        return CommandResult(tuple(argv), self.returncode, "", self.stderr, 0.01, False)


class UnixServer:
    """Serves each connection with `handler` on a thread until closed."""

    def __init__(self, path: Path, handler: Callable[[socket.socket], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.handler = handler
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                self.handler(conn)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def _read_until(conn: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def docker_ping(conn: socket.socket) -> None:
    request = _read_until(conn, b"\r\n\r\n")
    assert request.startswith(b"GET /_ping HTTP/1.1\r\n")
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nOK"
    )


def docker_broken(conn: socket.socket) -> None:
    _read_until(conn, b"\r\n\r\n")
    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror")


def grpc_settings(conn: socket.socket) -> None:
    data = b""
    while len(data) < len(H2_PREFACE):
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    # A real gRPC server's first frame: SETTINGS with one parameter (MAX_FRAME_SIZE).
    conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x05\x00\x00\x40\x00")


def http1_answer(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "host"


@pytest.fixture
def servers() -> Iterator[list[UnixServer]]:
    started: list[UnixServer] = []
    yield started
    for server in started:
        server.close()


# --- pure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "runtime"),
    [
        ("containerd://1.6.20", "containerd"),
        ("containerd://2.0.0-rc.1", "containerd"),
        ("docker://20.10.24", "docker"),
        ("cri-o://1.28.1", "crio"),
        ("CRI-O://1.28", "crio"),
        ("remote://1.0", None),
        ("containerd", None),
        ("", None),
    ],
)
def test_runtime_from_node_info_version(version: str, runtime: str | None) -> None:
    assert runtime_from_version(version) == runtime


def test_systemd_restart_argv_names_the_unit() -> None:
    method = RestartMethod("systemd")
    assert [method.argv(r) for r in RUNTIMES] == [
        ("systemctl", "restart", "containerd"),
        ("systemctl", "restart", "docker"),
        ("systemctl", "restart", "crio"),
    ]


def test_command_restart_substitutes_the_runtime_and_leaves_other_braces() -> None:
    method = RestartMethod("command", ("/lab/restart", "--name={runtime}", "{other}"))
    assert method.argv("containerd") == ("/lab/restart", "--name=containerd", "{other}")


def test_restart_method_needs_a_known_kind_and_a_command() -> None:
    with pytest.raises(InputError):
        RestartMethod("reboot")
    with pytest.raises(InputError):
        RestartMethod("command")


def test_restart_method_from_env_is_shell_split_not_a_shell() -> None:
    env = {"CA_TRUST_AGENT_RESTART_COMMAND": "/opt/lab/restart.sh '{runtime}' --grace 2"}
    assert restart_method_from_env(env) == RestartMethod(
        "command", ("/opt/lab/restart.sh", "{runtime}", "--grace", "2")
    )
    assert restart_method_from_env({}) == RestartMethod("systemd")
    assert restart_method_from_env({"CA_TRUST_AGENT_RESTART_COMMAND": "  "}).kind == "systemd"
    with pytest.raises(InputError):
        restart_method_from_env({"CA_TRUST_AGENT_RESTART_COMMAND": "'unclosed"})


# --- sockets and detection ------------------------------------------------------------------


def test_containerd_socket_comes_from_grpc_address_in_its_config(root: Path) -> None:
    fs = HostFS(str(root))
    manager = RuntimeManager(fs, RecordingRunner())
    assert manager.socket("containerd") == "/run/containerd/containerd.sock"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        'version = 2\n[grpc]\n  address = "/run/k8s/containerd.sock"\n'
    )
    assert manager.socket("containerd") == "/run/k8s/containerd.sock"


def test_crio_socket_comes_from_crio_conf_listen(root: Path) -> None:
    fs = HostFS(str(root))
    (root / "etc/crio").mkdir(parents=True)
    (root / "etc/crio/crio.conf").write_text('[crio.api]\nlisten = "/run/alt/crio.sock"\n')
    assert RuntimeManager(fs, RecordingRunner()).socket("crio") == "/run/alt/crio.sock"


def test_unknown_runtime_is_refused(root: Path) -> None:
    with pytest.raises(RuntimeRestartError) as err:
        RuntimeManager(HostFS(str(root)), RecordingRunner()).socket("rkt")
    assert err.value.kind == "unknown-runtime"


def test_detect_runtimes_finds_sockets_under_the_host_root(
    root: Path, servers: list[UnixServer]
) -> None:
    fs = HostFS(str(root))
    assert detect_runtimes(fs) == ()
    servers.append(UnixServer(root / "run/containerd/containerd.sock", grpc_settings))
    # /var/run is a link to /run on real hosts, with an absolute target.
    (root / "var").mkdir()
    (root / "var/run").symlink_to("/run")
    servers.append(UnixServer(root / "run/docker.sock", docker_ping))
    assert detect_runtimes(fs) == ("containerd", "docker")
    servers.append(UnixServer(root / "run/crio/crio.sock", grpc_settings))
    assert detect_runtimes(fs) == ("containerd", "docker", "crio")


def test_a_regular_file_named_like_a_socket_is_not_a_runtime(root: Path) -> None:
    (root / "run/containerd").mkdir(parents=True)
    (root / "run/containerd/containerd.sock").write_text("")
    assert detect_runtimes(HostFS(str(root))) == ()


# --- readiness ------------------------------------------------------------------------------


def test_wait_ready_accepts_a_docker_that_answers_ping(
    root: Path, servers: list[UnixServer]
) -> None:
    servers.append(UnixServer(root / "run/docker.sock", docker_ping))
    RuntimeManager(HostFS(str(root)), RecordingRunner()).wait_ready("docker", timeout=5)
    assert servers[0].connections == 1


def test_wait_ready_rejects_a_docker_that_answers_500(
    root: Path, servers: list[UnixServer]
) -> None:
    servers.append(UnixServer(root / "var/run/docker.sock", docker_broken))
    with pytest.raises(RuntimeRestartError, match="500") as err:
        RuntimeManager(HostFS(str(root)), RecordingRunner()).wait_ready("docker", timeout=0.5)
    assert err.value.kind == "not-ready"


def test_wait_ready_speaks_http2_to_containerd_and_crio(
    root: Path, servers: list[UnixServer]
) -> None:
    servers.append(UnixServer(root / "run/containerd/containerd.sock", grpc_settings))
    servers.append(UnixServer(root / "var/run/crio/crio.sock", grpc_settings))
    manager = RuntimeManager(HostFS(str(root)), RecordingRunner())
    manager.wait_ready("containerd", timeout=5)
    manager.wait_ready("crio", timeout=5)


def test_wait_ready_rejects_a_socket_that_is_not_grpc(
    root: Path, servers: list[UnixServer]
) -> None:
    servers.append(UnixServer(root / "run/containerd/containerd.sock", http1_answer))
    with pytest.raises(RuntimeRestartError, match="SETTINGS") as err:
        RuntimeManager(HostFS(str(root)), RecordingRunner()).wait_ready("containerd", timeout=0.5)
    assert err.value.kind == "not-ready"


def test_wait_ready_times_out_when_nothing_listens(root: Path) -> None:
    with pytest.raises(RuntimeRestartError, match="did not answer on /run/containerd") as err:
        RuntimeManager(HostFS(str(root)), RecordingRunner()).wait_ready("containerd", timeout=0.3)
    assert err.value.kind == "not-ready"


def test_wait_ready_reaches_a_socket_deeper_than_sun_path_allows(
    tmp_path: Path, servers: list[UnixServer]
) -> None:
    """A host root deep in the filesystem must not make the socket unreachable."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    sock_dir = deep / "run/containerd"
    sock_dir.mkdir(parents=True)
    # bind() has the same limit: bind through a directory fd.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dfd = os.open(sock_dir, os.O_PATH)
    try:
        server.bind(f"/proc/self/fd/{dfd}/containerd.sock")
    finally:
        os.close(dfd)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            grpc_settings(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert len(str(sock_dir / "containerd.sock")) > 108
        RuntimeManager(HostFS(str(deep)), RecordingRunner()).wait_ready("containerd", timeout=5)
    finally:
        thread.join(5)
        server.close()


# --- restart --------------------------------------------------------------------------------


def test_restart_runs_systemctl_then_waits_for_the_socket(
    root: Path, servers: list[UnixServer]
) -> None:
    servers.append(UnixServer(root / "run/containerd/containerd.sock", grpc_settings))
    runner = RecordingRunner()
    seconds = RuntimeManager(HostFS(str(root)), runner).restart("containerd", timeout=5)
    assert runner.calls == [("systemctl", "restart", "containerd")]
    assert seconds >= 0


def test_restart_through_a_configured_command(root: Path, servers: list[UnixServer]) -> None:
    servers.append(UnixServer(root / "run/crio/crio.sock", grpc_settings))
    runner = RecordingRunner()
    method = RestartMethod("command", ("/lab/restart-runtime", "{runtime}"))
    RuntimeManager(HostFS(str(root)), runner, method).restart("crio", timeout=5)
    assert runner.calls == [("/lab/restart-runtime", "crio")]


def test_a_failing_restart_command_reports_its_stderr(root: Path) -> None:
    runner = RecordingRunner(returncode=1, stderr="Failed to restart containerd.service: denied")
    with pytest.raises(RuntimeRestartError, match=r"containerd\.service: denied") as err:
        RuntimeManager(HostFS(str(root)), runner).restart("containerd", timeout=5)
    assert err.value.kind == "failed"


# --- docker live-restore guard --------------------------------------------------------------


def _daemon_json(root: Path, text: str) -> HostFS:
    (root / "etc/docker").mkdir(parents=True, exist_ok=True)
    (root / "etc/docker/daemon.json").write_text(text)
    return HostFS(str(root))


def test_docker_restart_is_allowed_with_live_restore(root: Path) -> None:
    fs = _daemon_json(root, '{"live-restore": true, "log-driver": "json-file"}')
    RuntimeManager(fs, RecordingRunner()).check_restart_allowed(
        "docker", allow_docker_without_live_restore=False
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"live-restore": false}', '"live-restore" is not true'),
        ('{"live-restore": "true"}', '"live-restore" is not true'),
        ("{}", '"live-restore" is not true'),
        ("[]", '"live-restore" is not true'),
        ('{"live-restore": true,}', "is not valid JSON"),
        (None, "does not exist"),
    ],
)
def test_docker_restart_is_refused_without_live_restore(
    root: Path, text: str | None, says: str
) -> None:
    fs = _daemon_json(root, text) if text is not None else HostFS(str(root))
    manager = RuntimeManager(fs, RecordingRunner())
    with pytest.raises(RuntimeRestartError, match=says) as err:
        manager.check_restart_allowed("docker", allow_docker_without_live_restore=False)
    assert err.value.kind == "refused"
    assert "/etc/docker/daemon.json" in str(err.value)
    assert "allowDockerRestartWithoutLiveRestore" in str(err.value)
    manager.check_restart_allowed("docker", allow_docker_without_live_restore=True)


def test_containerd_and_crio_restarts_need_no_live_restore(root: Path) -> None:
    manager = RuntimeManager(HostFS(str(root)), RecordingRunner())
    manager.check_restart_allowed("containerd", allow_docker_without_live_restore=False)
    manager.check_restart_allowed("crio", allow_docker_without_live_restore=False)


def test_a_pathologically_nested_daemon_json_is_a_refusal(root: Path) -> None:
    manager = RuntimeManager(_daemon_json(root, "[" * 100_000), RecordingRunner())
    with pytest.raises(RuntimeRestartError, match="not valid JSON") as err:
        manager.check_restart_allowed("docker", allow_docker_without_live_restore=False)
    assert err.value.kind == "refused"


def test_a_broken_crio_conf_falls_back_to_the_default_socket(root: Path) -> None:
    (root / "etc/crio").mkdir(parents=True)
    manager = RuntimeManager(HostFS(str(root)), RecordingRunner())
    for text in ("[crio\n", "crio = 5\n", "[crio.api]\nlisten = 3\n"):
        (root / "etc/crio/crio.conf").write_text(text)
        assert manager.socket("crio") == "/var/run/crio/crio.sock"
