"""Running a plan's actions on the node, and undoing a failed install.

Before any restart, a failure rolls back everything written; a restart failure leaves the
(verified) trust in place and is reported, not raised.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from agent.core import plan as p
from agent.core.errors import AgentError, ApplyError, RuntimeRestartError, describe_failure
from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.node import failpoints
from agent.node.engine.base import EngineBase, log


@dataclass(frozen=True)
class Undo:
    """What a failed install restores: the previous ledger entry and the old file bytes.

    `pending` is the "installed" ledger record held back while the runtime judges the
    install: until it is written the ledger says "installing", so a crash during the
    verification leaves an intent that the next start undoes, never unverified trust."""

    previous: LedgerEntry | None
    files: dict[str, bytes | None]
    pending: LedgerEntry | None = None


class Applier(EngineBase):
    """Runs plan actions (files, ledger, refresh, verify, restarts) and rolls them back."""

    def _apply(
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
                        self._timed(timings, f"restart:{action.runtime}"),
                        self._gate(action.runtime),
                    ):
                        self.manager.restart(action.runtime)
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
                self._run(action, timings)
                if isinstance(action, p.Refresh) and recorded is not None:
                    self._check_refreshed(recorded, action.argv)
            except Exception as exc:  # any failure, not only ours: nothing half-written stays
                if undo is not None and intent is not None:
                    self._rollback(intent, done, undo)
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

    def _run(self, action: p.Action, timings: dict[str, float]) -> None:
        match action:
            case p.RecordLedger(entry):
                self.ledger.put(entry)
            case p.DropLedger(endpoint):
                self.ledger.delete(endpoint)
            case p.MakeDir(path):
                self.fs.makedirs(path)
            case p.WriteFile(path, content, mode):
                with self._timed(timings, "write"):
                    self.fs.write_atomic(path, content, mode)
                # a write killed in an earlier run may have left its temp file (and the
                # staging dir) beside ours: an anchors dir must hold complete files only
                self.fs.remove_temp_files(path.rsplit("/", 1)[0] or "/")
            case p.RemoveFile(path):
                self.fs.remove_file(path)
                # a write killed half-way may have left its temp file beside ours
                self.fs.remove_temp_files(path.rsplit("/", 1)[0] or "/")
            case p.RemoveDir(path):
                self.fs.remove_temp_files(path)
                self.fs.remove_dir(path)
            case p.Refresh(argv):
                with self._timed(timings, "refresh"):
                    res = self.runner.run(argv)
                if not res.ok:
                    detail = (res.stderr or res.stdout).strip()[-500:]
                    raise ApplyError(
                        f"{' '.join(argv)} failed (exit {res.returncode}): {detail}",
                        kind="refresh-failed",
                    )
            case p.Verify(target, cafile, timeout):
                with self._timed(timings, "verify"):
                    self._do_verify(target, cafile, timeout)
            case p.Restart():  # handled by _apply
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
            for other in self.entries().values()
        )
        check_refreshed_bundle(
            self.fs,
            entry.sha256,
            present=entry.state != "removing",
            refresh=argv,
            ours=entry.files,
            shared=shared,
        )

    def _do_verify(self, target: HostPort, cafile: str, timeout: float) -> None:
        if self._verify is not None:
            self._verify(target, self.fs.resolve(cafile))
            return
        from agent.node.chain import verify_handshake

        verify_handshake(target, self.fs.resolve(cafile), timeout=timeout)

    def _rollback(self, intent: LedgerEntry, done: Sequence[p.Action], undo: Undo) -> None:
        """Undo a failed install: put back the bytes that were there (or remove what we
        wrote), refresh again, and restore the previous ledger entry (or none)."""
        log.warning("rolling back %s", intent.endpoint)
        for action in reversed(done):
            with contextlib.suppress(AgentError, OSError):
                match action:
                    case p.WriteFile(path) | p.RemoveFile(path):
                        old = undo.files.get(path)
                        if old is None:
                            self.fs.remove_file(path)
                        else:
                            self.fs.write_atomic(path, old)
                    case p.MakeDir(path):
                        self.fs.remove_dir(path)
        for argv in dict.fromkeys(tuple(r) for r in intent.refresh):
            with contextlib.suppress(AgentError, OSError):
                self.runner.run(argv)
        with contextlib.suppress(AgentError, OSError):
            if undo.previous is None:
                self.ledger.delete(intent.endpoint)
            else:
                self.ledger.put(undo.previous)

    @contextlib.contextmanager
    def _timed(self, timings: dict[str, float], name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def _apply_kind(action: p.Action) -> str:
    if isinstance(action, p.Refresh):
        return "refresh-failed"
    if isinstance(action, p.Verify):
        return "verify-failed"
    return "write-failed"
