"""The OS trust store: which anchor directory and refresh command, from `/etc/os-release`.

Adding a CA here makes every TLS client on the node trust it, and the runtimes only see it
after a restart (Go caches the system roots on first use); registry scope is preferred.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from dataclasses import dataclass

from agent.core.errors import StoreError
from agent.core.hostport import HostPort
from agent.core.os_families import OsFamily, family_of, known_families
from agent.core.placement import Placement, file_name
from agent.node.host import HostFS
from agent.node.stores.bundle import check_bundle, files_holding

OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=VALUE lines, values quoted or not, `#` comments; malformed lines are skipped
    (os-release(5) tells readers to ignore what they do not understand)."""
    fields: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        key = key.strip()
        if not key.isidentifier():
            continue
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            continue
        fields[key] = " ".join(words)
    return fields


@dataclass(frozen=True)
class SystemStore:
    os_id: str
    family: str
    anchor_dir: str
    refresh: tuple[str, ...]
    bundle: str
    refresh_after_remove: tuple[str, ...] | None = None

    @classmethod
    def of(cls, os_id: str, family: OsFamily) -> SystemStore:
        return cls(
            os_id=os_id,
            family=family.name,
            anchor_dir=family.anchor_dir,
            refresh=family.refresh,
            bundle=family.bundle,
            refresh_after_remove=family.refresh_after_remove,
        )

    def placement(
        self, endpoint: HostPort, pem: bytes, registry: HostPort | None = None
    ) -> Placement:
        # `registry` does not change where an OS anchor goes: the OS store is not per registry.
        del registry
        return Placement(
            store="system",
            scope="system",
            directory=self.anchor_dir,
            file=f"{self.anchor_dir}/{file_name(endpoint.key)}",
            content=pem,
            refresh=self.refresh,
            needs_restart=True,
            verify_cafile=self.bundle,
            refresh_after_remove=self.refresh_after_remove,
        )


def system_store(fs: HostFS) -> SystemStore:
    """The OS store of the host under `fs`; StoreError("unsupported-os") when unknown."""
    for path in OS_RELEASE_PATHS:
        data = fs.read_bytes(path, limit=64 * 1024)
        if data is not None:
            break
    else:
        raise StoreError(
            f"cannot tell the host's OS: neither {' nor '.join(OS_RELEASE_PATHS)} exists "
            f"under {fs.root}",
            kind="unsupported-os",
        )
    fields = parse_os_release(data.decode("utf-8", errors="replace"))
    os_id = fields.get("ID", "").lower()
    id_like = fields.get("ID_LIKE", "").lower()
    found = family_of(os_id, id_like)
    if found is None:
        raise StoreError(
            f"unsupported OS ID={os_id or '(none)'!s}"
            + (f" ID_LIKE={id_like!r}" if id_like else "")
            + f" in {path}: system scope knows the {known_families()}; use registry scope",
            kind="unsupported-os",
        )
    return SystemStore.of(os_id, found)


def check_refreshed_bundle(
    fs: HostFS,
    sha256: str,
    *,
    present: bool,
    refresh: tuple[str, ...],
    ours: Collection[str],
    shared: bool = False,
) -> None:
    """After `refresh` ran for a system-scope install (`present`) or removal: the bundle the
    runtimes read must hold the anchor, or no longer hold it. ApplyError otherwise.

    After a removal the anchor may rightly stay when something else provides it: another
    ledger entry with the same CA (`shared`) or a file of the operator's in the anchor dir.
    """
    others: list[str] = []
    if not present:
        if shared:
            others.append("another ledger entry")
        else:
            anchor_dir = system_store(fs).anchor_dir
            others = files_holding(fs, anchor_dir, sha256, skip=ours)
    check_bundle(fs, sha256, present=present, refresh=refresh, other_sources=others)
