"""`Controller`: the state its parts share, the work queue, and the one worker that drains it.

The public methods delegate to three parts, one per concern: `Watch` (watch callbacks, the
failing pods by uid, pod Event lookups), `Remediation` (gate -> engine -> Events and metrics
-> recyclePods) and `PolicySync` (caPEM entries, delisted registries, repairs, expiry
warnings, the node annotation). The state stays on the controller, behind its one lock, so
the daemon and the tests keep reading and replacing it there (`policy`, `clock`, `recycler`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.cluster.controller.interfaces import (
    WARNING,
    Cluster,
    Metrics,
    PodRecycler,
    PodRef,
    Recorder,
    Work,
)
from agent.cluster.controller.reconcile import PolicySync
from agent.cluster.controller.remediate import Remediation
from agent.cluster.controller.watch import Watch
from agent.core.detect import PullFailure
from agent.core.errors import describe_failure
from agent.core.flights import Flights
from agent.core.policy import DEFAULT_POLICY, Policy, Resolved
from agent.node.engine import Engine

if TYPE_CHECKING:
    from agent.cluster.firsttrust import FirstTrust

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")


@dataclass
class Controller:
    node_name: str
    engine: Engine
    recorder: Recorder
    cluster: Cluster
    metrics: Metrics | None = None
    recycler: PodRecycler | None = None
    first_trust: FirstTrust | None = None  # safe first trust; None: a fetch decides alone
    flights: Flights = field(default_factory=lambda: Flights(clock=time.monotonic))
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    opted_in: bool = False
    runtime: str | None = None
    policy: Policy = DEFAULT_POLICY
    policy_loaded: bool = False  # a policy came from the ConfigMap: removals are allowed
    # caFrom sources as the cluster side last found them (agent.cluster.casources)
    ca_sources: Resolved = field(default_factory=dict)
    _queue: queue.Queue[Work] = field(default_factory=queue.Queue)
    _lookups: dict[str, float] = field(default_factory=dict)
    _failing: dict[str, tuple[PodRef, list[PullFailure]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_policy_error: str | None = None

    # the parts: built from the fields above, never passed in
    _watch: Watch = field(init=False, repr=False, compare=False)
    _remediation: Remediation = field(init=False, repr=False, compare=False)
    _policy_sync: PolicySync = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._watch = Watch(self)
        self._remediation = Remediation(self)
        self._policy_sync = PolicySync(self)

    # ------------------------------------------------------------ watch side

    def on_node(self, obj: Mapping[str, Any] | None) -> None:
        self._watch.on_node(obj)

    def on_policy(self, obj: Mapping[str, Any] | None) -> None:
        """A ConfigMap event. Deleted or broken: keep the last good policy and say so."""
        self._watch.on_policy(obj)

    def on_ca_sources(self, resolved: Resolved) -> None:
        """The caFrom sources changed (a bundle rotated, appeared or went): re-sync."""
        with self._lock:
            self.ca_sources = dict(resolved)
        self._queue.put(Work("sync"))

    def on_pod(self, obj: Mapping[str, Any]) -> None:
        self._watch.on_pod(obj)

    def on_pod_deleted(self, obj: Mapping[str, Any]) -> None:
        self._watch.on_pod_deleted(obj)

    def request_reconcile(self) -> None:
        self._queue.put(Work("reconcile"))

    def stop(self) -> None:
        self._queue.put(Work("stop"))

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
            except Exception as exc:  # the loop must survive anything one item does
                self._failed_item(item, exc)

    def drain(self) -> None:
        """Process everything queued (tests and shutdown)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item.kind != "stop":
                self.process(item)

    def _failed_item(self, item: Work, exc: Exception) -> None:
        """An item other than a remediation raised (those report themselves): count it,
        say so on the Node, and queue it again after a back-off instead of dropping it."""
        log.exception("work item %s failed", item.kind)
        if self.metrics:
            self.metrics.record_work_failure(item.kind)
        if item.kind not in ("sync", "reconcile", "repair"):
            return  # a lookup is redone by the next pod event
        delay = self.flights.failed(f"work:{item.kind}:{item.key or ''}")
        self.recorder.node(
            self.node_name,
            WARNING,
            "CATrustFailed",
            f"The agent's {item.kind} step failed unexpectedly ({describe_failure(exc)}); "
            f"retrying in {delay:.0f}s",
        )
        self._later(delay, item)

    def process(self, item: Work) -> None:
        if item.kind == "failure" and item.failure is not None and item.pod is not None:
            self.handle_failure(item.pod, item.failure)
        elif item.kind == "retry" and item.failure is not None and item.pod is not None:
            # a retry after an unexpected failure, only while the pod still fails: its status
            # says so, or (a failure known from its Events only) its newest Event does
            with self._lock:
                failing = item.pod.uid in self._failing
            if failing:
                self.handle_failure(item.pod, item.failure)
            else:
                self._watch.lookup(item.pod, item.failure.image)
        elif item.kind == "lookup" and item.pod is not None:
            self._watch.lookup(item.pod, item.image)
        elif item.kind == "sync":
            self.sync_policy()
        elif item.kind == "reconcile":
            self.reconcile()
        elif item.kind == "repair" and item.key is not None:
            entry = self._policy_sync.entries().get(item.key)
            if entry is not None:
                self._policy_sync.repair(item.key, entry)

    def _later(self, delay: float, item: Work) -> None:
        timer = threading.Timer(delay, self._queue.put, args=(item,))
        timer.daemon = True  # a pending retry never keeps a stopping agent alive
        timer.start()

    # ------------------------------------------------------------ decisions

    def handle_failure(self, pod: PodRef, failure: PullFailure) -> None:
        self._remediation.handle_failure(pod, failure)

    def recycling_enabled(self) -> bool:
        return self._remediation.recycling_enabled()

    def still_failing(self, uid: str, endpoint: str) -> bool:
        """The pod's latest status still shows a pull failure at `endpoint` (the recycler
        asks right before evicting: kubelet's own retry may have fixed it meanwhile)."""
        return self._remediation.still_failing(uid, endpoint)

    # ------------------------------------------------------ declarative side

    def sync_policy(self) -> None:
        """Apply declared caPEM entries; remove what the policy no longer allows."""
        self._policy_sync.sync_policy()

    def reconcile(self) -> None:
        """Periodic: converge half-done work, re-apply policy, recreate deleted anchors,
        warn about anchors that expire within 30 days."""
        self._policy_sync.reconcile()
