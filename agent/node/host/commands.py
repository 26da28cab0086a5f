"""Commands on the host: results, the runner protocol, direct and nsenter runners.

No shell, a clean environment, a timeout that kills the whole process group, and output
capped at OUTPUT_LIMIT so a chatty command cannot grow the agent's memory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

OUTPUT_LIMIT = 64 * 1024
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSENTER_PREFIX = ("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--")


@dataclass(frozen=True)
class CommandResult:
    """What a command did. `returncode` follows the shell: 127 not found, 126 not executable,
    128+N killed by signal N."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line for an error message: the command, how it ended, the end of stderr."""
        how = "timed out" if self.timed_out else f"exited {self.returncode}"
        tail = (self.stderr.strip() or self.stdout.strip())[-500:]
        return f"`{shlex.join(self.argv)}` {how}" + (f": {tail}" if tail else "")


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult: ...


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    # A str is a Sequence[str]: "systemctl restart x" would run the program "s".
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a list of arguments, not a string")
    args = tuple(argv)
    if not args or not all(isinstance(a, str) for a in args):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    return args


class DirectRunner:
    """Runs a command on this machine: no shell, clean environment, timeout, capped output."""

    def __init__(
        self, *, env: Mapping[str, str] | None = None, output_limit: int = OUTPUT_LIMIT
    ) -> None:
        self.env = dict(env) if env is not None else {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}
        self.output_limit = output_limit

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        args = _check_argv(argv)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                cwd="/",
                close_fds=True,
                # Own process group: a timeout kills the command and everything it forked.
                start_new_session=True,
            )
        except FileNotFoundError:
            return self._failed(args, 127, f"{args[0]}: command not found (PATH={self._path})")
        except PermissionError:
            return self._failed(args, 126, f"{args[0]}: permission denied (not executable?)")
        except OSError as exc:
            return self._failed(args, 126, f"{args[0]}: cannot execute: {exc.strerror}")
        assert proc.stdout is not None and proc.stderr is not None
        deadline = start + timeout
        out, err, timed_out = self._collect(proc, proc.stdout, proc.stderr, deadline)
        try:
            # A command that closed its output early is still bound by the timeout.
            code = proc.wait(timeout=max(deadline - time.monotonic(), 0.0) + 0.5)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            code = proc.wait()
        return CommandResult(
            argv=args,
            returncode=128 - code if code < 0 else code,
            stdout=out,
            stderr=err,
            duration=time.monotonic() - start,
            timed_out=timed_out,
        )

    @property
    def _path(self) -> str:
        return self.env.get("PATH", "")

    @staticmethod
    def _failed(args: tuple[str, ...], code: int, message: str) -> CommandResult:
        return CommandResult(args, code, "", message, 0.0, False)

    def _collect(
        self, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes], deadline: float
    ) -> tuple[str, str, bool]:
        captured = {out.fileno(): bytearray(), err.fileno(): bytearray()}
        dropped = {out.fileno(): 0, err.fileno(): 0}
        timed_out = False
        exited_at: float | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            sel.register(err, selectors.EVENT_READ)
            while sel.get_map():
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                # A daemon the command started in the background may keep the pipes open
                # forever: once the command itself exited, drain briefly and stop.
                if exited_at is not None and now - exited_at > 0.2:
                    break
                if exited_at is None and now >= deadline:
                    timed_out = True
                    _kill_group(proc.pid)
                    exited_at = now
                for key, _ in sel.select(timeout=0.05):
                    fd = key.fd
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    room = self.output_limit - len(captured[fd])
                    captured[fd] += chunk[: max(room, 0)]
                    dropped[fd] += max(len(chunk) - max(room, 0), 0)
        out_text = _decode(captured[out.fileno()], dropped[out.fileno()])
        err_text = _decode(captured[err.fileno()], dropped[err.fileno()])
        out.close()
        err.close()
        return out_text, err_text, timed_out


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _decode(data: bytearray, dropped: int) -> str:
    text = bytes(data).decode("utf-8", errors="replace")
    if dropped:
        text += f"\n[output truncated: {dropped} more bytes]"
    return text


class NsenterRunner:
    """Runs a command in the host's namespaces (PID 1's), from inside the agent's container.

    `target` exists for tests, which cannot enter the namespaces of a sandbox's PID 1.
    """

    def __init__(self, inner: Runner | None = None, *, target: int = 1) -> None:
        self.inner: Runner = inner if inner is not None else DirectRunner()
        self.prefix = nsenter_prefix(target)

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        return self.inner.run((*self.prefix, *_check_argv(argv)), timeout=timeout)


def nsenter_prefix(target: int = 1) -> tuple[str, ...]:
    return ("nsenter", "-t", str(target), *NSENTER_PREFIX[3:])
