"""Safe first trust in the controller: between "the gate allows this registry" and "the
engine installs the anchor", ask the cluster-wide record (agent.cluster.trustrecord) whether
this node may trust what it fetched (agent.core.firsttrust decides).

Only fetched anchors take this path: a pinned registry (policy `pins`, or an operator's
approval, which is a pin) and a declared CA (`caPEM`, `caFrom`) never consult the record,
and neither does a dry run (it writes nothing anywhere).

The anchor is learned with the engine's dry run (fetch and analyze, nothing written), then
installed with its fingerprint as the pin, so the anchor installed is exactly the anchor the
record accepted even if the registry answers differently a moment later.

Waiting nodes remember their failing pods; when the record's watch shows their anchor
accepted, the failures are queued again and installed at once (no polling).

Rotation: when the accepted anchor differs from the one this node's ledger holds, the new
one is installed with the old one beside it in the same file (InstallRequest.overlap), the
runtime verifies through it, and only then is the old one dropped (`CARotated`). Each of
the two installs is one engine install (intent in the ledger first), so a kill -9 at any
step leaves the ledger and the disk agreeing, and the next failure or reconcile converges.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent.cluster.controller.interfaces import NORMAL, WARNING, PodRef, Work
from agent.cluster.trustrecord import TrustRecord
from agent.core import firsttrust as ft
from agent.core.detect import PullFailure
from agent.core.errors import AgentError
from agent.core.remediation import InstallRequest, Result

if TYPE_CHECKING:
    from agent.cluster.controller.loop import Controller
    from agent.cluster.controller.remediate import Remediation
    from agent.core.trust import CertInfo

log = logging.getLogger(__name__)


class ConflictCounter(Protocol):
    def record_trust_conflict(self, registry: str) -> None: ...


@dataclass(frozen=True)
class _Waiting:
    pod: PodRef
    failure: PullFailure
    sha256: str


class FirstTrust:
    """The controller's first-trust step. `bind(controller)` once, then the remediation
    calls `remediate` instead of installing directly."""

    def __init__(
        self,
        record: TrustRecord,
        *,
        namespace: str,
        policy_name: str = "ca-trust-agent",
        conflicts: ConflictCounter | None = None,
    ) -> None:
        self.record = record
        self.namespace = namespace
        self.policy_name = policy_name
        self.conflicts = conflicts
        self._waiting: dict[str, dict[str, _Waiting]] = {}  # registry -> pod uid -> work
        self._lock = threading.Lock()
        self._c: Controller | None = None

    def bind(self, controller: Controller) -> None:
        self._c = controller
        controller.first_trust = self

    # -------------------------------------------------------------- watch side

    def on_record(self, kind: str, obj: Mapping[str, Any]) -> None:
        """The record changed: queue the failures of every waiting pod whose anchor is now
        accepted (the worker installs them; this is the watch thread)."""
        self.record.on_event(kind, obj)
        c = self._c
        if c is None:
            return
        with self._lock:
            waiting = {reg: dict(pods) for reg, pods in self._waiting.items()}
        for registry, pods in waiting.items():
            accepted = self.record.get(registry).accepted
            ready = [w for w in pods.values() if w.sha256 == accepted]
            if not ready:
                continue
            with self._lock:
                self._waiting.pop(registry, None)
            for w in ready:
                c.flights.forget(registry)
                c._queue.put(Work("failure", w.pod, w.failure))

    # ------------------------------------------------------------- worker side

    def remediate(
        self,
        rem: Remediation,
        req: InstallRequest,
        pod: PodRef,
        failure: PullFailure,
        key: str,
    ) -> Result | None:
        c = self._c
        assert c is not None, "FirstTrust.bind(controller) first"
        preview = self._preview(req)
        if preview is None or preview.anchor is None:
            return rem.install(req, pod, key)
        anchor = preview.anchor
        if preview.analysis is not None:  # install the very chain the record judged: no refetch
            req = replace(req, chain=preview.analysis.chain)
        if req.pins:  # pinned, and the pin matches: rotate without a gap
            return self._install(rem, req, pod, key, anchor)
        registry = req.endpoint.key
        with c._lock:
            mode = ft.mode(c.policy, req.endpoint)
        seen = ft.seen_from_der(anchor.der, anchor.subject, _iso(anchor.not_after))
        now = _iso(c.clock())
        try:
            verdict = self.record.update(
                registry, lambda rec: ft.observe(rec, seen, c.node_name, now, mode)
            )
        except AgentError as exc:
            delay = c.flights.failed(key)
            self._both(
                pod,
                WARNING,
                "CATrustFailed",
                f"Could not consult the cluster's trust record for {registry} ({exc}); "
                f"nothing was changed; next attempt in {delay:.0f}s at the earliest",
            )
            return None
        if verdict.action == ft.INSTALL:
            self._forget_waiting(registry, pod.uid)
            return self._install(rem, req, pod, key, anchor)
        self._hold(verdict, registry, seen, mode, pod, failure, key)
        return None

    def _preview(self, req: InstallRequest) -> Result | None:
        """The anchor this node would install, when the record (or a rotation) has a say;
        None when the plain install decides: a declared CA, a dry run, a pinned registry
        not yet trusted here, or a fetch / analysis / pin check that fails (the real
        attempt then reports it as CATrustFailed, naming the fingerprint a pin would need,
        and changes nothing)."""
        c = self._c
        assert c is not None
        if req.ca_pem is not None or req.source != "fetched" or req.dry_run:
            return None
        if req.pins and req.endpoint.key not in c.engine.entries():
            return None  # the operator's pin decides, not the record
        try:
            return c.engine.install(replace(req, dry_run=True))
        except AgentError:
            return None

    def _hold(
        self,
        verdict: ft.Verdict,
        registry: str,
        seen: ft.Seen,
        mode: ft.Mode,
        pod: PodRef,
        failure: PullFailure,
        key: str,
    ) -> None:
        """Not installed: say why, and wait for the record (or the operator)."""
        c = self._c
        assert c is not None
        approve = ft.approval_command(self.namespace, self.policy_name, registry, seen.sha256)
        what = f"{seen.subject} ({seen.sha256})"
        if verdict.action == ft.CONFLICT:
            c.flights.failed(key)
            if self.conflicts is not None:
                self.conflicts.record_trust_conflict(registry)
            holds = verdict.record.accepted or verdict.record.sightings[0].anchor.sha256
            self._both(
                pod,
                WARNING,
                "CATrustConflict",
                f"Refusing to trust {what} for {registry}: node {c.node_name} was shown an "
                f"anchor other than the cluster's record ({holds}); "
                f"{ft.who_saw(verdict.record)}. Nothing was installed on this node. Check "
                f"this node's path to {registry} (DNS, proxy, routes); if the registry really "
                f"changed its CA, approve the new anchor: {approve}",
            )
            return
        c.flights.forget(key)  # the record's watch or the policy's brings it back
        with self._lock:
            self._waiting.setdefault(registry, {})[pod.uid] = _Waiting(pod, failure, seen.sha256)
        if verdict.action == ft.APPROVAL:
            self._both(
                pod,
                NORMAL,
                "CATrustPendingApproval",
                f"{registry} presents {what}; policy requires an operator's approval before "
                f"it is trusted; nothing was changed. To approve: {approve}",
            )
            return
        rotation = " to replace the trusted anchor" if verdict.record.accepted else ""
        self._both(
            pod,
            NORMAL,
            "CATrustPending",
            f"{registry} presents {what}: {verdict.have} of {mode.confirmations} nodes "
            f"confirmed it{rotation}; it is installed here as soon as "
            f"{mode.confirmations - verdict.have} more node(s) fetch the same anchor; "
            "nothing was changed",
        )

    def _install(
        self, rem: Remediation, req: InstallRequest, pod: PodRef, key: str, anchor: CertInfo
    ) -> Result | None:
        c = self._c
        assert c is not None
        pinned = replace(req, pins=(anchor.sha256,))
        previous = c.engine.entries().get(req.endpoint.key)
        if previous is None or previous.sha256 == anchor.sha256:
            return rem.install(pinned, pod, key)
        old = _old_anchor_pem(c, previous.files, previous.sha256)
        first = rem.install(replace(pinned, overlap=old), pod, key)
        if (
            first is None
            or first.status != "installed"
            or first.restart_error is not None
            or first.restart_required
        ):
            return first  # not in use yet: the old anchor stays trusted beside the new
        return self.finish_rotation(pinned, previous.sha256, pod)

    def finish_rotation(
        self, req: InstallRequest, old_sha256: str, pod: PodRef | None
    ) -> Result | None:
        """The new anchor is verified: drop the old one from the file (`CARotated`)."""
        c = self._c
        assert c is not None
        try:
            done = c.engine.install(replace(req, overlap=None))
        except AgentError as exc:
            log.warning("rotation of %s: old anchor not removed yet: %s", req.endpoint.key, exc)
            return None
        anchor = done.anchor
        new = f"{anchor.subject} ({anchor.sha256})" if anchor else "the new anchor"
        self._report(
            pod,
            NORMAL,
            "CARotated",
            f"Rotated the CA for {req.endpoint.key}: {new} is verified and trusted; the "
            f"previous anchor {old_sha256} was trusted beside it until then and is now removed",
        )
        return done

    # ---------------------------------------------------------------- helpers

    def waiting(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return {reg: tuple(sorted(p)) for reg, p in self._waiting.items()}

    def _forget_waiting(self, registry: str, uid: str) -> None:
        with self._lock:
            pods = self._waiting.get(registry)
            if pods is not None:
                pods.pop(uid, None)
                if not pods:
                    self._waiting.pop(registry, None)

    def _both(self, pod: PodRef, type_: str, reason: str, message: str) -> None:
        self._report(pod, type_, reason, message)

    def _report(self, pod: PodRef | None, type_: str, reason: str, message: str) -> None:
        c = self._c
        assert c is not None
        c.recorder.node(c.node_name, type_, reason, message)
        if pod is not None:
            c.recorder.pod(pod.namespace, pod.name, pod.uid, type_, reason, message)


def _old_anchor_pem(c: Controller, files: tuple[str, ...], sha256: str) -> bytes | None:
    """The previous anchor's PEM, from the file the ledger names (only that certificate: a
    file left with two by an interrupted rotation contributes just the one trusted)."""
    from agent.core.trust import parse_pem_bundle, pem_bundle

    for path in files:
        data = c.engine.fs.read_bytes(path)
        if not data:
            continue
        try:
            certs = [cert for cert in parse_pem_bundle(data) if cert.sha256 == sha256]
        except AgentError:
            continue
        if certs:
            return pem_bundle(certs)
    return None


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


__all__ = ["ConflictCounter", "FirstTrust"]
