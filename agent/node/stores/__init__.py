"""Where trust goes: the OS store (`system`) or a runtime's per-registry directory (`registry`).

A store only computes *where* and *what* (a `Placement`); writing it is the engine's job
through `HostFS`, and `check_placement` says beforehand whether writing is safe.
"""

from __future__ import annotations

from collections.abc import Collection

from agent.core.errors import StoreError
from agent.core.placement import FILE_PREFIX, Placement, file_name, safe
from agent.node.host import HostFS
from agent.node.runtimes.registry import REGISTRY


def check_placement(
    fs: HostFS, placement: Placement, *, ours: Collection[str], major: int | None = None
) -> None:
    """Raise StoreError if writing `placement` would be unsafe or would not take effect.

    `ours` are host paths the ledger says we wrote. A file we did not write is never
    overwritten unless it already holds exactly our bytes.
    """
    dir_kind = fs.lstat_kind(placement.directory)
    if dir_kind == "symlink":
        raise StoreError(
            f"{placement.directory} (or a directory above it) is a symbolic link; "
            "refusing to write through it",
            kind="symlink",
        )
    if dir_kind not in (None, "dir"):
        raise StoreError(f"{placement.directory} exists and is not a directory", kind="conflict")
    runtime = REGISTRY.get(placement.store)  # None: the OS store
    if runtime is not None:
        runtime.check_placement(fs, placement, ours=ours, dir_exists=dir_kind == "dir", major=major)
    file_kind = fs.lstat_kind(placement.file)
    if file_kind is None:
        return
    if file_kind != "file":
        raise StoreError(
            f"{placement.file} exists and is a {file_kind}, not a regular file; "
            "refusing to replace it",
            kind="symlink",
        )
    if placement.file in ours:
        return
    if fs.read_bytes(placement.file) != placement.content:
        raise StoreError(
            f"{placement.file} exists, was not written by ca-trust-agent and holds other "
            "certificates; move it away or remove it first",
            kind="conflict",
        )


from agent.node.stores.registry import RegistryStore, registry_store  # noqa: E402
from agent.node.stores.system import SystemStore, system_store  # noqa: E402

__all__ = [
    "FILE_PREFIX",
    "Placement",
    "RegistryStore",
    "SystemStore",
    "check_placement",
    "file_name",
    "registry_store",
    "safe",
    "system_store",
]
