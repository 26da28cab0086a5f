"""What all runtimes share: names, the restart method, detection, the manager, the gRPC probe.

Only system-scope trust needs a restart (Go caches the OS roots on first use). A restart
goes through the `Runner` (systemd, or a configured command where the runtime is not under
systemd); readiness is judged by the runtime's own socket, not by the command's exit.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.errors import InputError, RuntimeRestartError, StoreError
from agent.node.host import HostFS, Runner
from agent.node.runtimes.containerd import check_not_embedded, containerd_socket
from agent.node.runtimes.crio import crio_socket
from agent.node.runtimes.docker import check_live_restore, docker_socket, probe_docker
from agent.node.runtimes.sockets import connect, recv_exactly

RUNTIMES = ("containerd", "docker", "crio")
RESTART_COMMAND_ENV = "CA_TRUST_AGENT_RESTART_COMMAND"

SYSTEMD_UNITS = {"containerd": "containerd", "docker": "docker", "crio": "crio"}

# HTTP/2 connection preface followed by an empty SETTINGS frame (RFC 9113 §3.4, §6.5).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SETTINGS = 0x4

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


def socket_path(fs: HostFS, runtime: str) -> str:
    """Host path of the runtime's API socket."""
    _check_runtime(runtime)
    if runtime == "containerd":
        return containerd_socket(fs)
    if runtime == "crio":
        return crio_socket(fs)
    return docker_socket(fs)


def detect_runtimes(fs: HostFS) -> tuple[str, ...]:
    """Runtimes whose API socket exists under the host root, in RUNTIMES order."""
    found = []
    for runtime in RUNTIMES:
        with contextlib.suppress(StoreError):
            if fs.is_socket(socket_path(fs, runtime)):
                found.append(runtime)
    return tuple(found)


def probe_grpc(real_path: str, timeout: float = 2.0) -> None:
    """Raise OSError unless an HTTP/2 server (gRPC) answers our preface with SETTINGS."""
    with connect(real_path, timeout) as sock:
        sock.sendall(H2_PREFACE)
        header = recv_exactly(sock, 9)
    if len(header) < 9 or header[3] != H2_SETTINGS:
        raise OSError(f"no HTTP/2 SETTINGS frame from {real_path} (got {header!r})")


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
        """Refuse to restart dockerd without live-restore (that would kill every container),
        and an embedded containerd: on k3s/RKE2 that means restarting the distribution."""
        _check_runtime(runtime)
        if runtime == "containerd":
            check_not_embedded(self.fs)
        if runtime != "docker" or allow_docker_without_live_restore:
            return
        check_live_restore(self.fs)

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
