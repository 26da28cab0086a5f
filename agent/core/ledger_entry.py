"""One ledger entry: what the agent installed for one endpoint, or was about to.

A value, parsed strictly: a ledger we cannot fully understand must never drive deletions.
`agent.node.ledger` stores these in the node's ledger file.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass, fields
from typing import Any

STATES = ("installing", "installed", "removing")
_OPTIONAL = ("edits", "previous", "restore")


@dataclass(frozen=True)
class FileEdit:
    """A file we did not write but changed (policy hostsToml: append): both versions, so
    `remove` restores the original byte for byte, and only over our own edit."""

    path: str
    original: bytes
    edited: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "path": self.path,
            "original": base64.b64encode(self.original).decode("ascii"),
            "edited": base64.b64encode(self.edited).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any) -> FileEdit:
        if not isinstance(data, dict) or set(data) != {"path", "original", "edited"}:
            raise ValueError("an edit must be {path, original, edited}")
        if not all(isinstance(v, str) for v in data.values()):
            raise ValueError("an edit holds something other than strings")
        try:
            original = base64.b64decode(data["original"], validate=True)
            edited = base64.b64decode(data["edited"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"an edit is not base64: {exc}") from exc
        return cls(data["path"], original, edited)


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
    source: str  # "fetched" | "ca-file" | "policy" | "interception" (policy interception)
    edits: tuple[FileEdit, ...] = ()  # files of others we changed (hostsToml: append)
    # Only on an "installing" intent that replaces an installed entry (a rotation, a new
    # anchor): that entry, and the bytes our files held under it, so a crash half-way
    # recovers to the old trust instead of to none.
    previous: LedgerEntry | None = None
    restore: tuple[FileEdit, ...] = ()

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"ledger state {self.state!r} is not one of {', '.join(STATES)}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in _OPTIONAL:
            del data[optional]
        # written only when used: ledgers without them keep their shape
        if self.edits:
            data["edits"] = [e.to_json() for e in self.edits]
        if self.previous is not None:
            data["previous"] = self.previous.to_json()
        if self.restore:
            data["restore"] = [e.to_json() for e in self.restore]
        return data

    @classmethod
    def from_json(cls, data: Any) -> LedgerEntry:
        """Strictly typed: a ledger we cannot fully understand must not drive deletions."""
        if not isinstance(data, dict):
            raise ValueError("entry is not an object")
        expected = {f.name for f in fields(cls)} - set(_OPTIONAL)
        edits = tuple(FileEdit.from_json(e) for e in _list(data.get("edits", []), "edits"))
        restore = tuple(FileEdit.from_json(e) for e in _list(data.get("restore", []), "restore"))
        previous = cls.from_json(data["previous"]) if "previous" in data else None
        if previous is not None and (previous.previous is not None or previous.restore):
            raise ValueError("a previous entry nests another one")
        data = {k: v for k, v in data.items() if k not in _OPTIONAL}
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
        return cls(**values, edits=edits, previous=previous, restore=restore)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{name} is not a list")
    return value


def _strings(value: Any, name: str) -> tuple[str, ...]:
    items = _list(value, name)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} holds something other than strings")
    return tuple(items)
