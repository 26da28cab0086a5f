"""One ledger entry: what the agent installed for one endpoint, or was about to.

A value, parsed strictly: a ledger we cannot fully understand must never drive deletions.
`agent.node.ledger` stores these in the node's ledger file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

STATES = ("installing", "installed", "removing")


@dataclass(frozen=True)
class LedgerEntry:
    endpoint: str  # HostPort.key of the host whose chain we trust: the ledger key
    registry: str  # HostPort.key of the image registry (== endpoint from the CLI)
    state: str  # "installing" | "installed" | "removing"
    scope: str
    stores: tuple[str, ...]
    files: tuple[str, ...]  # host paths we wrote
    dirs: tuple[str, ...]  # host paths of directories we created (removed if empty)
    refresh: tuple[tuple[str, ...], ...]
    anchor_subject: str
    sha256: str
    not_after: str  # ISO 8601 UTC
    installed_at: str
    restarted: tuple[str, ...]
    source: str  # "fetched" | "ca-file" | "policy"

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"ledger state {self.state!r} is not one of {', '.join(STATES)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> LedgerEntry:
        """Strictly typed: a ledger we cannot fully understand must not drive deletions."""
        if not isinstance(data, dict):
            raise ValueError("entry is not an object")
        expected = {f.name for f in fields(cls)}
        if set(data) != expected:
            missing, extra = expected - set(data), set(data) - expected
            raise ValueError(f"fields missing {sorted(missing)} / unknown {sorted(extra)}")
        values: dict[str, Any] = {}
        for name in expected:
            value = data[name]
            if name == "refresh":
                values[name] = tuple(_strings(v, name) for v in _list(value, name))
            elif name in ("stores", "files", "dirs", "restarted"):
                values[name] = _strings(value, name)
            elif isinstance(value, str):
                values[name] = value
            else:
                raise ValueError(f"{name} is not a string")
        return cls(**values)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{name} is not a list")
    return value


def _strings(value: Any, name: str) -> tuple[str, ...]:
    items = _list(value, name)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} holds something other than strings")
    return tuple(items)
