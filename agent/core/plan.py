"""Pure planning: what must happen on the node to install or remove one trust anchor.

The planner sees values only — placements, what is on disk now, what the ledger says —
and returns an ordered tuple of actions. `remediate` applies them through `host`. Keeping
the decision here makes `--dry-run` exact (it prints the very plan that would run) and
makes idempotency a comparison of bytes: same bytes on disk and in the ledger, no action.

Order matters for crash safety: the ledger records the intent (state "installing" /
"removing") before the first file changes, so a run that dies half-way leaves a ledger
entry that names every path it may have touched, and the next run converges.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from agent.core.errors import LedgerError
from agent.core.hostport import HostPort
from agent.core.ledger_entry import FileEdit, LedgerEntry
from agent.core.placement import FILE_PREFIX, Placement


@dataclass(frozen=True)
class MakeDir:
    path: str

    def describe(self) -> str:
        return f"create directory {self.path}"


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path} ({len(self.content)} bytes, mode {self.mode:04o})"


@dataclass(frozen=True)
class RemoveFile:
    path: str

    def describe(self) -> str:
        return f"remove {self.path}"


@dataclass(frozen=True)
class RemoveDir:
    """Remove a directory we created, only if it is empty by then."""

    path: str

    def describe(self) -> str:
        return f"remove directory {self.path} if empty"


@dataclass(frozen=True)
class Refresh:
    argv: tuple[str, ...]

    def describe(self) -> str:
        return "run " + " ".join(self.argv)


@dataclass(frozen=True)
class Verify:
    """A fresh TLS handshake to `target` trusting only `cafile`."""

    target: HostPort
    cafile: str
    timeout: float = 10.0
    proxy: str | None = None  # None: the agent's environment decides; "": direct

    def describe(self) -> str:
        via = f" through {self.proxy}" if self.proxy else ""
        return f"verify a TLS handshake to {self.target.key}{via} trusting only {self.cafile}"


@dataclass(frozen=True)
class Restart:
    runtime: str

    def describe(self) -> str:
        return f"restart {self.runtime} and wait until it answers"


@dataclass(frozen=True)
class RecordLedger:
    entry: LedgerEntry

    def describe(self) -> str:
        return f"record {self.entry.endpoint} in the ledger as {self.entry.state}"


@dataclass(frozen=True)
class DropLedger:
    endpoint: str

    def describe(self) -> str:
        return f"drop {self.endpoint} from the ledger"


Action = (
    MakeDir
    | WriteFile
    | RemoveFile
    | RemoveDir
    | Refresh
    | Verify
    | Restart
    | RecordLedger
    | DropLedger
)


@dataclass(frozen=True)
class DiskState:
    """What the planner needs to know about the node: bytes of each path of interest
    (None when absent) and which directories exist."""

    files: Mapping[str, bytes | None]
    dirs: frozenset[str]


def describe(action: Action) -> str:
    """One line per action, for --dry-run and logs."""
    return action.describe()


def _missing_dirs(path: str, existing: frozenset[str]) -> list[str]:
    """Directories between / and `path` that do not exist yet, outermost first."""
    missing: list[str] = []
    cur = path
    while cur not in ("/", "") and cur not in existing:
        missing.append(cur)
        cur = posixpath.dirname(cur)
    return list(reversed(missing))


def is_current(
    entry: LedgerEntry | None,
    placements: Sequence[Placement],
    disk: DiskState,
    edits: Sequence[FileEdit] = (),
) -> bool:
    """True when the ledger says installed and every file holds exactly the intended bytes."""
    if entry is None or entry.state != "installed":
        return False
    if set(entry.files) != {p.file for p in placements} or entry.edits != tuple(edits):
        return False
    if any(disk.files.get(e.path) != e.edited for e in edits):
        return False
    return all(disk.files.get(p.file) == p.content for p in placements)


def plan_install(
    entry: LedgerEntry,
    placements: Sequence[Placement],
    disk: DiskState,
    *,
    previous: LedgerEntry | None,
    restart_runtimes: Sequence[str],
    verify: Verify | None,
    edits: Sequence[FileEdit] = (),
) -> tuple[Action, ...]:
    """Actions that take the node from `disk` (+ `previous` ledger entry) to `entry`.

    `entry` is the final ledger record (state "installed"); the plan first records it as
    "installing" with the union of old and new paths, so an interrupted run can undo all.
    Files of a previous install that the new one does not use (scope changed) go away.
    """
    if is_current(previous, placements, disk, edits):
        return ()
    if previous is not None:
        check_ours(previous)
    old_files = tuple(previous.files) if previous else ()
    old_dirs = tuple(previous.dirs) if previous else ()
    new_files = tuple(p.file for p in placements)
    created: list[str] = []
    seen_dirs = set(disk.dirs)
    for p in placements:
        for d in _missing_dirs(p.directory, frozenset(seen_dirs)):
            created.append(d)
            seen_dirs.add(d)
    dirs = tuple(dict.fromkeys((*old_dirs, *created)))
    new_edit_paths = {e.path for e in edits}
    stale_edits = [e for e in (previous.edits if previous else ()) if e.path not in new_edit_paths]
    intent = replace(
        entry,
        state="installing",
        files=tuple(dict.fromkeys((*old_files, *new_files))),
        dirs=dirs,
        edits=(*edits, *stale_edits),  # every original an interrupted run may need back
    )
    intent = _with_way_back(intent, previous, placements, disk)
    actions: list[Action] = [RecordLedger(intent)]
    actions += [MakeDir(d) for d in created]
    for p in placements:
        if disk.files.get(p.file) != p.content:
            actions.append(WriteFile(p.file, p.content))
    # our CA file first, then the hosts.toml line naming it: containerd never sees a name
    # of a file that is not there yet
    actions += [WriteFile(e.path, e.edited) for e in edits if disk.files.get(e.path) != e.edited]
    actions += [WriteFile(e.path, e.original) for e in stale_edits]
    stale = [f for f in old_files if f not in new_files]
    actions += [RemoveFile(f) for f in stale]
    stale_dirs = [d for d in old_dirs if d not in created and not _holds_any(d, new_files)]
    actions += [RemoveDir(d) for d in sorted(stale_dirs, key=len, reverse=True)]
    # After a scope change the old store must forget our stale file too (its undo command).
    stale_refresh = [tuple(r) for r in previous.refresh] if previous and stale else []
    refreshes = _unique_refreshes([p.refresh for p in placements if p.refresh] + stale_refresh)
    actions += [Refresh(r) for r in refreshes]
    if verify is not None:
        actions.append(verify)
    actions += [Restart(r) for r in restart_runtimes]
    final = replace(
        entry,
        state="installed",
        dirs=tuple(d for d in dirs if d not in stale_dirs),
        edits=tuple(edits),
    )
    actions.append(RecordLedger(final))
    return tuple(actions)


def _with_way_back(
    intent: LedgerEntry,
    previous: LedgerEntry | None,
    placements: Sequence[Placement],
    disk: DiskState,
) -> LedgerEntry:
    """`intent` plus what a crash recovery needs to put an installed entry back: the entry
    itself and the bytes each of its files holds now (a rotation's old anchor must survive)."""
    if previous is None or previous.state != "installed":
        return intent
    new = {p.file: p.content for p in placements}
    restore = tuple(
        FileEdit(path, data, new.get(path, b""))
        for path in previous.files
        if (data := disk.files.get(path)) is not None
    )
    return replace(intent, previous=replace(previous, previous=None, restore=()), restore=restore)


def plan_restore(entry: LedgerEntry) -> tuple[Action, ...]:
    """After a crash inside an install that replaced `entry.previous`: give our files back
    the bytes they held, drop what only the interrupted install created, refresh, and
    record the previous entry again. Idempotent: a crash inside it is recovered the same."""
    check_ours(entry)
    previous = entry.previous
    assert previous is not None
    kept = set(previous.files)
    actions: list[Action] = [WriteFile(e.path, e.original) for e in entry.restore]
    actions += [RemoveFile(f) for f in entry.files if f not in kept]
    actions += [
        RemoveDir(d) for d in sorted(entry.dirs, key=len, reverse=True) if d not in previous.dirs
    ]
    had = {e.path: e.edited for e in previous.edits}  # a hosts.toml goes back to how it was
    actions += [WriteFile(e.path, had.get(e.path, e.original)) for e in entry.edits]
    refreshes = [tuple(r) for r in (*previous.refresh, *entry.refresh)]
    actions += [Refresh(r) for r in _unique_refreshes(refreshes)]
    actions.append(RecordLedger(previous))
    return tuple(actions)


def check_ours(entry: LedgerEntry) -> None:
    """Refuse an entry that names paths we can never have written (a tampered ledger).

    Every file we write is named ca-trust-agent-*.crt, and every directory we create holds
    one of them; anything else in an entry would make `remove` delete a stranger's file.
    """
    bad = [f for f in entry.files if not _our_file(f)]
    files = [f for f in entry.files if _our_file(f)]
    bad += [d for d in entry.dirs if not _holds_any(d, files) or ".." in d.split("/")]
    bad += [e.path for e in entry.edits if not _our_edit(e.path, files)]
    bad += [e.path for e in entry.restore if e.path not in files]
    if bad:
        raise LedgerError(
            f"ledger entry {entry.endpoint} names paths ca-trust-agent never writes: "
            f"{', '.join(bad)}; refusing to touch them (edit or remove the ledger entry)",
            kind="not-ours",
        )


def _our_file(path: str) -> bool:
    name = posixpath.basename(path)
    return (
        path.startswith("/")
        and ".." not in path.split("/")
        and name.startswith(FILE_PREFIX)
        and name.endswith(".crt")
    )


def _our_edit(path: str, files: Sequence[str]) -> bool:
    """We only ever edit a containerd hosts.toml beside a CA file of ours."""
    return (
        path.startswith("/")
        and ".." not in path.split("/")
        and posixpath.basename(path) == "hosts.toml"
        and _holds_any(posixpath.dirname(path), files)
    )


def plan_remove(entry: LedgerEntry, *, restart_runtimes: Sequence[str]) -> tuple[Action, ...]:
    """Undo exactly what the ledger entry names, then forget it. Edited files get their
    original bytes back first, before the CA file they name goes away."""
    check_ours(entry)
    actions: list[Action] = [RecordLedger(replace(entry, state="removing"))]
    actions += [WriteFile(e.path, e.original) for e in entry.edits]
    actions += [RemoveFile(f) for f in entry.files]
    actions += [RemoveDir(d) for d in sorted(entry.dirs, key=len, reverse=True)]
    actions += [Refresh(tuple(r)) for r in _unique_refreshes([tuple(r) for r in entry.refresh])]
    actions += [Restart(r) for r in restart_runtimes]
    actions.append(DropLedger(entry.endpoint))
    return tuple(actions)


def _holds_any(directory: str, files: Sequence[str]) -> bool:
    prefix = directory.rstrip("/") + "/"
    return any(f.startswith(prefix) for f in files)


def _unique_refreshes(items: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return list(dict.fromkeys(items))
