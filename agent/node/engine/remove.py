"""Removing an endpoint's trust, and converging what a crashed run left half-way."""

from __future__ import annotations

from dataclasses import replace

from agent.core import plan as p
from agent.core.errors import AgentError, StoreError
from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.core.remediation import Result
from agent.node.engine.apply import Applier
from agent.node.engine.context import EngineContext, log


class Remover:
    """`remove` (the CLI's and the daemon's) and `recover` (after a crash)."""

    def __init__(self, context: EngineContext, applier: Applier) -> None:
        self._ctx = context
        self._applier = applier

    def remove(
        self,
        endpoint: HostPort,
        *,
        restart: str = "auto",
        dry_run: bool = False,
        allow_docker_restart_without_live_restore: bool = False,
    ) -> Result:
        entry = self._ctx.entries().get(endpoint.key)
        registry = endpoint
        if entry is None:
            return Result(endpoint, registry, "absent", "", (), None, None, ())
        from agent.core.hostport import parse_hostport

        registry = parse_hostport(entry.registry)
        runtimes = self._ctx.runtimes  # detected on first use only, as before
        needs_restart = entry.scope == "system" and restart == "auto"
        restart_runtimes: list[str] = []
        if needs_restart:
            for rt in runtimes.names:
                self._ctx.manager.check_restart_allowed(
                    rt, allow_docker_without_live_restore=allow_docker_restart_without_live_restore
                )
            restart_runtimes = list(runtimes.names)
        entry = self.edits_to_restore(entry)
        actions = p.plan_remove(entry, restart_runtimes=restart_runtimes)
        required = runtimes.names if entry.scope == "system" and restart == "never" else ()
        if dry_run:
            return Result(
                endpoint,
                registry,
                "dry-run",
                entry.scope,
                entry.stores,
                None,
                None,
                actions,
                restart_required=required,
            )
        timings: dict[str, float] = {}
        restarted, restart_error = self._applier.apply(actions, timings, undo=None)
        return Result(
            endpoint,
            registry,
            "removed",
            entry.scope,
            entry.stores,
            None,
            None,
            actions,
            restarted=restarted,
            restart_required=required,
            restart_error=restart_error,
            timings=timings,
        )

    def recover(self) -> list[str]:
        """Converge entries a crashed run left half-way: undo 'installing', finish 'removing'.

        Returns the endpoints it touched. Restarts are not done here: the caller decides.
        """
        touched: list[str] = []
        for key, entry in sorted(self._ctx.entries().items()):
            if entry.state in ("installing", "removing"):
                try:
                    if entry.state == "installing" and entry.previous is not None:
                        # an install over an installed entry (a rotation): back to that
                        converge = p.plan_restore(entry)
                    else:
                        converge = p.plan_remove(self.edits_to_restore(entry), restart_runtimes=())
                    self._applier.apply(converge, {}, undo=None)
                except AgentError as exc:  # one bad entry must not block the others
                    log.warning("cannot converge ledger entry %s: %s", key, exc)
                    continue
                touched.append(key)
        return touched

    def edits_to_restore(self, entry: LedgerEntry) -> LedgerEntry:
        """`entry` keeping only the edits whose file still holds exactly our edit: those get
        their original bytes back. A file already back to its original (a crash before the
        edit), or from which someone took our line out, is left as it is. A file changed by
        someone else while still naming our CA is reported and nothing is touched."""
        p.check_ours(entry)  # a tampered ledger names no file we may read or restore
        keep = []
        for edit in entry.edits:
            now = self._ctx.fs.read_bytes(edit.path)
            if now == edit.edited:
                keep.append(edit)
            elif now is not None and now != edit.original and self._names_ours(now, entry):
                raise StoreError(
                    f"{edit.path} was changed by someone else after ca-trust-agent added its CA "
                    f"line; it is left as it is, and so is {', '.join(entry.files)}. Remove our "
                    "line from it yourself, then run remove again",
                    kind="conflict",
                )
        return replace(entry, edits=tuple(keep))

    @staticmethod
    def _names_ours(data: bytes, entry: LedgerEntry) -> bool:
        return any(path.encode() in data for path in entry.files)
