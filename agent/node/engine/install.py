"""Installing an endpoint's anchor: fetch and analyze, choose the stores, plan, apply.

Refused restarts and placement conflicts fail before anything is written; the plan itself
runs through `Applier`, which rolls a failed install back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from agent.core import plan as p
from agent.core.containerd_config import hosts_toml_governs
from agent.core.errors import InputError, StoreError
from agent.core.hostport import HostPort
from agent.core.hosts_toml import append_ca
from agent.core.ledger_entry import FileEdit, LedgerEntry
from agent.core.remediation import InstallRequest, Result
from agent.core.runtime_kinds import BY_NAME, labels
from agent.core.system_anchor import system_anchor_refusal
from agent.node.engine.apply import Applier, Undo
from agent.node.engine.context import EngineContext, iso
from agent.node.engine.verify import Verifier
from agent.node.stores import (
    Placement,
    RegistryStore,
    check_placement,
    registry_store,
    system_store,
)

if TYPE_CHECKING:  # the X.509 stack loads with the first install, not with the idle daemon
    from agent.core.trust import Analysis, CertInfo


class Installer:
    """`install` and the steps that decide what it writes and restarts."""

    def __init__(self, context: EngineContext, applier: Applier, verifier: Verifier) -> None:
        self._ctx = context
        self._applier = applier
        self._verifier = verifier

    # ---------------------------------------------------------------- install

    def install(self, req: InstallRequest) -> Result:
        """Install, then let the runtime judge it (see Verifier)."""
        result, undo = self._install_once(req)
        judged, fallback = self._verifier.judged(req, result, undo)
        if fallback is None:
            return judged
        again, undo = self._install_once(replace(req, scope="system"))
        judged, _ = self._verifier.judged(replace(req, scope="system"), again, undo)
        return replace(judged, scope_reason=f"{fallback}; system scope instead")

    def _install_once(self, req: InstallRequest) -> tuple[Result, Undo | None]:
        timings: dict[str, float] = {}
        registry = req.registry or req.endpoint
        analysis, anchor = self._analysis(req, timings)
        scope, placements, reason = self._placements(req, registry, anchor)
        previous = self._ctx.entries().get(req.endpoint.key)
        # Only this endpoint's own files may be replaced: another entry's file is not "ours"
        # for this install, whatever its name.
        ours = set(previous.files) if previous else set()
        edits = self._hosts_toml_edits(req, registry, placements, previous)
        for pl in placements:
            check_placement(
                self._ctx.fs,
                pl,
                ours=ours | {e.path for e in edits},
                major=self._ctx.judge.major(pl.store),
            )
        restart_runtimes = self._restart_targets(req, placements)
        disk = self._disk_state(placements, previous, edits)
        now = self._ctx.clock()
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
            not_after=iso(anchor.not_after),
            installed_at=iso(now),
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
            edits=edits,
        )
        stores = tuple(pl.store for pl in placements)
        if not actions and previous is not None:
            # Installed before, but a restart is still owed (it failed, or restart was
            # "never" then): re-running install finishes the job.
            owed = [rt for rt in restart_runtimes if rt not in previous.restarted]
            if owed:
                actions = (*[p.Restart(rt) for rt in owed], p.RecordLedger(previous))
        if not actions:
            return (
                Result(
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
                    scope_reason=reason,
                ),
                None,
            )
        required = tuple(self._restart_required(req, placements))
        if req.dry_run:
            return (
                Result(
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
                    scope_reason=reason,
                ),
                None,
            )
        held = self._held_record(req, actions)
        if held is not None:
            actions = actions[:-1]
        undo = Undo(previous, dict(disk.files))
        restarted, restart_error = self._applier.apply(actions, timings, undo=undo)
        if held is not None:
            # the plan's own intent came first, so this run's restarts are all there is
            held = replace(held, restarted=tuple(dict.fromkeys(restarted)))
            undo = replace(undo, pending=held)
        return (
            Result(
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
                scope_reason=reason,
            ),
            undo,
        )

    def _held_record(self, req: InstallRequest, actions: Sequence[p.Action]) -> LedgerEntry | None:
        """The plan's final "installed" record when the runtime will judge this install:
        it is written only after the runtime's verdict (Verifier.judged)."""
        if not self._verifier.expected(req) or len(actions) < 2:
            return None
        first, last = actions[0], actions[-1]
        opens = isinstance(first, p.RecordLedger) and first.entry.state == "installing"
        closes = isinstance(last, p.RecordLedger) and last.entry.state == "installed"
        return last.entry if opens and closes and isinstance(last, p.RecordLedger) else None

    def _analysis(
        self, req: InstallRequest, timings: dict[str, float]
    ) -> tuple[Analysis | None, CertInfo]:
        from agent.core.trust import (
            analyze,
            analyze_with_anchor,
            check_anchor_only,
            parse_pem_bundle,
        )

        now = self._ctx.clock()
        if req.ca_pem is not None:
            provided = parse_pem_bundle(req.ca_pem)
            if len(provided) != 1:
                raise InputError(
                    f"the CA file must hold exactly one certificate, it holds {len(provided)}",
                    kind="bad-ca-file",
                )
            anchor = provided[0]
            if req.source == "policy" or (req.source == "interception" and req.chain is None):
                # Declarative: the operator's word, no fetch; only the anchor itself is checked
                # (a proxy CA placed ahead of any failure, or repaired, is declared too).
                check_anchor_only(anchor, now=now, pins=req.pins)
                return None, anchor
            # a chain fetched moments ago by the caller (interception: through the runtime's
            # proxy) is the one the anchor was checked against: no second fetch
            fetched = req.chain if req.chain is not None else self._do_fetch(req, timings)
            t0 = time.perf_counter()
            analysis = analyze_with_anchor(fetched, anchor, req.endpoint, now=now, pins=req.pins)
            timings["analyze"] = time.perf_counter() - t0
            return analysis, anchor
        fetched = req.chain if req.chain is not None else self._do_fetch(req, timings)
        t0 = time.perf_counter()
        analysis = analyze(fetched, req.endpoint, now=now, pins=req.pins)
        timings["analyze"] = time.perf_counter() - t0
        return analysis, analysis.anchor

    def _do_fetch(self, req: InstallRequest, timings: dict[str, float]) -> tuple[CertInfo, ...]:
        t0 = time.perf_counter()
        if self._ctx.fetch is not None:
            got = self._ctx.fetch(req.endpoint)
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
    ) -> tuple[str, list[Placement], str]:
        """(scope, placements, why this scope when the request left it to us)."""
        from agent.core.trust import parse_pem_bundle, pem_bundle

        kept = parse_pem_bundle(req.overlap) if req.overlap else ()
        content = pem_bundle([anchor, *kept])
        scope, reason = req.scope, ""
        stores: list[RegistryStore] = []
        if scope == "auto":
            try:
                stores, scope = self._registry_stores(), "registry"
            except StoreError as exc:
                scope, reason = "system", str(exc)
        if scope == "system":
            store = system_store(self._ctx.fs)
            refusal = system_anchor_refusal(anchor, store.family)
            if refusal is not None:  # p11-kit would drop it: fail before writing anything
                raise StoreError(refusal + (f" ({reason})" if reason else ""), kind="not-a-ca")
            return scope, [store.placement(req.endpoint, content, registry)], reason
        stores = stores or self._registry_stores()
        return scope, [s.placement(req.endpoint, content, registry) for s in stores], reason

    def _registry_stores(self) -> list[RegistryStore]:
        """Every runtime's per-registry store (each config read once), or StoreError saying
        why registry scope is not available: the reason `auto` reports for system scope."""
        ctx = self._ctx
        if not ctx.runtimes.names:
            raise StoreError(
                "registry scope needs a container runtime, and none was found under the host root "
                f"{ctx.fs.root} (looked for {labels()}); pass --runtime",
                kind="unavailable",
            )
        return [registry_store(ctx.fs, rt, major=ctx.judge.major(rt)) for rt in ctx.runtimes.names]

    def _restart_required(self, req: InstallRequest, placements: Sequence[Placement]) -> list[str]:
        if not any(pl.needs_restart for pl in placements) or req.restart == "auto":
            return []
        return list(self._ctx.runtimes.names)

    def _restart_targets(self, req: InstallRequest, placements: Sequence[Placement]) -> list[str]:
        """Runtimes to restart; refused restarts fail here, before anything is written."""
        if req.restart != "auto" or not any(pl.needs_restart for pl in placements):
            return []
        for rt in self._ctx.runtimes.names:
            self._ctx.manager.check_restart_allowed(
                rt,
                allow_docker_without_live_restore=req.allow_docker_restart_without_live_restore,
            )
        return list(self._ctx.runtimes.names)

    def _verify_action(
        self, req: InstallRequest, placements: Sequence[Placement], analysis: Analysis | None
    ) -> p.Verify | None:
        if analysis is None:
            return None  # declarative: the registry need not be reachable from here
        # the handshake takes the request's route (the runtime's proxy) when it names one
        return p.Verify(req.endpoint, placements[0].verify_cafile, req.timeout, req.proxy)

    def _hosts_toml_edits(
        self,
        req: InstallRequest,
        registry: HostPort,
        placements: Sequence[Placement],
        previous: LedgerEntry | None,
    ) -> tuple[FileEdit, ...]:
        """With hostsToml: append, the line that makes a foreign hosts.toml name our CA file
        (computed from the file's original bytes, also when our line is already in it)."""
        if req.hosts_toml != "append":
            return ()
        edits: list[FileEdit] = []
        for pl in placements:
            path = pl.directory.rstrip("/") + "/hosts.toml"
            kind = BY_NAME.get(pl.store)  # None: the OS store
            if kind is None or not kind.hosts_toml or self._ctx.fs.lstat_kind(path) != "file":
                continue
            current = self._ctx.fs.read_bytes(path) or b""
            mine = next((e for e in (previous.edits if previous else ()) if e.path == path), None)
            original = mine.original if mine is not None and current == mine.edited else current
            if not hosts_toml_governs(original, self._ctx.judge.major(pl.store)):
                continue  # the runtime ignores that file: our *.crt beside it is enough
            edited = append_ca(original, req.endpoint, registry, pl.file)
            edits.append(FileEdit(path, original, edited))
        return tuple(edits)

    def _disk_state(
        self,
        placements: Sequence[Placement],
        previous: LedgerEntry | None,
        edits: Sequence[FileEdit] = (),
    ) -> p.DiskState:
        paths = {pl.file for pl in placements} | set(previous.files if previous else ())
        paths |= {e.path for e in (*edits, *(previous.edits if previous else ()))}
        files = {path: self._ctx.fs.read_bytes(path) for path in paths}
        dirs: set[str] = set()
        for pl in placements:
            cur = pl.directory
            while cur not in ("/", ""):
                if self._ctx.fs.is_dir(cur):
                    dirs.add(cur)
                cur = cur.rsplit("/", 1)[0] or "/"
        return p.DiskState(files=files, dirs=frozenset(dirs))
