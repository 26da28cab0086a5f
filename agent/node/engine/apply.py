"""Running a plan's actions on the node, and undoing a failed install.

Before any restart, a failure rolls back everything written; a restart failure leaves the
(verified) trust in place and is reported, not raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from agent.core import plan as p
from agent.core.errors import AgentError, ApplyError, RuntimeRestartError, describe_failure
from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.node import failpoints
from agent.node.engine.context import EngineContext, log, timed


@dataclass(frozen=True)
class Undo:
    """What a failed install restores: the previous ledger entry and the old file bytes.

    `pending` is the "installed" ledger record held back while the runtime judges the
    install: until it is written the ledger says "installing", so a crash during the
    verification leaves an intent that the next start undoes, never unverified trust."""

    previous: LedgerEntry | None
    files: dict[str, bytes | None]
    pending: LedgerEntry | None = None


class Applier:
    """Runs plan actions (files, ledger, refresh, verify, restarts) and rolls them back."""

    def __init__(self, context: EngineContext) -> None:
        self._ctx = context

    def apply(
        self, actions: Sequence[p.Action], timings: dict[str, float], *, undo: Undo | None
    ) -> tuple[tuple[str, ...], RuntimeRestartError | None]:
        """Run the plan. Before any restart, a failure rolls everything back; a restart
        failure leaves the (verified) trust in place and is returned, not raised."""
        restarted: list[str] = []
        restart_error: RuntimeRestartError | None = None
        done: list[p.Action] = []
        intent: LedgerEntry | None = None
        recorded: LedgerEntry | None = None  # the latest ledger record: what this run is doing
        for planned in actions:
            action = planned
            failpoints.hit(f"apply:before:{type(action).__name__}")
            if isinstance(action, p.Restart):
                try:
                    with (
                        timed(timings, f"restart:{action.runtime}"),
                        self._ctx.gate(action.runtime),
                    ):
                        self._ctx.manager.restart(action.runtime)
                    restarted.append(action.runtime)
                except RuntimeRestartError as exc:
                    log.warning("runtime restart failed: %s", exc)
                    restart_error = exc
                failpoints.hit("apply:after:Restart")
                continue
            if isinstance(action, p.RecordLedger) and action.entry.state == "installed":
                done_before = () if intent is not None else action.entry.restarted
                merged = tuple(dict.fromkeys((*done_before, *restarted)))
                action = p.RecordLedger(replace(action.entry, restarted=merged))
            try:
                self.run(action, timings)
                if isinstance(action, p.Refresh) and recorded is not None:
                    self._check_refreshed(recorded, action.argv)
            except Exception as exc:  # any failure, not only ours: nothing half-written stays
                if undo is not None and intent is not None:
                    self.rollback(intent, done, undo)
                    raise ApplyError(
                        f"{describe_failure(exc)} — everything written was rolled back",
                        kind=_apply_kind(action),
                    ) from exc
                raise
            failpoints.hit(f"apply:after:{type(action).__name__}")
            if isinstance(action, p.RecordLedger):
                recorded = action.entry
            if isinstance(action, p.RecordLedger) and action.entry.state == "installing":
                intent = action.entry
            done.append(action)
        return tuple(restarted), restart_error

    def run(self, action: p.Action, timings: dict[str, float]) -> None:
        """One action, on its own (no rollback): `apply` runs them in order."""
        fs = self._ctx.fs
        match action:
            case p.RecordLedger(entry):
                self._ctx.ledger.put(entry)
            case p.DropLedger(endpoint):
                self._ctx.ledger.delete(endpoint)
            case p.MakeDir(path):
                fs.makedirs(path)
            case p.WriteFile(path, content, mode):
                with timed(timings, "write"):
                    fs.write_atomic(path, content, mode)
                # a write killed in an earlier run may have left its temp file (and the
                # staging dir) beside ours: an anchors dir must hold complete files only
                fs.remove_temp_files(path.rsplit("/", 1)[0] or "/")
            case p.RemoveFile(path):
                fs.remove_file(path)
                # a write killed half-way may have left its temp file beside ours
                fs.remove_temp_files(path.rsplit("/", 1)[0] or "/")
            case p.RemoveDir(path):
                fs.remove_temp_files(path)
                fs.remove_dir(path)
            case p.Refresh(argv):
                with timed(timings, "refresh"):
                    res = self._ctx.runner.run(argv)
                if not res.ok:
                    detail = (res.stderr or res.stdout).strip()[-500:]
                    raise ApplyError(
                        f"{' '.join(argv)} failed (exit {res.returncode}): {detail}",
                        kind="refresh-failed",
                    )
            case p.Verify(target, cafile, timeout, proxy):
                with timed(timings, "verify"):
                    self._do_verify(target, cafile, timeout, proxy)
            case p.Restart():  # handled by apply
                pass

    def _check_refreshed(self, entry: LedgerEntry, argv: tuple[str, ...]) -> None:
        """A refresh's exit status proves nothing (RHEL's update-ca-trust returns 0 when
        p11-kit fails): read back the bundle the runtimes load (agent/node/stores/bundle.py)."""
        if entry.scope != "system":
            return
        from agent.node.stores.system import check_refreshed_bundle

        shared = any(
            other.endpoint != entry.endpoint
            and other.scope == "system"
            and other.sha256 == entry.sha256
            and other.state == "installed"
            for other in self._ctx.entries().values()
        )
        check_refreshed_bundle(
            self._ctx.fs,
            entry.sha256,
            present=entry.state != "removing",
            refresh=argv,
            ours=entry.files,
            shared=shared,
        )

    def _do_verify(
        self, target: HostPort, cafile: str, timeout: float, proxy: str | None = None
    ) -> None:
        real = self._ctx.fs.resolve(cafile)
        if self._ctx.verify is not None:
            self._ctx.verify(target, real)
            return
        from agent.node.chain import UNSET, verify_handshake

        verify_handshake(target, real, timeout=timeout, proxy=UNSET if proxy is None else proxy)

    def rollback(self, intent: LedgerEntry, done: Sequence[p.Action], undo: Undo) -> None:
        """Undo a failed install: put back the bytes that were there (or remove what we
        wrote), refresh again, and restore the previous ledger entry (or none)."""
        log.warning("rolling back %s", intent.endpoint)
        for action in reversed(done):
            with contextlib.suppress(AgentError, OSError):
                match action:
                    case p.WriteFile(path) | p.RemoveFile(path):
                        old = undo.files.get(path)
                        if old is None:
                            self._ctx.fs.remove_file(path)
                        else:
                            self._ctx.fs.write_atomic(path, old)
                    case p.MakeDir(path):
                        self._ctx.fs.remove_dir(path)
        for argv in dict.fromkeys(tuple(r) for r in intent.refresh):
            with contextlib.suppress(AgentError, OSError):
                self._ctx.runner.run(argv)
        with contextlib.suppress(AgentError, OSError):
            if undo.previous is None:
                self._ctx.ledger.delete(intent.endpoint)
            else:
                self._ctx.ledger.put(undo.previous)


def _apply_kind(action: p.Action) -> str:
    if isinstance(action, p.Refresh):
        return "refresh-failed"
    if isinstance(action, p.Verify):
        return "verify-failed"
    return "write-failed"
