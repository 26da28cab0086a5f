"""containerd's configuration as containerd itself reads it: which socket, which certs.d.

Pure: it takes the parsed TOML of config.toml and of its `imports` (already read by the node
layer) and the runtime's major version, and answers the two questions the agent asks —
where is the CRI socket, and is there ONE directory whose `<host>/` subdirectory the CRI
pull path reads (registry scope), or why not. Measured on containerd 1.6.20, 2.1.9 and
2.3.4 (shared/LAB.md):

- config `version` 1/2 (1.x), 3 (2.0+), 4 (2.3+). The socket is `[grpc] address` up to
  version 3 and `[plugins.'io.containerd.server.v1.grpc'] address` in version 4.
- The CRI registry table: `plugins."io.containerd.grpc.v1.cri".registry` (1.x, and a
  version 2 file migrated by 2.x), `plugins."io.containerd.cri.v1.images".registry` (2.x).
  A version 3 file with both: the 1.x table wins (migration at load). Version 4 ignores
  the 1.x table.
- `config_path = "a:b"`: 1.x reads each directory in turn; 2.x's default pull path
  (the transfer service) reads the whole string as ONE directory, so neither works unless
  `use_local_image_pull = true`. No `config_path` on 2.x: no certs.d is read at all.
- `imports`: globs, relative to the importing file's directory, merged in order, later
  files overriding earlier ones table by table.
"""

from __future__ import annotations

import posixpath
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.runtime_kinds import BY_NAME

DEFAULT_SOCKET = BY_NAME["containerd"].default_sockets[0]
V1_CRI = "io.containerd.grpc.v1.cri"
V2_IMAGES = "io.containerd.cri.v1.images"
V4_GRPC = "io.containerd.server.v1.grpc"
MAX_IMPORT_DEPTH = 8


def dig(table: Any, keys: Sequence[str]) -> Any:
    """table[k1][k2]... or None when a level is missing or not a table."""
    for key in keys:
        if not isinstance(table, Mapping):
            return None
        table = table.get(key)
    return table


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """containerd's import merge: tables merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = merge(old, value)
        else:
            merged[key] = value
    return merged


def config_version(config: Mapping[str, Any] | None) -> int:
    """The schema version the file declares (containerd treats a missing one as 1)."""
    value = dig(config, ("version",))
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def import_patterns(config: Mapping[str, Any] | None, path: str) -> tuple[str, ...]:
    """The `imports` of the file at `path`, made absolute (relative to its directory)."""
    value = dig(config, ("imports",))
    if not isinstance(value, list):
        return ()
    base = posixpath.dirname(path)
    return tuple(
        item if item.startswith("/") else posixpath.normpath(posixpath.join(base, item))
        for item in value
        if isinstance(item, str) and item.strip()
    )


def socket_address(config: Mapping[str, Any] | None) -> str:
    """The CRI socket path for this schema version (default when unset)."""
    keys = ("plugins", V4_GRPC, "address") if config_version(config) >= 4 else ("grpc", "address")
    value = dig(config, keys)
    if isinstance(value, str) and value.strip():
        address = value.strip()
        return address.removeprefix("unix://")
    return DEFAULT_SOCKET


@dataclass(frozen=True)
class RegistryDirs:
    """What containerd's CRI pull path reads for per-registry trust.

    `directory` is the single certs.d root to write `<host>/` under, or None; `reason` says
    why not (an operator reads it in CATrustFailed and in `install` output)."""

    directory: str | None
    reason: str
    table: str  # the TOML table the value came from ("" when unset)
    config_path: str  # the raw value ("" when unset)


def _registry_table(config: Mapping[str, Any] | None, major: int | None) -> tuple[str, Any]:
    version = config_version(config)
    v1 = dig(config, ("plugins", V1_CRI, "registry", "config_path"))
    v2 = dig(config, ("plugins", V2_IMAGES, "registry", "config_path"))
    legacy = dig(config, ("plugins", "cri", "registry", "config_path"))
    if version <= 1 and legacy is not None:
        return 'plugins."cri".registry', legacy
    if major is not None and major < 2:
        # containerd 1.x knows only the 1.x tables; a 2.x table is silently ignored.
        return (f'plugins."{V1_CRI}".registry', v1) if v1 is not None else ("", None)
    if version >= 4:
        return (f'plugins."{V2_IMAGES}".registry', v2) if v2 is not None else ("", None)
    if v1 is not None:  # versions 2 and 3: the 1.x table is migrated over the 2.x one
        return f'plugins."{V1_CRI}".registry', v1
    if v2 is not None:
        return f'plugins."{V2_IMAGES}".registry', v2
    return "", None


def _local_image_pull(config: Mapping[str, Any] | None) -> bool:
    return dig(config, ("plugins", V2_IMAGES, "use_local_image_pull")) is True


def registry_dirs(config: Mapping[str, Any] | None, major: int | None) -> RegistryDirs:
    """Which certs.d root the CRI pulls of a containerd of this major version read.

    `major` is None when the version is unknown (no CRI answer, no Node object): then only
    what is right on both generations is accepted.
    """
    table, value = _registry_table(config, major)
    if not isinstance(value, str) or not value.strip():
        why = "config_path is not set"
        if value is not None:
            why = f"config_path under [{table}] is empty or not a string"
        return RegistryDirs(None, f"containerd reads no certs.d directory: {why}", table, "")
    raw = value.strip()
    dirs = [d.strip() for d in raw.split(":") if d.strip()]
    if len(dirs) == 1:
        return RegistryDirs(dirs[0], f"config_path = {raw!r} under [{table}]", table, raw)
    if major is not None and major < 2:
        return RegistryDirs(
            dirs[0], f"config_path = {raw!r} under [{table}]; 1.x reads {dirs[0]} first", table, raw
        )
    if major is not None and _local_image_pull(config):
        return RegistryDirs(
            dirs[0],
            f"config_path = {raw!r} with use_local_image_pull = true: {dirs[0]} is read first",
            table,
            raw,
        )
    who = "containerd 2.x" if major is not None else "containerd (version unknown, maybe 2.x)"
    return RegistryDirs(
        None,
        f"config_path = {raw!r} under [{table}] lists several directories; the CRI pull of "
        f"{who} (transfer service) reads that string as one directory, so neither is used. "
        f'Set a single directory (or use_local_image_pull = true under [plugins."{V2_IMAGES}"])',
        table,
        raw,
    )


def major_version(runtime_version: str) -> int | None:
    """`containerd://1.6.20`, `v1.6.20`, `2.1.9+unknown` -> 1 / 2; None when unreadable."""
    text = runtime_version.rpartition("://")[2].strip().lstrip("v")
    head = text.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def hosts_toml_governs(data: bytes, major: int | None) -> bool:
    """Does this `certs.d/<host>/hosts.toml` switch off the side-by-side `*.crt` files?

    Measured on 1.6.20 and 2.1.9 (tests/e2e/test_containerd_configs_e2e.py): a 0-byte or
    unparsable file is ignored by both (they fall back to `*.crt`); 1.x also ignores one
    without a `[host."..."]` table ("invalid host tree"); 2.x obeys any parsable, non-empty
    file, even one holding only a comment or `server = ...`. Unknown version: the stricter.
    """
    if not data:
        return False
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        return False
    if major is not None and major < 2:
        return isinstance(parsed.get("host"), Mapping) and bool(parsed["host"])
    return True
