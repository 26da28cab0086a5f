"""Installing an endpoint's anchor: fetch and analyze, choose the stores, plan, apply.

Refused restarts and placement conflicts fail before anything is written; the plan itself
runs through `Applier`, which rolls a failed install back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.core import plan as p
from agent.core.errors import InputError, StoreError
from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.core.remediation import InstallRequest, Result
from agent.node.engine.apply import Applier, Undo
from agent.node.engine.base import iso
from agent.node.stores import Placement, check_placement, registry_store, system_store

if TYPE_CHECKING:  # the X.509 stack loads with the first install, not with the idle daemon
    from agent.core.trust import Analysis, CertInfo


class Installer(Applier):
    """`install` and the steps that decide what it writes and restarts."""

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
        undo = Undo(previous, dict(disk.files))
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
