"""Mountpoints the lab must create on the real disk, shared safely between sessions.

`/run/containerd` and `/var/lib/ca-trust-agent` do not exist on this machine, so a sandbox
creates them to mount over. Removing such a directory while another session (a second
pytest run, a helper's lab, the demo) has its own private mount on it detaches that mount
in the other namespace too: its containerd loses its socket directory mid-test (measured,
LAB.md). So each user registers itself under a lock, and the directory is removed only by
the last live user, and only when it is empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

STATE = Path("/run/lock/ca-trust-agent-lab-mountpoints")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holders(path: str) -> Path:
    return STATE / path.strip("/").replace("/", "-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(path: str) -> bool:
    """Make sure `path` exists and register this process as a user of it. True when the
    lab made the directory (this session or another one still using it): it is then the
    last user's to remove, with `release`. False for a directory of the machine's own."""
    with _locked():
        holders = _holders(path)
        holders.mkdir(exist_ok=True)
        created = holders / ".created"
        if not os.path.exists(path):
            os.makedirs(path)
            created.touch()
        if not created.exists():
            return False
        (holders / str(os.getpid())).touch()
        return True


def release(path: str) -> bool:
    """Unregister; remove `path` when no live process uses it any more and it is empty.
    False when the directory should be gone but could not be removed."""
    with _locked():
        holders = _holders(path)
        with contextlib.suppress(FileNotFoundError):
            (holders / str(os.getpid())).unlink()
        live = []
        for entry in list(holders.iterdir()) if holders.exists() else []:
            if entry.name == ".created":
                continue
            if entry.name.isdigit() and _alive(int(entry.name)):
                live.append(entry)
            else:
                entry.unlink()  # a session that was killed: it uses nothing any more
        if live or not (holders / ".created").exists():
            return True
        with contextlib.suppress(OSError):
            os.rmdir(path)
        if os.path.exists(path):
            return False
        (holders / ".created").unlink()
        return True
