"""Safe first trust in the controller: a stage between "the gate allows this registry" and
"the engine installs the anchor" that asks the cluster-wide record (agent.cluster.trustrecord)
whether this node may trust what it fetched (agent.core.firsttrust decides), and returns the
answer as a `Decision`: install these requests, hold, or refuse. It installs nothing itself:
the remediation step (agent.cluster.controller.remediate) performs the installs and reports.

Only fetched anchors take this path: a pinned registry (policy `pins`, or an operator's
approval, which is a pin) and a declared CA (`caPEM`, `caFrom`) never consult the record,
and neither does a dry run (it writes nothing anywhere).

The anchor is learned with the engine's dry run (fetch and analyze, nothing written), then
installed with its fingerprint as the pin, so the anchor installed is exactly the anchor the
record accepted even if the registry answers differently a moment later.

Waiting nodes remember their failing pods; when the record's watch shows their anchor
accepted, the failures are handed back (`requeue`) and installed at once (no polling).

Rotation: when the accepted anchor differs from the one this node's ledger holds, the
decision is two installs: the new anchor with the old one beside it in the same file
(InstallRequest.overlap), which the runtime verifies, and then the new one alone
(`CARotated`). Each is one engine install (intent in the ledger first), so a kill -9 at any
step leaves the ledger and the disk agreeing, and the next failure or reconcile converges.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent.cluster.trustrecord import TrustRecord
from agent.core import firsttrust as ft
from agent.core.detect import PullFailure
from agent.core.errors import AgentError
from agent.core.policy import Policy
from agent.core.reasons import Reason
from agent.core.remediation import InstallRequest, Result

if TYPE_CHECKING:
    from agent.cluster.controller.interfaces import PodRef
    from agent.core.trust import CertInfo
    from agent.node.engine import Engine

log = logging.getLogger(__name__)

class ConflictCounter(Protocol):
    def record_trust_conflict(self, registry: str) -> None: ...


@dataclass(frozen=True)
class _Waiting:
    pod: PodRef
    failure: PullFailure
    sha256: str


class FirstTrust:
    """The controller's first-trust stage: `decide` returns what to do with a failure the
    gate allowed; `on_record` (the record's watch) wakes the pods waiting for an anchor the
    record now accepts, through `requeue(pod, failure, key)`."""

    def __init__(
        self,
        record: TrustRecord,
        engine: Engine,
        *,
        node_name: str,
        requeue: Callable[[PodRef, PullFailure, str], None],
        namespace: str,
        policy_name: str = "ca-trust-agent",
        conflicts: ConflictCounter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.record = record
        self.engine = engine
        self.node_name = node_name
        self.requeue = requeue
        self.namespace = namespace
        self.policy_name = policy_name
        self.conflicts = conflicts
        self.clock = clock
        self._waiting: dict[str, dict[str, _Waiting]] = {}  # registry -> pod uid -> work
        self._lock = threading.Lock()

    # -------------------------------------------------------------- watch side

    def on_record(self, kind: str, obj: Mapping[str, Any]) -> None:
        """The record changed: hand back the failures of every waiting pod whose anchor is
        now accepted (the worker installs them; this is the watch thread)."""
        self.record.on_event(kind, obj)
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
                self.requeue(w.pod, w.failure, registry)

    # ------------------------------------------------------------- worker side

    def decide(
        self, req: InstallRequest, policy: Policy, pod: PodRef, failure: PullFailure
    ) -> ft.Decision:
        """What the remediation does with `req`: install it (as is, or pinned to the anchor
        the record accepted), rotate, hold, or refuse. Writes to the record when this
        node's sighting counts; installs nothing."""
        preview = self._preview(req)
        if preview is None or preview.anchor is None:
            return ft.Decision(ft.PROCEED, (req,))
        anchor = preview.anchor
        if preview.analysis is not None:  # install the very chain the record judged: no refetch
            req = replace(req, chain=preview.analysis.chain)
        if req.pins:  # pinned, and the pin matches: rotate without a gap
            return self._install(req, anchor)
        registry = req.endpoint.key
        mode = ft.mode(policy, req.endpoint)
        seen = ft.seen_from_der(anchor.der, anchor.subject, _iso(anchor.not_after))
        held = self.engine.entries().get(registry)
        now = _iso(self.clock())
        try:
            verdict = self.record.update(
                registry,
                lambda rec: ft.observe(
                    rec, seen, self.node_name, now, mode, held.sha256 if held else None
                ),
            )
        except AgentError as exc:
            return _notice(
                ft.RETRY,
                Reason.CA_TRUST_FAILED,
                f"Could not consult the cluster's trust record for {registry} ({exc}); "
                "nothing was changed",
            )
        if verdict.action == ft.INSTALL:
            self._forget_waiting(registry, pod.uid)
            return self._install(req, anchor)
        return self._hold(verdict, registry, seen, mode, pod, failure)

    def _preview(self, req: InstallRequest) -> Result | None:
        """The anchor this node would install, when the record (or a rotation) has a say;
        None when the plain install decides: a declared CA, a dry run, a pinned registry
        not yet trusted here, or a fetch / analysis / pin check that fails (the real
        attempt then reports it as CATrustFailed, naming the fingerprint a pin would need,
        and changes nothing)."""
        if req.ca_pem is not None or req.source != "fetched" or req.dry_run:
            return None
        if req.pins and req.endpoint.key not in self.engine.entries():
            return None  # the operator's pin decides, not the record
        try:
            return self.engine.install(replace(req, dry_run=True))
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
    ) -> ft.Decision:
        """Not installed: say why, and wait for the record (or the operator)."""
        approve = ft.approval_command(self.namespace, self.policy_name, registry, seen.sha256)
        what = f"{seen.subject} ({seen.sha256})"
        if verdict.action == ft.CONFLICT:
            if self.conflicts is not None:
                self.conflicts.record_trust_conflict(registry)
            return _notice(
                ft.REFUSE,
                Reason.CA_TRUST_CONFLICT,
                _conflict_message(verdict, registry, seen, self.node_name, approve),
            )
        with self._lock:
            self._waiting.setdefault(registry, {})[pod.uid] = _Waiting(pod, failure, seen.sha256)
        if verdict.action == ft.APPROVAL:
            return _notice(
                ft.HOLD,
                Reason.CA_TRUST_PENDING_APPROVAL,
                f"{registry} presents {what}; policy requires an operator's approval before "
                f"it is trusted; nothing was changed. To approve: {approve}",
            )
        rotation = " to replace the trusted anchor" if verdict.record.accepted else ""
        others = [s for s in verdict.record.candidates() if s.anchor.sha256 != seen.sha256]
        rivals = f"; other anchors seen: {ft.who_saw(verdict.record)}" if others else ""
        return _notice(
            ft.HOLD,
            Reason.CA_TRUST_PENDING,
            f"{registry} presents {what}: {verdict.have} of {mode.confirmations} nodes "
            f"confirmed it{rotation}; it is installed here as soon as "
            f"{mode.confirmations - verdict.have} more node(s) fetch the same anchor "
            f"(the first anchor {mode.confirmations} nodes confirm is trusted){rivals}; "
            "nothing was changed",
        )

    def _install(self, req: InstallRequest, anchor: CertInfo) -> ft.Decision:
        """Install exactly `anchor`; beside the one the ledger holds when that differs."""
        pinned = replace(req, pins=(anchor.sha256,))
        previous = self.engine.entries().get(req.endpoint.key)
        if previous is None or previous.sha256 == anchor.sha256:
            return ft.Decision(ft.PROCEED, (pinned,))
        old = self._old_anchor_pem(previous.files, previous.sha256)
        return ft.Decision(
            ft.ROTATE,
            (replace(pinned, overlap=old), replace(pinned, overlap=None)),
            rotated_from=previous.sha256,
        )

    def _old_anchor_pem(self, files: tuple[str, ...], sha256: str) -> bytes | None:
        """The previous anchor's PEM, from the file the ledger names (only that certificate:
        a file left with two by an interrupted rotation contributes just the one trusted)."""
        from agent.core.trust import parse_pem_bundle, pem_bundle

        for path in files:
            data = self.engine.fs.read_bytes(path)
            if not data:
                continue
            try:
                certs = [cert for cert in parse_pem_bundle(data) if cert.sha256 == sha256]
            except AgentError:
                continue
            if certs:
                return pem_bundle(certs)
        return None

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


