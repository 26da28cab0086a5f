"""The decision loop of `ca-trust-agent run`, free of watch mechanics.

Watch callbacks (`on_node`, `on_policy`, `on_pod`) only record state and enqueue work;
one worker thread (`work`) does everything that changes the node, in order, so two
remediations never race and at most one runtime restart is in progress on this node.

Everything the controller does to the cluster goes through two narrow interfaces — a
`Recorder` for Events and a `Cluster` for the few reads and patches it needs (and, for
recyclePods, a `PodRecycler` that evicts in its own thread) — so tests can drive it directly
and the daemon wires it to the real API.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from agent.core import gate as g
from agent.core.detect import (
    PodPullFailure,
    PullFailure,
    pull_failure_from_event,
    pull_failures_from_pod,
)
from agent.core.errors import AgentError, PolicyError
from agent.core.flights import Flights
from agent.core.hostport import HostPort, parse_hostport
from agent.core.ledger_entry import LedgerEntry
from agent.core.policy import DEFAULT_POLICY, Policy, parse_policy
from agent.core.recycle import FailingPod, Owner, controller_owner
from agent.node.engine import Engine, InstallRequest, Result

log = logging.getLogger(__name__)

OPT_IN_ANNOTATION = "ca-trust-agent.io/remediate"
POLICY_KEY = "policy.yaml"
EXPIRY_WARNING = timedelta(days=30)
# A pod in ImagePullBackOff whose status carries no error text (kubelet < 1.32) or stuck
# creating its sandbox: its Events are looked up at most this often.
EVENT_LOOKUP_INTERVAL = 30.0

NORMAL = "Normal"
WARNING = "Warning"


class Recorder(Protocol):
    def node(self, node_name: str, type: str, reason: str, message: str) -> None: ...

    def pod(
        self, namespace: str, name: str, uid: str, type: str, reason: str, message: str
    ) -> None: ...


class Cluster(Protocol):
    def pod_events(self, namespace: str, uid: str) -> list[Mapping[str, Any]]: ...

    def set_trusted_registries(self, node_name: str, keys: Sequence[str]) -> None: ...


class Metrics(Protocol):
    def record_remediation(self, result: str, duration_seconds: float) -> None: ...

    def record_runtime_restart(self, runtime: str, result: str) -> None: ...

    def set_trusted(self, not_after: Mapping[str, datetime]) -> None: ...


class PodRecycler(Protocol):
    """recyclePods (agent.cluster.evict.Recycler): both calls only queue work, never block."""

    def recycle(self, endpoint: str, pods: Iterable[FailingPod]) -> object: ...

    def late(self, pod: FailingPod, endpoint: str) -> object: ...


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    owner: Owner | None = None  # the controlling ownerReference: may recyclePods evict it?


@dataclass
class _Work:
    kind: str  # "failure" | "lookup" | "sync" | "reconcile" | "repair" | "stop"
    pod: PodRef | None = None
    failure: PullFailure | None = None
    image: str | None = None
    key: str | None = None  # "repair": the ledger entry to finish (an owed restart)


@dataclass
class Controller:
    node_name: str
    engine: Engine
    recorder: Recorder
    cluster: Cluster
    metrics: Metrics | None = None
    recycler: PodRecycler | None = None
    flights: Flights = field(default_factory=lambda: Flights(clock=time.monotonic))
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    opted_in: bool = False
    runtime: str | None = None
    policy: Policy = DEFAULT_POLICY
    policy_loaded: bool = False  # a policy came from the ConfigMap: removals are allowed
    _queue: queue.Queue[_Work] = field(default_factory=queue.Queue)
    _lookups: dict[str, float] = field(default_factory=dict)
    _failing: dict[str, tuple[PodRef, list[PullFailure]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_policy_error: str | None = None

    # ------------------------------------------------------------ watch side

    def on_node(self, obj: Mapping[str, Any] | None) -> None:
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        opted = annotations.get(OPT_IN_ANNOTATION) == "enabled"
        version = (((obj or {}).get("status") or {}).get("nodeInfo") or {}).get(
            "containerRuntimeVersion"
        )
        with self._lock:
            was = self.opted_in
            self.opted_in = opted
            self.runtime = version.split("://", 1)[0] if isinstance(version, str) else None
        if opted and not was:
            log.info("node %s opted in", self.node_name)
            self._queue.put(_Work("sync"))
            self._requeue_failing()
        elif was and not opted:
            log.info("node %s opted out: idle", self.node_name)

    def on_policy(self, obj: Mapping[str, Any] | None) -> None:
        """A ConfigMap event. Deleted or broken: keep the last good policy and say so."""
        if obj is None:
            self._policy_problem(
                "ConfigMap ca-trust-agent was deleted; keeping the last good policy"
            )
            return
        text = (obj.get("data") or {}).get(POLICY_KEY)
        if text is None:
            self._policy_problem(
                f"ConfigMap ca-trust-agent has no key {POLICY_KEY}; keeping the last good policy"
            )
            return
        try:
            policy = parse_policy(text)
        except PolicyError as exc:
            self._policy_problem(f"policy.yaml is invalid, keeping the last good policy: {exc}")
            return
        with self._lock:
            changed = policy != self.policy or not self.policy_loaded
            self.policy = policy
            self.policy_loaded = True
            self._last_policy_error = None
        if changed:
            log.info(
                "policy loaded: %d registries, scope %s, dryRun %s",
                len(policy.registries),
                policy.scope,
                policy.dry_run,
            )
            self.flights.forget_all()
            self._queue.put(_Work("sync"))
            self._requeue_failing()

    def _policy_problem(self, message: str) -> None:
        with self._lock:
            if message == self._last_policy_error:
                return
            self._last_policy_error = message
        log.warning("%s", message)
        self.recorder.node(self.node_name, WARNING, "PolicyInvalid", message)

    def on_pod(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = PodRef(
            meta.get("namespace", ""),
            meta.get("name", ""),
            meta.get("uid", ""),
            controller_owner(meta),
        )
        failures = [p.failure for p in pull_failures_from_pod(obj) if p.failure is not None]
        with self._lock:
            # Remember who is failing now, so a policy change or an opt-in can act on them
            # at once instead of waiting for kubelet's next back-off (up to 5 minutes).
            if failures:
                self._failing[ref.uid] = (ref, failures)
            else:
                self._failing.pop(ref.uid, None)
        if not self.opted_in:
            return
        for ppf in pull_failures_from_pod(obj):
            if ppf.failure is not None:
                self._queue.put(_Work("failure", ref, ppf.failure, ppf.image))
            else:
                self._maybe_lookup(ref, ppf)
        if _creating_sandbox(obj):
            self._maybe_lookup(ref, None)

    def on_pod_deleted(self, obj: Mapping[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid", "")
        with self._lock:
            self._failing.pop(uid, None)
            self._lookups.pop(uid, None)

    def _requeue_failing(self) -> None:
        with self._lock:
            failing = list(self._failing.values())
        for ref, failures in failing:
            for failure in failures:
                self._queue.put(_Work("failure", ref, failure, failure.image))

    def _maybe_lookup(self, ref: PodRef, ppf: PodPullFailure | None) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._lookups.get(ref.uid, -1e9) < EVENT_LOOKUP_INTERVAL:
                return
            self._lookups[ref.uid] = now
            if len(self._lookups) > 10000:  # bounded: forget the oldest half
                for uid, _ in sorted(self._lookups.items(), key=lambda kv: kv[1])[:5000]:
                    del self._lookups[uid]
        self._queue.put(_Work("lookup", ref, image=ppf.image if ppf else None))

    def request_reconcile(self) -> None:
        self._queue.put(_Work("reconcile"))

    def stop(self) -> None:
        self._queue.put(_Work("stop"))

    # ----------------------------------------------------------- worker side

    def work(self, stop: threading.Event) -> None:
        """The worker loop: one item at a time until stopped."""
        while not stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item.kind == "stop":
                return
            try:
                self.process(item)
            except Exception:  # the loop must survive anything one item does
                log.exception("work item %s failed", item.kind)

    def drain(self) -> None:
        """Process everything queued (tests and shutdown)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item.kind != "stop":
                self.process(item)

    def process(self, item: _Work) -> None:
        if item.kind == "failure" and item.failure is not None and item.pod is not None:
            self.handle_failure(item.pod, item.failure)
        elif item.kind == "lookup" and item.pod is not None:
            self._lookup(item.pod, item.image)
        elif item.kind == "sync":
            self.sync_policy()
        elif item.kind == "reconcile":
            self.reconcile()
        elif item.kind == "repair" and item.key is not None:
            entry = self._entries().get(item.key)
            if entry is not None:
                self._repair(item.key, entry)

    def _lookup(self, pod: PodRef, image: str | None) -> None:
        try:
            events = self.cluster.pod_events(pod.namespace, pod.uid)
        except Exception as exc:
            log.warning("cannot list events of pod %s/%s: %s", pod.namespace, pod.name, exc)
            return
        newest = sorted(events, key=_event_time, reverse=True)
        for ev in newest:
            failure = pull_failure_from_event(ev, image)
            if failure is not None:
                self.handle_failure(pod, failure)
                return

    # ------------------------------------------------------------ decisions

    def handle_failure(self, pod: PodRef, failure: PullFailure) -> None:
        with self._lock:
            opted_in, policy = self.opted_in, self.policy
        verdict = g.gate(failure, opted_in=opted_in, policy=policy)
        if verdict.action == g.IGNORE:
            return
        key = verdict.endpoint.key if verdict.endpoint else failure.message[:200]
        if not self.flights.admit(key):
            # one remediation per host: this one is in flight or backing off, or it just
            # succeeded and this pod's pull had started before the CA was in place
            if verdict.action == g.REMEDIATE and verdict.endpoint is not None:
                self._recycle_late(pod, failure, verdict.endpoint.key, policy)
            return
        if verdict.action in (g.DENY, g.REPORT):
            assert verdict.event_reason is not None
            self._both(pod, WARNING, verdict.event_reason, verdict.message)
            if self.metrics:
                self.metrics.record_remediation(
                    "not-allowed" if verdict.action == g.DENY else "not-remediable", 0.0
                )
            self.flights.failed(key)
            return
        assert verdict.endpoint is not None
        self._both(pod, WARNING, "UntrustedRegistryDetected", verdict.message)
        req = InstallRequest(
            endpoint=verdict.endpoint,
            registry=verdict.registry,
            scope=policy.scope,
            restart=policy.restart,
            pins=verdict.pins,
            dry_run=policy.dry_run,
            allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
        )
        self._install(req, pod, key)

    def _install(self, req: InstallRequest, pod: PodRef | None, key: str) -> Result | None:
        t0 = time.perf_counter()
        try:
            result = self.engine.install(req)
        except AgentError as exc:
            delay = self.flights.failed(key)
            msg = (
                f"Could not trust {req.endpoint.key} ({exc.kind}): {exc}. "
                f"Nothing was changed; next attempt in {delay:.0f}s at the earliest"
            )
            self._report(pod, WARNING, "CATrustFailed", msg)
            if self.metrics:
                self.metrics.record_remediation("failed", time.perf_counter() - t0)
            return None
        err = result.restart_error
        if err is not None and err.kind != "refused":
            # The CA is in place but the runtime did not come back through its restart:
            # try the restart again after a back-off (install again = finish what is owed).
            delay = self.flights.failed(key)
            self._later(delay, _Work("repair", key=req.endpoint.key))
        else:
            self.flights.succeeded(key)
        self._report_result(result, pod)
        self._recycle(result)
        if self.metrics:
            self.metrics.record_remediation(_metric_result(result), time.perf_counter() - t0)
        self._publish()
        return result

    def _report_result(self, result: Result, pod: PodRef | None) -> None:
        anchor = result.anchor
        what = f"{anchor.subject} ({anchor.sha256})" if anchor is not None else "the CA"
        where = f"{result.scope} scope ({', '.join(result.stores)})"
        if result.status == "dry-run":
            self._report(
                pod,
                NORMAL,
                "CATrustDryRun",
                f"Dry run: would trust {what} for {result.endpoint.key} in {where}; "
                f"plan: {len(result.actions)} steps; nothing was changed",
            )
            return
        if result.status == "unchanged":
            log.info("%s already trusted", result.endpoint.key)
            return
        self._report(
            pod,
            NORMAL,
            "CATrusted",
            f"Trusted {what} for {result.endpoint.key} in {where}; {result.next_step}",
        )
        for rt in result.restarted:
            self.recorder.node(
                self.node_name,
                NORMAL,
                "ContainerRuntimeRestarted",
                f"Restarted {rt} so it reloads the system trust store for "
                f"{result.endpoint.key}; it answers again",
            )
            if self.metrics:
                self.metrics.record_runtime_restart(rt, "ok")
        err = result.restart_error
        if err is not None:
            retry = (
                "" if err.kind == "refused" else "; the restart is retried with back-off"
            )
            self.recorder.node(
                self.node_name,
                WARNING,
                "ContainerRuntimeRestartRefused",
                f"{err}; the CA for {result.endpoint.key} is installed but pulls "
                f"keep failing until the runtime restarts{retry}",
            )
            if self.metrics:
                self.metrics.record_runtime_restart(",".join(self.engine.runtimes) or "?", err.kind)

    # ------------------------------------------------------------ recyclePods

    def _recycle(self, result: Result) -> None:
        """The CA now works for this endpoint: hand the pods still failing there to the
        recycler, which evicts the owned ones in its own thread (PDB retries included)."""
        with self._lock:
            enabled = self.policy.recycle_pods
            failing = list(self._failing.values())
        if not enabled or self.recycler is None or not _effective(result):
            return
        pods = [_failing_pod(ref, failures) for ref, failures in failing]
        self.recycler.recycle(result.endpoint.key, pods)

    def _recycle_late(
        self, pod: PodRef, failure: PullFailure, endpoint: str, policy: Policy
    ) -> None:
        # only pods whose status shows the failure: the recycler re-checks that status
        # right before evicting, which a failure known only from an Event cannot pass
        if (
            policy.recycle_pods
            and not policy.dry_run
            and self.recycler is not None
            and self.still_failing(pod.uid, endpoint)
        ):
            self.recycler.late(_failing_pod(pod, [failure]), endpoint)

    def recycling_enabled(self) -> bool:
        with self._lock:
            return self.opted_in and self.policy.recycle_pods and not self.policy.dry_run

    def still_failing(self, uid: str, endpoint: str) -> bool:
        """The pod's latest status still shows a pull failure at `endpoint` (the recycler
        asks right before evicting: kubelet's own retry may have fixed it meanwhile)."""
        with self._lock:
            entry = self._failing.get(uid)
        return entry is not None and endpoint in _failing_hosts(entry[1])

    def _report(self, pod: PodRef | None, type_: str, reason: str, message: str) -> None:
        if pod is None:
            self.recorder.node(self.node_name, type_, reason, message)
        else:
            self._both(pod, type_, reason, message)

    def _both(self, pod: PodRef, type_: str, reason: str, message: str) -> None:
        self.recorder.node(self.node_name, type_, reason, message)
        self.recorder.pod(pod.namespace, pod.name, pod.uid, type_, reason, message)

    # ------------------------------------------------------ declarative side

    def sync_policy(self) -> None:
        """Apply declared caPEM entries; remove what the policy no longer allows."""
        with self._lock:
            opted_in, policy, loaded = self.opted_in, self.policy, self.policy_loaded
        if not opted_in:
            return
        try:
            self.engine.recover()
        except AgentError as exc:
            log.warning("ledger recovery failed: %s", exc)
        for endpoint, pem, pins in policy.declared():
            req = InstallRequest(
                endpoint=endpoint,
                scope=policy.scope,
                restart=policy.restart,
                pins=pins,
                ca_pem=pem,
                source="policy",
                dry_run=policy.dry_run,
                allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
            )
            self._install(req, None, endpoint.key)
        if loaded:
            self._remove_delisted(policy)
        self._publish()

    def _remove_delisted(self, policy: Policy) -> None:
        declared = {hp.key: pem for hp, pem, _ in policy.declared()}
        for key, entry in sorted(self._entries().items()):
            reason = _delisted_reason(entry, policy, declared)
            if reason is None:
                continue
            if policy.dry_run:
                self.recorder.node(
                    self.node_name,
                    NORMAL,
                    "CATrustDryRun",
                    f"Dry run: would remove the CA for {key} ({reason})",
                )
                continue
            try:
                result = self.engine.remove(
                    parse_hostport(key),
                    restart=policy.restart,
                    allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
                )
            except AgentError as exc:
                self.recorder.node(
                    self.node_name,
                    WARNING,
                    "CATrustFailed",
                    f"Could not remove the CA for {key}: {exc}",
                )
                continue
            self.recorder.node(
                self.node_name,
                NORMAL,
                "CARemoved",
                f"Removed the CA {entry.anchor_subject} ({entry.sha256}) for {key}: "
                f"{reason}; {result.next_step}",
            )

    def reconcile(self) -> None:
        """Periodic: converge half-done work, re-apply policy, recreate deleted anchors,
        warn about anchors that expire within 30 days."""
        with self._lock:
            opted_in = self.opted_in
        if not opted_in:
            return
        self.sync_policy()
        now = self.clock()
        for key, entry in sorted(self._entries().items()):
            if entry.state == "installed" and not all(
                self.engine.fs.exists(f) for f in entry.files
            ):
                self._repair(key, entry)
            not_after = _parse_time(entry.not_after)
            if not_after is not None and not_after - now < EXPIRY_WARNING:
                days = (not_after - now).days
                self.recorder.node(
                    self.node_name,
                    WARNING,
                    "CAExpiringSoon",
                    f"The CA {entry.anchor_subject} ({entry.sha256}) trusted for {key} "
                    + (f"expires in {days} days" if days >= 0 else f"expired {-days} days ago")
                    + f" ({entry.not_after}); renew it at the registry",
                )
        self._publish()

    def _repair(self, key: str, entry: LedgerEntry) -> None:
        """Put an entry back the way it was installed: a deleted anchor file is re-created,
        an owed runtime restart is done. Declared CAs come from the policy; fetched ones are
        fetched again, pinned to the anchor the ledger recorded."""
        log.warning("re-applying %s (state on disk or runtime differs from the ledger)", key)
        with self._lock:
            policy = self.policy
        declared = {hp.key: pem for hp, pem, _ in policy.declared()}
        pem = declared.get(key) if entry.source == "policy" else None
        req = InstallRequest(
            endpoint=parse_hostport(key),
            registry=parse_hostport(entry.registry),
            scope=entry.scope,
            restart=policy.restart,
            ca_pem=pem,
            source="policy" if pem is not None else "fetched",
            pins=(entry.sha256,) if pem is None else (),
            allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
        )
        self._install(req, None, key)

    def _later(self, delay: float, item: _Work) -> None:
        timer = threading.Timer(delay, self._queue.put, args=(item,))
        timer.daemon = True  # a pending retry never keeps a stopping agent alive
        timer.start()

    def _entries(self) -> dict[str, LedgerEntry]:
        try:
            return self.engine.entries()
        except AgentError as exc:
            self.recorder.node(
                self.node_name, WARNING, "CATrustFailed", f"ledger unreadable: {exc}"
            )
            return {}

    def _publish(self) -> None:
        entries = self._entries()
        installed = sorted(k for k, e in entries.items() if e.state == "installed")
        try:
            self.cluster.set_trusted_registries(self.node_name, installed)
        except Exception as exc:
            log.warning("cannot update the node annotation: %s", exc)
        if self.metrics:
            times = {
                k: t for k, e in entries.items() if (t := _parse_time(e.not_after)) is not None
            }
            self.metrics.set_trusted(times)


