"""What all runtimes share: the restart method, detection, the manager.

Only system-scope trust needs a restart (Go caches the OS roots on first use). A restart
goes through the `Runner` (systemd, or a configured command where the runtime is not under
systemd); readiness is judged by the runtime's own socket, not by the command's exit.
What differs per runtime is asked of its `Runtime` in the registry.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.errors import InputError, RuntimeRestartError, StoreError
from agent.core.runtime_kinds import BY_NAME, RUNTIMES
from agent.node.host import HostFS, Runner
from agent.node.runtimes.registry import runtime

RESTART_COMMAND_ENV = "CA_TRUST_AGENT_RESTART_COMMAND"


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
            return ("systemctl", "restart", BY_NAME[runtime].systemd_unit)
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


def socket_path(fs: HostFS, name: str) -> str:
    """Host path of the runtime's API socket."""
    return runtime(name).socket(fs)


def detect_runtimes(fs: HostFS) -> tuple[str, ...]:
    """Runtimes whose API socket exists under the host root, in RUNTIMES order."""
    found = []
    for name in RUNTIMES:
        with contextlib.suppress(StoreError):
            if fs.is_socket(socket_path(fs, name)):
                found.append(name)
    return tuple(found)


class RuntimeManager:
    def __init__(
        self, fs: HostFS, runner: Runner, method: RestartMethod = RestartMethod("systemd")
    ) -> None:
        self.fs = fs
        self.runner = runner
        self.method = method

    def socket(self, name: str) -> str:
        """Host path of the runtime's socket (containerd: [grpc].address from its config)."""
        return socket_path(self.fs, name)

    def check_restart_allowed(self, name: str, *, allow_docker_without_live_restore: bool) -> None:
        """Refuse to restart dockerd without live-restore (that would kill every container),
        and an embedded containerd: on k3s/RKE2 that means restarting the distribution."""
        runtime(name).check_restart(self.fs, allow_disruptive=allow_docker_without_live_restore)

    def restart(self, name: str, *, timeout: float = 60.0) -> float:
        """Restart through the configured method and wait until the socket answers; returns
        the seconds from the start of the restart until ready."""
        runtime(name)  # an unknown name is refused before anything runs
        argv = self.method.argv(name)
        start = time.monotonic()
        result = self.runner.run(argv, timeout=timeout)
        if not result.ok:
            raise RuntimeRestartError(
                f"restarting {name} failed: {result.describe()}", kind="failed"
            )
        remaining = max(timeout - (time.monotonic() - start), 1.0)
        self.wait_ready(name, timeout=remaining)
        return time.monotonic() - start

    def wait_ready(self, name: str, *, timeout: float = 30.0) -> None:
        """Poll the runtime's socket until its API answers; RuntimeRestartError("not-ready")."""
        rt = runtime(name)
        host_path = rt.socket(self.fs)
        deadline = time.monotonic() + timeout
        last = "never tried"
        while True:
            real = self.fs.resolve(host_path)
            try:
                rt.probe(real, min(2.0, max(deadline - time.monotonic(), 0.1)))
                return
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                raise RuntimeRestartError(
                    f"{name} did not answer on {host_path} within {timeout:.1f}s: {last}",
                    kind="not-ready",
                )
            time.sleep(0.05)
