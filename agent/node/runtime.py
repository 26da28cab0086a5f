"""Container runtimes: which one runs here, whether it may be restarted, restart, wait ready.

Only system-scope trust needs a restart (Go caches the OS roots on first use). A restart
goes through the `Runner` (systemd, or a configured command where the runtime is not under
systemd); readiness is judged by the runtime's own socket, not by the command's exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.errors import InputError, RuntimeRestartError, StoreError
from agent.node.host import HostFS, Runner
from agent.node.stores.registry import dig, load_containerd_config

RUNTIMES = ("containerd", "docker", "crio")
RESTART_COMMAND_ENV = "CA_TRUST_AGENT_RESTART_COMMAND"

SYSTEMD_UNITS = {"containerd": "containerd", "docker": "docker", "crio": "crio"}
DEFAULT_SOCKETS: dict[str, tuple[str, ...]] = {
    "containerd": ("/run/containerd/containerd.sock",),
    "docker": ("/var/run/docker.sock", "/run/docker.sock"),
    "crio": ("/var/run/crio/crio.sock", "/run/crio/crio.sock"),
}
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
CRIO_CONFIG = "/etc/crio/crio.conf"

# HTTP/2 connection preface followed by an empty SETTINGS frame (RFC 9113 §3.4, §6.5).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SETTINGS = 0x4
DOCKER_PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"

_VERSION_PREFIXES = {
    "containerd": "containerd",
    "docker": "docker",
    "cri-o": "crio",
    "crio": "crio",
}


def runtime_from_version(v: str) -> str | None:
    """Node.status.nodeInfo.containerRuntimeVersion -> runtime: "containerd://1.6.20" ->
    "containerd"; None for anything we do not manage."""
    scheme, sep, _ = v.strip().partition("://")
    return _VERSION_PREFIXES.get(scheme.lower()) if sep else None


@dataclass(frozen=True)
class RestartMethod:
    kind: str  # "systemd" | "command"
    command: tuple[str, ...] = ()  # for "command": argv template, "{runtime}" replaced

    def __post_init__(self) -> None:
        if self.kind not in ("systemd", "command"):
            raise InputError(f"unknown restart method {self.kind!r}", kind="bad-restart")
        if self.kind == "command" and not self.command:
            raise InputError("restart method 'command' needs a command", kind="bad-restart")

    def argv(self, runtime: str) -> tuple[str, ...]:
        if self.kind == "systemd":
            return ("systemctl", "restart", SYSTEMD_UNITS[runtime])
        # Plain replacement, not str.format: braces elsewhere in an argument stay as written.
        return tuple(arg.replace("{runtime}", runtime) for arg in self.command)


def restart_method_from_env(env: Mapping[str, str] | None = None) -> RestartMethod:
    """A command from CA_TRUST_AGENT_RESTART_COMMAND (shell-like split, never run by a
    shell), else systemd."""
    text = (os.environ if env is None else env).get(RESTART_COMMAND_ENV, "").strip()
    if not text:
        return RestartMethod("systemd")
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise InputError(f"{RESTART_COMMAND_ENV}={text!r}: {exc}", kind="bad-restart") from exc
    return RestartMethod("command", argv)


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise RuntimeRestartError(
            f"unknown container runtime {runtime!r} (known: {', '.join(RUNTIMES)})",
            kind="unknown-runtime",
        )


def _strip_unix(address: str) -> str:
    return address.removeprefix("unix://")


def containerd_socket(fs: HostFS) -> str:
    try:
        config = load_containerd_config(fs)
    except StoreError:
        config = None  # a broken config cannot move the socket; the default is the best guess
    grpc = config.get("grpc") if config else None
    address = grpc.get("address") if isinstance(grpc, dict) else None
    if isinstance(address, str) and address.strip():
        return _strip_unix(address.strip())
    return DEFAULT_SOCKETS["containerd"][0]


def crio_socket(fs: HostFS) -> str:
    listen = None
    # A broken crio.conf cannot move the socket either: fall back to the default.
    with contextlib.suppress(
        StoreError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError
    ):
        data = fs.read_bytes(CRIO_CONFIG)
        if data is not None:
            listen = dig(tomllib.loads(data.decode("utf-8")), ("crio", "api", "listen"))
    if isinstance(listen, str) and listen.strip():
        return _strip_unix(listen.strip())
    return _first_existing(fs, DEFAULT_SOCKETS["crio"])


def _first_existing(fs: HostFS, paths: tuple[str, ...]) -> str:
    for path in paths:
        with contextlib.suppress(StoreError):
            if fs.is_socket(path):
                return path
    return paths[0]


def socket_path(fs: HostFS, runtime: str) -> str:
    """Host path of the runtime's API socket."""
    _check_runtime(runtime)
    if runtime == "containerd":
        return containerd_socket(fs)
    if runtime == "crio":
        return crio_socket(fs)
    return _first_existing(fs, DEFAULT_SOCKETS["docker"])