def _delisted_reason(
    entry: LedgerEntry, policy: Policy, declared: Mapping[str, bytes]
) -> str | None:
    try:
        endpoint = parse_hostport(entry.endpoint)
        registry = parse_hostport(entry.registry)
    except AgentError:
        return "its ledger key is not a valid host:port"
    if entry.source == "policy" and entry.endpoint not in declared:
        return "its caPEM entry was removed from policy.yaml"
    if not policy.decide(endpoint).allowed:
        return f"{endpoint.key} is no longer allowed by policy.yaml"
    if registry != endpoint and not policy.decide(registry).allowed:
        return f"the registry {registry.key} is no longer allowed by policy.yaml"
    return None


def _metric_result(result: Result) -> str:
    if result.status == "dry-run":
        return "dry-run"
    if result.status == "unchanged":
        return "unchanged"
    if result.restart_error is not None:
        return "restart-" + result.restart_error.kind
    return "trusted"


def _effective(result: Result) -> bool:
    """The CA is in place and in use: pulls retried now succeed. Not when a runtime restart
    is still owed (refused, or `restart: never`), nor for a dry run."""
    return (
        result.status in ("installed", "unchanged")
        and result.restart_error is None
        and not result.restart_required
    )


def _failing_hosts(failures: Sequence[PullFailure]) -> frozenset[str]:
    return frozenset(f.failing.key for f in failures if f.failing is not None)


def _failing_pod(ref: PodRef, failures: Sequence[PullFailure]) -> FailingPod:
    return FailingPod(ref.namespace, ref.name, ref.uid, ref.owner, _failing_hosts(failures))


def _creating_sandbox(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return False
    for cs in status.get("containerStatuses") or []:
        waiting = ((cs or {}).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "ContainerCreating":
            return True
    return not status.get("containerStatuses") and any(
        (c or {}).get("type") == "PodScheduled" for c in status.get("conditions") or []
    )


def _event_time(ev: Mapping[str, Any]) -> str:
    return str(ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp") or "")


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


__all__ = ["Cluster", "Controller", "HostPort", "PodRef", "Recorder"]
