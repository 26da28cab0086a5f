"""The ledger: what the agent installed on this node, and what it was about to do.

It is an intent log: an entry is written as "installing" before any trust file, switched to
"installed" after refresh and verify, and "removing" before files are deleted. A run that
finds a non-final state knows exactly which files and directories to converge. It is the
only record of what we may delete, so a corrupt ledger is never overwritten silently.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from agent.core.errors import LedgerError
from agent.core.ledger_entry import LedgerEntry
from agent.node.host import HostFS

LEDGER_DIR = "/var/lib/ca-trust-agent"
LEDGER_PATH = f"{LEDGER_DIR}/ledger.json"
VERSION = 1


class Ledger:
    def __init__(self, fs: HostFS) -> None:
        self.fs = fs

    @property
    def path(self) -> str:
        return LEDGER_PATH

    def entries(self) -> dict[str, LedgerEntry]:
        """All entries by endpoint key; empty when there is no ledger yet."""
        data = self.fs.read_bytes(LEDGER_PATH, limit=16 << 20)
        if data is None:
            return {}
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("top level is not an object")
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, this agent reads {VERSION}")
            raw = doc.get("entries")
            if not isinstance(raw, dict):
                raise ValueError("'entries' is not an object")
            result = {}
            for key, value in raw.items():
                entry = LedgerEntry.from_json(value)
                if entry.endpoint != key:
                    raise ValueError(f"entry {key!r} names endpoint {entry.endpoint!r}")
                result[key] = entry
            return result
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise LedgerError(self._corrupt_message(str(exc)), kind="corrupt") from exc

    def _corrupt_message(self, why: str) -> str:
        real = self.fs.real(LEDGER_PATH)
        return (
            f"the ledger {real} is unreadable ({why}). It is left untouched: nothing will be "
            "installed or removed until it is fixed. To recover, inspect it, then either repair "
            f"it or move it aside (mv {real} {real}.bad) to start empty; files named "
            "ca-trust-agent-* that it listed stay on disk and can be removed by hand "
            "(then run the store's refresh command)"
        )

    def put(self, entry: LedgerEntry) -> None:
        with self._locked():
            current = self.entries()
            current[entry.endpoint] = entry
            self._write(current)

    def delete(self, endpoint: str) -> None:
        """Drop an entry; deleting what is not there is not an error (convergence re-runs)."""
        with self._locked():
            current = self.entries()
            if current.pop(endpoint, None) is not None:
                self._write(current)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The daemon and a CLI `install` on the same node must not lose each other's entry.
        self.fs.makedirs(LEDGER_DIR, mode=0o700)
        with self.fs.lock(LEDGER_DIR):
            yield

    def _write(self, entries: dict[str, LedgerEntry]) -> None:
        doc = {"version": VERSION, "entries": {k: e.to_json() for k, e in entries.items()}}
        text = json.dumps(doc, sort_keys=True, indent=2) + "\n"
        # Under the lock no other ledger write is under way: a temp file in the staging dir
        # is a killed write's, and would otherwise stay forever.
        self.fs.remove_temp_files(LEDGER_DIR)
        self.fs.write_atomic(LEDGER_PATH, text.encode("utf-8"), mode=0o600)
