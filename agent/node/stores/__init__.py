"""Where trust goes: the OS store (`system`) or a runtime's per-registry directory (`registry`).

A store only computes *where* and *what* (a `Placement`); writing it is the engine's job
through `HostFS`, and `check_placement` says beforehand whether writing is safe.
"""

from __future__ import annotations

from collections.abc import Collection

from agent.core.containerd_config import hosts_toml_governs
from agent.core.errors import StoreError
from agent.core.placement import FILE_PREFIX, Placement, file_name, safe
from agent.node.host import HostFS


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
    if dir_kind == "dir" and placement.store == "containerd":
        _check_hosts_toml(fs, placement, ours, major)
    if placement.store == "containerd":
        _check_port_directory(fs, placement)
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


def _check_hosts_toml(
    fs: HostFS, placement: Placement, ours: Collection[str], major: int | None
) -> None:
    """A hosts.toml that containerd obeys makes it ignore our `*.crt` beside it; one it
    ignores (empty, unparsable, or on 1.x without a host table) does not matter."""
    hosts = placement.directory.rstrip("/") + "/hosts.toml"
    kind = fs.lstat_kind(hosts)
    if kind is None or hosts in ours:
        return
    # anything but a regular file (a link, a directory) is not ours to judge: a conflict
    governs = kind != "file" or hosts_toml_governs(fs.read_bytes(hosts) or b"", major)
    if governs:
        raise StoreError(
            f"{hosts} exists: containerd ignores *.crt files in {placement.directory} when a "
            "hosts.toml is present, so our CA would have no effect. Add `ca = [...]` to that "
            "hosts.toml yourself, or use system scope",
            kind="conflict",
        )


def _check_port_directory(fs: HostFS, placement: Placement) -> None:
    """containerd looks up `certs.d/<host>_<port>_/` before `certs.d/<host>:<port>/` (its
    Windows-safe spelling), so an existing one hides ours entirely (seen on 1.6.20)."""
    parent, _, base = placement.directory.rstrip("/").rpartition("/")
    idx = base.rfind(":")
    if idx <= 0:
        return
    other = f"{parent}/{base[:idx]}_{base[idx + 1 :]}_"
    if fs.lstat_kind(other) is not None:
        raise StoreError(
            f"{other} exists: containerd reads it instead of {placement.directory}, so our CA "
            "would have no effect. Put the CA there yourself, or remove that directory",
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
