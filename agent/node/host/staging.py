"""Temp files of atomic writes, kept where no trust tool reads them.

`HostFS.write_atomic` writes into `STAGING_DIR`, a private subdirectory of the target
directory, and renames the finished file in. Both names start with `TMP_PREFIX`, so every
cleanup and check that knows our temp names knows the staging directory too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

TMP_PREFIX = ".ca-trust-agent-tmp-"
STAGING_DIR = TMP_PREFIX + "staging"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_staged(dfd: int, tmp: str, data: bytes, mode: int) -> int:
    """Write `data` to `STAGING_DIR/tmp` below `dfd`; return the staging dir's fd.

    A concurrent writer removes the staging directory when it is done; creating it again
    and retrying covers the window between our mkdir and our open.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(5):
        with contextlib.suppress(FileExistsError):
            os.mkdir(STAGING_DIR, 0o700, dir_fd=dfd)
        try:
            # O_NOFOLLOW: a link planted at the staging name must not redirect the write.
            sfd = os.open(STAGING_DIR, _DIR_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            continue
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=sfd)
        except FileNotFoundError:
            os.close(sfd)  # removed under us after the open: make it again
            if attempt == 4:
                raise
            continue
        except OSError:
            os.close(sfd)
            raise
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fd, mode)
                os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=sfd)
            os.close(sfd)
            raise
        return sfd
    raise FileNotFoundError(errno.ENOENT, "staging directory keeps disappearing")


def unlink_temps(dfd: int) -> int:
    removed = 0
    for name in os.listdir(dfd):
        if not name.startswith(TMP_PREFIX):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(name, dir_fd=dfd).st_mode):
                os.unlink(name, dir_fd=dfd)
                removed += 1
    return removed
