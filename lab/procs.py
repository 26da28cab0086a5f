"""Daemon process control for the lab: clean environment, log file, readiness, stop by PID.

Go daemons honour SSL_CERT_FILE/SSL_CERT_DIR, which the development machine exports and a
node does not: every daemon starts with only PATH and LANG (what `env -i PATH=...` gives).
A daemon is stopped by the PID it was started with (never by name): SIGTERM, a grace
period, then SIGKILL. A process that the lab restart command replaced is tracked through
its pidfile instead, so the same stop logic applies to a PID that is not our child.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_CHILD_SUBREAPER = 36


class LabError(RuntimeError):
    """A lab component did not start or stop as expected; the message names its log."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a node daemon: no trust or proxy variables leak in."""
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that was free a moment ago (daemons need a number up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


def unix_ready(path: str | Path) -> Callable[[], bool]:
    def probe() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(str(path))
            except OSError:
                return False
            return True

    return probe


def become_subreaper() -> None:
    """Adopt orphaned descendants (a daemon started by the restart command) to reap them.

    Without this they are re-parented to PID 1, which on these machines is not an init
    that reaps, and a stopped daemon would linger as a zombie.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (it has released everything)."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def stop_pid(pid: int, *, grace: float = 10.0) -> bool:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. True if it had to be killed."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_for(lambda: not pid_alive(pid), grace):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 5.0)
    return True


def read_pidfile(path: str | Path) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def spawn_detached(
    argv: Sequence[str], *, log: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output appended to `log`, stdin from /dev/null.

    Nothing is inherited from the caller's pipes: a command runner that captures output
    (the agent's) would otherwise wait for the daemon to exit.
    """
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else clean_env(),
            start_new_session=True,
            close_fds=True,
        )


def log_tail(log: str | Path, lines: int = 30) -> str:
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Daemon:
    """A running lab daemon. Mutable on purpose: a restart changes its PID."""

    name: str
    argv: tuple[str, ...]
    log: Path
    pid: int
    started_in: float  # seconds from spawn to ready

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, grace: float = 10.0) -> None:
        stop_pid(self.pid, grace=grace)

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)


def start_daemon(
    name: str,
    argv: Sequence[str],
    *,
    log: str | Path,
    ready: Callable[[], bool],
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    pidfile: str | Path | None = None,
) -> Daemon:
    """Spawn, then wait for `ready`; on failure stop it and raise with the log's tail."""
    start = time.monotonic()
    proc = spawn_detached(argv, log=log, env=env)
    if pidfile is not None:
        Path(pidfile).write_text(f"{proc.pid}\n")
    daemon = Daemon(name, tuple(argv), Path(log), proc.pid, 0.0)

    wait_for(lambda: proc.poll() is not None or ready(), timeout)
    if proc.poll() is not None or not ready():
        daemon.stop()
        raise LabError(f"{name} did not become ready (log {log}):\n{daemon.tail()}")
    daemon.started_in = time.monotonic() - start
    return daemon


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    *,
    log: str | Path,
    ready: Callable[[], bool],
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    pidfile: str | Path | None = None,
) -> Iterator[Daemon]:
    """`start_daemon` as a context manager: the daemon is stopped whatever happens inside."""
    daemon = start_daemon(
        name, argv, log=log, ready=ready, timeout=timeout, env=env, pidfile=pidfile
    )
    try:
        yield daemon
    finally:
        daemon.stop()