def detect_runtimes(fs: HostFS) -> tuple[str, ...]:
    """Runtimes whose API socket exists under the host root, in RUNTIMES order."""
    found = []
    for runtime in RUNTIMES:
        with contextlib.suppress(StoreError):
            if fs.is_socket(socket_path(fs, runtime)):
                found.append(runtime)
    return tuple(found)


def _connect(real_path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(real_path.encode()) < 100:
            sock.connect(real_path)
        else:
            # sun_path holds ~107 bytes; a deep host root is reached through a directory fd.
            dfd = os.open(os.path.dirname(real_path), os.O_PATH | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(real_path)}")
            finally:
                os.close(dfd)
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def probe_grpc(real_path: str, timeout: float = 2.0) -> None:
    """Raise OSError unless an HTTP/2 server (gRPC) answers our preface with SETTINGS."""
    with _connect(real_path, timeout) as sock:
        sock.sendall(H2_PREFACE)
        header = _recv_exactly(sock, 9)
    if len(header) < 9 or header[3] != H2_SETTINGS:
        raise OSError(f"no HTTP/2 SETTINGS frame from {real_path} (got {header!r})")


def probe_docker(real_path: str, timeout: float = 2.0) -> None:
    """Raise OSError unless `GET /_ping` answers 200 "OK"."""
    with _connect(real_path, timeout) as sock:
        sock.sendall(DOCKER_PING)
        data = b""
        while len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200" or not body.strip().endswith(b"OK"):
        raise OSError(f"docker /_ping on {real_path} answered {data[:200]!r}")


class RuntimeManager:
    def __init__(
        self, fs: HostFS, runner: Runner, method: RestartMethod = RestartMethod("systemd")
    ) -> None:
        self.fs = fs
        self.runner = runner
        self.method = method

    def socket(self, runtime: str) -> str:
        """Host path of the runtime's socket (containerd: [grpc].address from its config)."""
        return socket_path(self.fs, runtime)

    def check_restart_allowed(
        self, runtime: str, *, allow_docker_without_live_restore: bool
    ) -> None:
        """Refuse to restart dockerd without live-restore: that would kill every container."""
        _check_runtime(runtime)
        if runtime != "docker" or allow_docker_without_live_restore:
            return
        how = (
            f'set "live-restore": true in {DOCKER_DAEMON_JSON} (and reload dockerd), or allow '
            "it with allowDockerRestartWithoutLiveRestore in the policy"
        )
        try:
            data = self.fs.read_bytes(DOCKER_DAEMON_JSON)
        except StoreError as exc:
            raise RuntimeRestartError(
                f"refusing to restart docker: cannot read {DOCKER_DAEMON_JSON}: {exc}",
                kind="refused",
            ) from exc
        if data is None:
            raise RuntimeRestartError(
                f"refusing to restart docker: {DOCKER_DAEMON_JSON} does not exist, so "
                f"live-restore is off and a restart stops every container; {how}",
                kind="refused",
            )
        try:
            config = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RuntimeRestartError(
                f"refusing to restart docker: {DOCKER_DAEMON_JSON} is not valid JSON ({exc}); "
                f"cannot tell whether live-restore is on; {how}",
                kind="refused",
            ) from exc
        if not isinstance(config, dict) or config.get("live-restore") is not True:
            raise RuntimeRestartError(
                f'refusing to restart docker: "live-restore" is not true in {DOCKER_DAEMON_JSON}, '
                f"so a restart stops every container; {how}",
                kind="refused",
            )

    def restart(self, runtime: str, *, timeout: float = 60.0) -> float:
        """Restart through the configured method and wait until the socket answers; returns
        the seconds from the start of the restart until ready."""
        _check_runtime(runtime)
        argv = self.method.argv(runtime)
        start = time.monotonic()
        result = self.runner.run(argv, timeout=timeout)
        if not result.ok:
            raise RuntimeRestartError(
                f"restarting {runtime} failed: {result.describe()}", kind="failed"
            )
        remaining = max(timeout - (time.monotonic() - start), 1.0)
        self.wait_ready(runtime, timeout=remaining)
        return time.monotonic() - start

    def wait_ready(self, runtime: str, *, timeout: float = 30.0) -> None:
        """Poll the runtime's socket until its API answers; RuntimeRestartError("not-ready")."""
        _check_runtime(runtime)
        host_path = self.socket(runtime)
        probe = probe_docker if runtime == "docker" else probe_grpc
        deadline = time.monotonic() + timeout
        last = "never tried"
        while True:
            real = self.fs.resolve(host_path)
            try:
                probe(real, min(2.0, max(deadline - time.monotonic(), 0.1)))
                return
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                raise RuntimeRestartError(
                    f"{runtime} did not answer on {host_path} within {timeout:.1f}s: {last}",
                    kind="not-ready",
                )
            time.sleep(0.05)
