"""Files under the host root: link-refusing walks, atomic writes, locks and removals.

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
import stat
from collections.abc import Callable, Iterator, Sequence

from agent.core.errors import StoreError
from agent.node import failpoints
from agent.node.host.staging import STAGING_DIR, TMP_PREFIX, unlink_temps, write_staged

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
        created so that it can be undone). The temp file is written in a private staging
        subdirectory (`STAGING_DIR`) and renamed in: trust tools read every file of the
        directories they scan (p11-kit loads dot-files in `anchors/` too), so a temp file a
        kill left *beside* our file would become a trusted anchor at the next refresh. No tool
        reads subdirectories of an anchor or certs.d directory (p11-kit skips them, Debian and
        the runtimes only take `*.crt`), and a subdirectory is always on the same filesystem
        as its directory, so rename() stays atomic even when the directory is a mount point.
        """
        parts = split_host_path(path)
        if not parts:
            raise StoreError("cannot write to the host root itself", kind="io")
        name = parts[-1]
        with self._open_dir(parts[:-1]) as dfd:
            assert dfd is not None
            self._check_target(dfd, path, name)
            tmp = TMP_PREFIX + secrets.token_hex(8)
            try:
                sfd = write_staged(dfd, tmp, data, mode)
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror}", kind="io") from exc
            try:
                failpoints.hit("write:temp-written")
                # rename() replaces a link rather than following it, so a link planted after
                # the check above still cannot redirect the write.
                os.replace(tmp, name, src_dir_fd=sfd, dst_dir_fd=dfd)
                failpoints.hit("write:renamed")
                os.fsync(dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=sfd)
                raise StoreError(f"cannot write {path}: {exc.strerror}", kind="io") from exc
            finally:
                os.close(sfd)
                # Empty unless another write is under way or a killed one left its temp file.
                with contextlib.suppress(OSError):
                    os.rmdir(STAGING_DIR, dir_fd=dfd)

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
        """Delete the temp files killed writes left in directory `path`; returns how many.

        Ours by name: `STAGING_DIR/.ca-trust-agent-tmp-*` (and the staging dir itself), and
        `.ca-trust-agent-tmp-*` directly in `path`, where versions before the staging dir
        wrote them. They would keep a directory we created from being removed, and one
        directly in an anchors dir is read by p11-kit as an anchor.
        """
        with self._open_dir(split_host_path(path), missing_ok=True) as dfd:
            if dfd is None:
                return 0
            removed = unlink_temps(dfd)
            try:
                sfd = os.open(STAGING_DIR, _DIR_FLAGS, dir_fd=dfd)
            except OSError:
                return removed  # none, or not a directory we could have made
            try:
                removed += unlink_temps(sfd)
            finally:
                os.close(sfd)
            with contextlib.suppress(OSError):
                os.rmdir(STAGING_DIR, dir_fd=dfd)
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
