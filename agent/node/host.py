"""Node effects: files under a host root and commands on the host.

Everything the agent does to a node goes through `HostFS` (files) or a `Runner` (commands),
so tests swap the root for a temp tree and the runner for a recording double.

The agent runs privileged with the node's filesystem mounted at a host root (`/host` in the
DaemonSet, `/` on a machine). Anything that writes refuses to pass through a symbolic link
below that root: a link planted at `/etc/containerd/certs.d` would otherwise turn a root-owned
write into a write anywhere. Reads follow links, but resolve them inside the root as a chroot
would, because real hosts link `/etc/os-release` and `/var/run` and those must keep working.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import selectors
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from agent.core.errors import StoreError
from agent.node import failpoints

TMP_PREFIX = ".ca-trust-agent-tmp-"
OUTPUT_LIMIT = 64 * 1024
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSENTER_PREFIX = ("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--")

_MAX_LINKS = 40  # as the kernel's ELOOP limit
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_host_path(path: str) -> tuple[str, ...]:
    """Validate a host-absolute path and return its components.

    Host paths come from configuration files on the node (containerd's config_path) and from
    registry names, so `..`, NUL and relative paths are refused here, once.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise StoreError(f"host path {path!r} is not absolute", kind="io")
    if "\0" in path:
        raise StoreError(f"host path {path!r} contains a NUL byte", kind="io")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise StoreError(f"host path {path!r} contains '..'", kind="io")
    return parts


class HostFS:
    """The node's filesystem seen through a host root."""

    def __init__(self, root: str = "/") -> None:
        # The root itself may be a link (a bind mount path, /tmp on some systems): resolve it
        # once; only what lies below it is policed.
        self.root = os.path.realpath(root)

    def __repr__(self) -> str:
        return f"HostFS(root={self.root!r})"

    def real(self, path: str) -> str:
        """Host-absolute `/etc/x` -> `<root>/etc/x` (no link resolution)."""
        parts = split_host_path(path)
        return os.path.join(self.root, *parts) if parts else self.root

    def resolve(self, path: str) -> str:
        """The real path of `path` with links followed inside the root, as chroot would.

        Missing trailing components are kept as they are; used for reads and for sockets.
        """
        return os.path.join(self.root, *self._resolve_parts(path))

    def _resolve_parts(self, path: str) -> list[str]:
        pending = list(split_host_path(path))
        done: list[str] = []
        links = 0
        while pending:
            name = pending.pop(0)
            if name == "..":  # only from a link target: clamp at the root like chroot
                if done:
                    done.pop()
                continue
            candidate = os.path.join(self.root, *done, name)
            try:
                st = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                # Nothing below a missing component exists; ".." must not walk back out.
                return [*done, name, *(p for p in pending if p != "..")]
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise StoreError(f"too many symbolic links resolving {path!r}", kind="symlink")
            target = os.readlink(candidate)
            if "\0" in target:
                raise StoreError(f"bad link target at {candidate}", kind="symlink")
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        return done

    def read_bytes(self, path: str, *, limit: int = 1 << 20) -> bytes | None:
        """The file's bytes, or None when it does not exist. Larger than `limit` -> StoreError."""
        real = self.resolve(path)
        try:
            # O_NONBLOCK: a FIFO planted where a config file should be must not hang the agent.
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path} ({real}): {exc.strerror}", kind="io") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)  # a directory or FIFO where a node file should be: never read it
            raise StoreError(f"{path} ({real}) is not a regular file", kind="io")
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise StoreError(f"{path} ({real}) is larger than {limit} bytes", kind="io")
        return data

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.resolve(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.resolve(path))

    def is_socket(self, path: str) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(self.resolve(path)).st_mode)
        except OSError:
            return False

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a directory; empty when it does not exist."""
        try:
            return sorted(os.listdir(self.resolve(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def lstat_kind(self, path: str) -> str | None:
        """What is at `path` without following any link: file, dir, symlink, other or None.

        A link at a directory component on the way is reported as "symlink" too: that is what
        a writer would be tricked by.
        """
        parts = split_host_path(path)
        current = self.root
        for i, name in enumerate(parts):
            current = os.path.join(current, name)
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                return "symlink"
            if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
                return None
        if not parts:
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        return "dir" if stat.S_ISDIR(st.st_mode) else "other"

    # --- writes: never through a link -------------------------------------------------------

    @contextlib.contextmanager
    def _open_dir(self, parts: Sequence[str], *, missing_ok: bool = False) -> Iterator[int | None]:
        """An fd on the directory `parts`, walked with O_NOFOLLOW from the root.

        Yields None when a component is missing and `missing_ok`.
        """
        fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            for i, name in enumerate(parts):
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if missing_ok:
                        yield None
                        return
                    here = "/" + "/".join(parts[: i + 1])
                    raise StoreError(f"directory {here} does not exist", kind="io") from None
                except OSError as exc:
                    raise self._walk_error(parts[: i + 1], fd, name, exc) from exc
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _walk_error(self, parts: Sequence[str], fd: int, name: str, exc: OSError) -> StoreError:
        here = "/" + "/".join(parts)
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                return StoreError(
                    f"refusing to write through symbolic link {here} under {self.root}",
                    kind="symlink",
                )
        if exc.errno == errno.ENOTDIR:
            return StoreError(f"{here} exists and is not a directory", kind="conflict")
        return StoreError(f"cannot open directory {here}: {exc.strerror}", kind="io")

    def makedirs(self, path: str, mode: int = 0o755) -> tuple[str, ...]:
        """Create `path` and missing parents; return the host paths created, outermost first."""
        parts = split_host_path(path)
        created: list[str] = []
        fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            for i, name in enumerate(parts):
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                    # mkdir's mode is filtered by the umask; the caller's mode is what it asked.
                    os.chmod(name, mode, dir_fd=fd, follow_symlinks=False)
                    created.append("/" + "/".join(parts[: i + 1]))
                except FileExistsError:
                    pass
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise self._walk_error(parts[: i + 1], fd, name, exc) from exc
                if created:
                    os.fsync(fd)
                os.close(fd)
                fd = nxt
        finally:
            os.close(fd)
        return tuple(created)

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace `path` with `data` so readers see the old or the new file, never a mix.

        The parent directory must exist (create it with `makedirs`, which reports what it
        created so that it can be undone).
        """
        parts = split_host_path(path)
        if not parts:
            raise StoreError("cannot write to the host root itself", kind="io")
        name = parts[-1]
        with self._open_dir(parts[:-1]) as dfd:
            assert dfd is not None
            self._check_target(dfd, path, name)
            tmp = TMP_PREFIX + secrets.token_hex(8)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fchmod(fd, mode)
                    os.fsync(fd)
                failpoints.hit("write:temp-written")
                # rename() replaces a link rather than following it, so a link planted after
                # the check above still cannot redirect the write.
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                failpoints.hit("write:renamed")
                os.fsync(dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise StoreError(f"cannot write {path}: {exc.strerror}", kind="io") from exc

    def _check_target(self, dfd: int, path: str, name: str) -> None:
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"refusing to replace symbolic link {path}", kind="symlink")
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} exists and is not a regular file", kind="conflict")

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """Hold an exclusive flock on the existing directory `path` (reached without links).

        Serialises read-modify-write of shared state between the daemon and a CLI run;
        locking the directory leaves no lock file behind.
        """
        with self._open_dir(split_host_path(path)) as fd:
            assert fd is not None
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield  # closing the fd releases the flock

    @contextlib.contextmanager
    def _entry(
        self, path: str, is_kind: Callable[[int], bool], what: str
    ) -> Iterator[tuple[int, str] | None]:
        """(parent dir fd, name) of the entry at `path`, reached without following links;
        None when it is gone. A link there, or an entry of another kind, is refused."""
        parts = split_host_path(path)
        if not parts:
            raise StoreError("cannot remove the host root", kind="io")
        with self._open_dir(parts[:-1], missing_ok=True) as dfd:
            if dfd is None:
                yield None
                return
            try:
                st = os.lstat(parts[-1], dir_fd=dfd)
            except FileNotFoundError:
                yield None
                return
            if stat.S_ISLNK(st.st_mode):
                raise StoreError(f"refusing to remove symbolic link {path}", kind="symlink")
            if not is_kind(st.st_mode):
                raise StoreError(f"{path} is not {what}", kind="conflict")
            yield dfd, parts[-1]

    def remove_file(self, path: str) -> bool:
        """Delete a regular file; False when already gone. Links are refused, not removed."""
        with self._entry(path, stat.S_ISREG, "a regular file") as found:
            if found is None:
                return False
            dfd, name = found
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StoreError(f"cannot remove {path}: {exc.strerror}", kind="io") from exc
            os.fsync(dfd)
            return True

    def remove_temp_files(self, path: str) -> int:
        """Delete `.ca-trust-agent-tmp-*` files a killed write left in directory `path`.

        Ours by name; no trust tool reads them (they are not *.crt), but they would keep a
        directory we created from being removed. Returns how many went.
        """
        removed = 0
        with self._open_dir(split_host_path(path), missing_ok=True) as dfd:
            if dfd is None:
                return 0
            for name in os.listdir(dfd):
                if not name.startswith(TMP_PREFIX):
                    continue
                st = os.lstat(name, dir_fd=dfd)
                if stat.S_ISREG(st.st_mode):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dfd)
                        removed += 1
        return removed

    def remove_dir(self, path: str) -> bool:
        """Delete an empty directory; False when gone or not empty. Links are refused."""
        with self._entry(path, stat.S_ISDIR, "a directory") as found:
            if found is None:
                return False
            dfd, name = found
            try:
                os.rmdir(name, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return False
                raise StoreError(f"cannot remove {path}: {exc.strerror}", kind="io") from exc
            os.fsync(dfd)
            return True


# --- commands ---------------------------------------------------------------------------------


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
