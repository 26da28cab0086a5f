"""The node engine: fetch -> analyze -> plan -> apply -> verify -> record, with rollback.

Used by the CLI (`install`, `remove`, `list`) and by the DaemonSet loop. Every effect goes
through `host` (files, commands), `chain` (TLS) and `runtime` (restarts), all injected, so
tests can run the same engine against a host-root tree, a recording runner or real daemons.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.core import plan as p
from agent.core.errors import AgentError, ApplyError, InputError, RuntimeRestartError, StoreError
from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.core.remediation import RESTARTS, SCOPES, InstallRequest, Result
from agent.node import failpoints
from agent.node.host import HostFS, Runner
from agent.node.ledger import Ledger
from agent.node.runtime import RestartMethod, RuntimeManager, detect_runtimes
from agent.node.stores import Placement, check_placement, registry_store, system_store

__all__ = ["RESTARTS", "SCOPES", "Engine", "InstallRequest", "Result"]

if TYPE_CHECKING:  # the X.509 stack loads with the first install, not with the idle daemon
    from agent.core.trust import Analysis, CertInfo

log = logging.getLogger(__name__)

RestartGate = Callable[[str], AbstractContextManager[None]]

def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Engine:
    """Installs, verifies and removes trust anchors on one node."""

    def __init__(
        self,
        fs: HostFS,
        runner: Runner,
        *,
        runtimes: Sequence[str] | None = None,
        restart_method: RestartMethod | None = None,
        restart_gate: RestartGate | None = None,
        manager: RuntimeManager | None = None,
        fetch: Callable[..., object] | None = None,
        verify: Callable[..., None] | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.fs = fs
        self.runner = runner
        self.ledger = Ledger(fs)
        self._runtimes = tuple(runtimes) if runtimes is not None else None
        self.manager = manager or RuntimeManager(
            fs, runner, restart_method or RestartMethod("systemd")
        )
        self._gate: RestartGate = restart_gate or (lambda _runtime: contextlib.nullcontext())
        self._fetch = fetch
        self._verify = verify
        self._clock = clock

    # ----------------------------------------------------------------- queries

    @property
    def runtimes(self) -> tuple[str, ...]:
        if self._runtimes is None:
            self._runtimes = detect_runtimes(self.fs)
        return self._runtimes

    def entries(self) -> dict[str, LedgerEntry]:
        return self.ledger.entries()

    def use_runtimes(self, runtimes: Sequence[str]) -> None:
        """The daemon learns the node's runtime from the Node object after start."""
        self._runtimes = tuple(runtimes)

    def set_restart_gate(self, gate: RestartGate) -> None:
        self._gate = gate

    # ---------------------------------------------------------------- install

    def install(self, req: InstallRequest) -> Result:
        timings: dict[str, float] = {}
        registry = req.registry or req.endpoint
        analysis, anchor = self._analysis(req, timings)
        scope, placements = self._placements(req, registry, anchor)
        previous = self.entries().get(req.endpoint.key)
        # Only this endpoint's own files may be replaced: another entry's file is not "ours"
        # for this install, whatever its name.
        ours = set(previous.files) if previous else set()
        for pl in placements:
            check_placement(self.fs, pl, ours=ours)
        restart_runtimes = self._restart_targets(req, placements)
        disk = self._disk_state(placements, previous)
        now = self._clock()
        entry = LedgerEntry(
            endpoint=req.endpoint.key,
            registry=registry.key,
            state="installed",
            scope=scope,
            stores=tuple(pl.store for pl in placements),
            files=tuple(pl.file for pl in placements),
            dirs=(),
            # what undoes this install: the ledger runs it after removing our files
            refresh=tuple(r for pl in placements if (r := pl.undo_refresh)),
            anchor_subject=anchor.subject,
            sha256=anchor.sha256,
            not_after=_iso(anchor.not_after),
            installed_at=_iso(now),
            restarted=tuple(restart_runtimes),
            source=req.source,
        )
        verify = self._verify_action(req, placements, analysis)
        actions = p.plan_install(
            entry,
            placements,
            disk,
            previous=previous,
            restart_runtimes=restart_runtimes,
            verify=verify,
        )
        stores = tuple(pl.store for pl in placements)
        if not actions and previous is not None:
            # Installed before, but a restart is still owed (it failed, or restart was
            # "never" then): re-running install finishes the job.
            owed = [rt for rt in restart_runtimes if rt not in previous.restarted]
            if owed:
                actions = (*[p.Restart(rt) for rt in owed], p.RecordLedger(previous))
        if not actions:
            return Result(
                req.endpoint,
                registry,
                "unchanged",
                scope,
                stores,
                anchor,
                analysis,
                (),
                verified=True,
                timings=timings,
            )
        required = tuple(self._restart_required(req, placements))
        if req.dry_run:
            return Result(
                req.endpoint,
                registry,
                "dry-run",
                scope,
                stores,
                anchor,
                analysis,
                actions,
                restart_required=required,
                timings=timings,
            )
        undo = _Undo(previous, dict(disk.files))
        restarted, restart_error = self._apply(actions, timings, undo=undo)
        return Result(
            req.endpoint,
            registry,
            "installed",
            scope,
            stores,
            anchor,
            analysis,
            actions,
            restarted=restarted,
            restart_required=required,
            restart_error=restart_error,
            verified=any(isinstance(a, p.Verify) for a in actions),
            timings=timings,
        )

    def _analysis(
        self, req: InstallRequest, timings: dict[str, float]
    ) -> tuple[Analysis | None, CertInfo]:
        from agent.core.trust import (
            analyze,
            analyze_with_anchor,
            check_anchor_only,
            parse_pem_bundle,
        )

        now = self._clock()
        if req.ca_pem is not None:
            provided = parse_pem_bundle(req.ca_pem)
            if len(provided) != 1:
                raise InputError(
                    f"the CA file must hold exactly one certificate, it holds {len(provided)}",
                    kind="bad-ca-file",
                )
            anchor = provided[0]
            if req.source == "policy":
                # Declarative: the operator's word, no fetch; only the anchor itself is checked.
                check_anchor_only(anchor, now=now, pins=req.pins)
                return None, anchor
            fetched = self._do_fetch(req, timings)
            t0 = time.perf_counter()
            analysis = analyze_with_anchor(fetched, anchor, req.endpoint, now=now, pins=req.pins)
            timings["analyze"] = time.perf_counter() - t0
            return analysis, anchor
        fetched = self._do_fetch(req, timings)
        t0 = time.perf_counter()
        analysis = analyze(fetched, req.endpoint, now=now, pins=req.pins)
        timings["analyze"] = time.perf_counter() - t0
        return analysis, analysis.anchor

    def _do_fetch(self, req: InstallRequest, timings: dict[str, float]) -> tuple[CertInfo, ...]:
        t0 = time.perf_counter()
        if self._fetch is not None:
            got = self._fetch(req.endpoint)
        else:
            from agent.node.chain import UNSET, fetch_chain

            got = fetch_chain(
                req.endpoint,
                sni=req.sni if req.sni is not None else UNSET,
                proxy=req.proxy if req.proxy is not None else UNSET,
                timeout=req.timeout,
            )
        timings["fetch"] = time.perf_counter() - t0
        certs = getattr(got, "certs", got)
        return tuple(certs)  # type: ignore[arg-type]

    def _placements(
        self, req: InstallRequest, registry: HostPort, anchor: CertInfo
    ) -> tuple[str, list[Placement]]:
        from agent.core.trust import pem_bundle

        content = pem_bundle([anchor])
        scope = req.scope
        if scope == "auto":
            scope = "registry" if self._registry_scope_available() else "system"
        if scope == "system":
            return scope, [system_store(self.fs).placement(req.endpoint, content, registry)]
        if not self.runtimes:
            raise StoreError(
                "registry scope needs a container runtime, and none was found under the host root "
                f"{self.fs.root} (looked for containerd, docker and CRI-O); pass --runtime",
                kind="unavailable",
            )
        stores = [registry_store(self.fs, rt) for rt in self.runtimes]
        return scope, [s.placement(req.endpoint, content, registry) for s in stores]

    def _registry_scope_available(self) -> bool:
        if not self.runtimes:
            return False
        for rt in self.runtimes:
            try:
                registry_store(self.fs, rt)
            except StoreError:
                return False
        return True

    def _restart_required(self, req: InstallRequest, placements: Sequence[Placement]) -> list[str]:
        if not any(pl.needs_restart for pl in placements) or req.restart == "auto":
            return []
        return list(self.runtimes)

    def _restart_targets(self, req: InstallRequest, placements: Sequence[Placement]) -> list[str]:
        """Runtimes to restart; refused restarts fail here, before anything is written."""
        if req.restart != "auto" or not any(pl.needs_restart for pl in placements):
            return []
        for rt in self.runtimes:
            self.manager.check_restart_allowed(
                rt,
                allow_docker_without_live_restore=req.allow_docker_restart_without_live_restore,
            )
        return list(self.runtimes)

    def _verify_action(
        self, req: InstallRequest, placements: Sequence[Placement], analysis: Analysis | None
    ) -> p.Verify | None:
        if analysis is None:
            return None  # declarative: the registry need not be reachable from here
        return p.Verify(req.endpoint, placements[0].verify_cafile, req.timeout)

    def _disk_state(
        self, placements: Sequence[Placement], previous: LedgerEntry | None
    ) -> p.DiskState:
        paths = {pl.file for pl in placements} | set(previous.files if previous else ())
        files = {path: self.fs.read_bytes(path) for path in paths}
        dirs: set[str] = set()
        for pl in placements:
            cur = pl.directory
            while cur not in ("/", ""):
                if self.fs.is_dir(cur):
                    dirs.add(cur)
                cur = cur.rsplit("/", 1)[0] or "/"
        return p.DiskState(files=files, dirs=frozenset(dirs))

    # ----------------------------------------------------------------- remove

    def remove(
        self,
        endpoint: HostPort,
        *,
        restart: str = "auto",
        dry_run: bool = False,
        allow_docker_restart_without_live_restore: bool = False,
    ) -> Result:
        entry = self.entries().get(endpoint.key)
        registry = endpoint
        if entry is None:
            return Result(endpoint, registry, "absent", "", (), None, None, ())
        from agent.core.hostport import parse_hostport

        registry = parse_hostport(entry.registry)
        needs_restart = entry.scope == "system" and restart == "auto"
        restart_runtimes: list[str] = []
        if needs_restart:
            for rt in self.runtimes:
                self.manager.check_restart_allowed(
                    rt, allow_docker_without_live_restore=allow_docker_restart_without_live_restore
                )
            restart_runtimes = list(self.runtimes)
        actions = p.plan_remove(entry, restart_runtimes=restart_runtimes)
        required = tuple(self.runtimes) if entry.scope == "system" and restart == "never" else ()
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
        restarted, restart_error = self._apply(actions, timings, undo=None)
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
        for key, entry in sorted(self.entries().items()):
            if entry.state in ("installing", "removing"):
                try:
                    self._apply(p.plan_remove(entry, restart_runtimes=()), {}, undo=None)
                except AgentError as exc:  # one bad entry must not block the others
                    log.warning("cannot converge ledger entry %s: %s", key, exc)
                    continue
                touched.append(key)
        return touched

    # ------------------------------------------------------------------ apply

    def _apply(
        self, actions: Sequence[p.Action], timings: dict[str, float], *, undo: _Undo | None
    ) -> tuple[tuple[str, ...], RuntimeRestartError | None]:
        """Run the plan. Before any restart, a failure rolls everything back; a restart
        failure leaves the (verified) trust in place and is returned, not raised."""
        restarted: list[str] = []
        restart_error: RuntimeRestartError | None = None
        done: list[p.Action] = []
        intent: LedgerEntry | None = None
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
            except AgentError as exc:
                if undo is not None and intent is not None:
                    self._rollback(intent, done, undo)
                    raise ApplyError(
                        f"{exc} — everything written was rolled back", kind=_apply_kind(action)
                    ) from exc
                raise
            failpoints.hit(f"apply:after:{type(action).__name__}")
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

    def _do_verify(self, target: HostPort, cafile: str, timeout: float) -> None:
        if self._verify is not None:
            self._verify(target, self.fs.resolve(cafile))
            return
        from agent.node.chain import verify_handshake

        verify_handshake(target, self.fs.resolve(cafile), timeout=timeout)

    def _rollback(self, intent: LedgerEntry, done: Sequence[p.Action], undo: _Undo) -> None:
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


@dataclass(frozen=True)
class _Undo:
    """What a failed install restores: the previous ledger entry and the old file bytes."""

    previous: LedgerEntry | None
    files: dict[str, bytes | None]


def _apply_kind(action: p.Action) -> str:
    if isinstance(action, p.Refresh):
        return "refresh-failed"
    if isinstance(action, p.Verify):
        return "verify-failed"
    return "write-failed"