def _conflict_message(
    verdict: ft.Verdict, registry: str, seen: ft.Seen, node: str, approve: str
) -> str:
    record = verdict.record
    what = f"{seen.subject} ({seen.sha256})"
    others = [s.anchor.sha256 for s in record.sightings if s.anchor.sha256 != seen.sha256]
    holds = record.accepted or (others[0] if others else "none")
    if verdict.split:
        return (
            f"Refusing to trust {what} for {registry}: two anchors are each confirmed by "
            f"{verdict.need} or more nodes ({ft.who_saw(record)}). Either an attacker "
            f"controls the path to {registry} of at least {verdict.need} nodes, or the "
            "registry changed its CA; the record cannot tell which, and no further node "
            f"installs an anchor other than the accepted one ({record.accepted or 'none'}). "
            f"Nothing was installed on node {node}. Check the listed nodes' paths to "
            f"{registry} (DNS, proxy, routes) and pin the right anchor, e.g.: {approve}"
        )
    return (
        f"Refusing to trust {what} for {registry}: node {node} was shown an anchor other "
        f"than the cluster's record ({holds}); {ft.who_saw(record)}. Nothing was installed "
        f"on this node. Check this node's path to {registry} (DNS, proxy, routes); if the "
        f"registry really changed its CA, approve the new anchor: {approve}"
    )


def _notice(kind: str, reason: Reason, message: str) -> ft.Decision:
    return ft.Decision(kind, reason=reason, message=message)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


__all__ = ["ConflictCounter", "FirstTrust"]
