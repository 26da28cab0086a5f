"""`Controller`: the composition of the controller's steps, the worker that drains the
queue, and the one owner of their shared state.

Data flows one way: the watch side (`Watch`) writes the state and queues work; the worker
takes one item at a time and hands it to the remediation step (`Remediation`: gate ->
first trust -> engine -> Events, metrics, recyclePods) or the declarative step
(`PolicySync`, which installs through the remediation's last step); both end at the
`Publisher` (the node annotation, the trust metrics). Each step is built here with what it
uses; none of them knows the controller or another step's fields.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent.cluster.controller.intercept import InterceptionStep
from agent.cluster.controller.interfaces import (
    Cluster,
    FirstTrustStep,
    Metrics,
    PodRecycler,
    PodRef,
    Recorder,
    Work,
)
from agent.cluster.controller.publish import Publisher
from agent.cluster.controller.reconcile import PolicySync
from agent.cluster.controller.remediate import Remediation
from agent.cluster.controller.state import ControllerState
from agent.cluster.controller.watch import Watch
from agent.core.detect import PullFailure
from agent.core.errors import describe_failure
from agent.core.flights import Flights
from agent.core.policy import Policy, Resolved
from agent.core.reasons import Reason
from agent.core.remediation import InstallRequest, Result
from agent.node.engine import Engine
from agent.node.interception import ChainFetcher

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")

# the work kinds that are queued again after an unexpected failure (a lookup is redone by
# the next pod event, a failure by its own retry)
_RETRIED = ("sync", "reconcile", "repair")


class Controller:
    def __init__(
        self,
        node_name: str,
        engine: Engine,
        recorder: Recorder,
        cluster: Cluster,
        *,
        metrics: Metrics | None = None,
        recycler: PodRecycler | None = None,
        first_trust: FirstTrustStep | None = None,  # safe first trust; None: a fetch decides
        flights: Flights | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        chain_fetcher: ChainFetcher | None = None,  # interception: default a real fetch
        proxy_env: Mapping[str, str] | None = None,  # interception fallback: default os.environ
    ) -> None:
        self.node_name = node_name
        self.engine = engine
        self.recorder = recorder
        self.metrics = metrics
        self.flights = flights or Flights(clock=time.monotonic)
        self.clock = clock  # the reconcile's "now" (expiry warnings)
        self.state = ControllerState()
        self._first_trust = first_trust
        self._watch = Watch(
            self.state, node_name=node_name, recorder=recorder, cluster=cluster,
            flights=self.flights,
        )
        publisher = Publisher(
            node_name=node_name, engine=engine, recorder=recorder, cluster=cluster,
            metrics=metrics,
        )
        self._remediation = Remediation(
            self.state, node_name=node_name, engine=engine, recorder=recorder,
            flights=self.flights, publisher=publisher, metrics=metrics, recycler=recycler,
            first_trust=first_trust,
            interception=InterceptionStep(
                node_name=node_name, engine=engine, recorder=recorder, flights=self.flights,
                metrics=metrics, fetch=chain_fetcher, env=proxy_env, clock=clock,
            ),
        )
        self._policy_sync = PolicySync(
            self.state, node_name=node_name, engine=engine, recorder=recorder,
            installer=self._remediation, publisher=publisher,
        )

    # ------------------------------------------------------------ the state

    @property
    def opted_in(self) -> bool:
        return self.state.opted_in

    @property
    def runtime(self) -> str | None:
        return self.state.runtime

    @property
    def policy(self) -> Policy:
        return self.state.policy

    @property
    def policy_loaded(self) -> bool:
        return self.state.snapshot().policy_loaded

    @property
    def ca_sources(self) -> Resolved:
        return self.state.snapshot().ca_sources

    @property
    def first_trust(self) -> FirstTrustStep | None:
        return self._first_trust

    @first_trust.setter
    def first_trust(self, step: FirstTrustStep | None) -> None:
        # the daemon sets it once FirstTrust is built with `requeue` (agent.cluster.firsttrust)
        self._first_trust = step
        self._remediation.use_first_trust(step)

    # ------------------------------------------------------------ watch side

    def on_node(self, obj: Mapping[str, Any] | None) -> None:
        self._watch.on_node(obj)

    def on_policy(self, obj: Mapping[str, Any] | None) -> None:
        """A ConfigMap event. Deleted or broken: keep the last good policy and say so."""
        self._watch.on_policy(obj)

    def on_ca_sources(self, resolved: Resolved) -> None:
        """The caFrom sources changed (a bundle rotated, appeared or went): re-sync."""
        self._watch.on_ca_sources(resolved)

    def on_pod(self, obj: Mapping[str, Any]) -> None:
        self._watch.on_pod(obj)

    def on_pod_deleted(self, obj: Mapping[str, Any]) -> None:
        self._watch.on_pod_deleted(obj)

    def requeue(self, pod: PodRef, failure: PullFailure, key: str) -> None:
        """Handle a failure again now, past its back-off (first trust: the record accepted
        the anchor it waited for)."""
        self.flights.forget(key)
        self.state.queue.put(Work("failure", pod, failure))

    def request_reconcile(self) -> None:
        self.state.queue.put(Work("reconcile"))

    def stop(self) -> None:
        self.state.queue.put(Work("stop"))

    # ----------------------------------------------------------- worker side

    def work(self, stop: threading.Event) -> None:
        """The worker loop: one item at a time until stopped."""
        while not stop.is_set():
            item = self.state.queue.get(timeout=0.5)
            if item is None:
                continue
            if item.kind == "stop":
                self.state.queue.done()
                return
            try:
                self.process(item)
            except Exception as exc:  # the loop must survive anything one item does
                self._failed_item(item, exc)
            finally:
                self.state.queue.done()

    def drain(self) -> None:
        """Process everything queued (tests and shutdown)."""
        while (item := self.state.queue.get_nowait()) is not None:
            try:
                if item.kind != "stop":
                    self.process(item)
            finally:
                self.state.queue.done()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the worker has finished every item queued so far: the explicit
        "the agent has processed what it was shown" (tests wait on it instead of sleeping).
        False when `timeout` passes first."""
        return self.state.queue.wait_idle(timeout)

    def _failed_item(self, item: Work, exc: Exception) -> None:
        """An item other than a remediation raised (those report themselves): count it,
        say so on the Node, and queue it again after a back-off instead of dropping it."""
        log.exception("work item %s failed", item.kind)
        if self.metrics:
            self.metrics.record_work_failure(item.kind)
        if item.kind not in _RETRIED:
            return
        delay = self.flights.failed(f"work:{item.kind}:{item.key or ''}")
        reason = Reason.CA_TRUST_FAILED
        self.recorder.node(
            self.node_name,
            reason.type,
            reason,
            f"The agent's {item.kind} step failed unexpectedly ({describe_failure(exc)}); "
            f"retrying in {delay:.0f}s",
        )
        self.state.queue.later(delay, item)

    def process(self, item: Work) -> None:
        if item.kind == "failure" and item.failure is not None and item.pod is not None:
            self._remediation.handle_failure(item.pod, item.failure)
        elif item.kind == "retry" and item.failure is not None and item.pod is not None:
            # a retry after an unexpected failure, only while the pod still fails: its status
            # says so, or (a failure known from its Events only) its newest Event does
            if self.state.is_failing(item.pod.uid):
                self._remediation.handle_failure(item.pod, item.failure)
            else:
                self._lookup(item.pod, item.failure.image)
        elif item.kind == "lookup" and item.pod is not None:
            self._lookup(item.pod, item.image)
        elif item.kind == "sync":
            self.sync_policy()
        elif item.kind == "reconcile":
            self.reconcile()
        elif item.kind == "repair" and item.key is not None:
            self._policy_sync.repair_entry(item.key)

    def _lookup(self, pod: PodRef, image: str | None) -> None:
        failure = self._watch.lookup(pod, image)
        if failure is not None:
            self._remediation.handle_failure(pod, failure)

    # ------------------------------------------------------------ decisions

    def handle_failure(self, pod: PodRef, failure: PullFailure) -> None:
        self._remediation.handle_failure(pod, failure)

    def remediate(
        self, req: InstallRequest, pod: PodRef, failure: PullFailure, key: str
    ) -> Result | None:
        """Install `req` for a failing pod the way a remediation does (first trust
        included), past the gate: for drivers that built the request themselves."""
        return self._remediation.remediate(req, pod, failure, key)

    def recycling_enabled(self) -> bool:
        return self.state.recycling_enabled()

    def still_failing(self, uid: str, endpoint: str) -> bool:
        """The pod's latest status still shows a pull failure at `endpoint` (the recycler
        asks right before evicting: kubelet's own retry may have fixed it meanwhile)."""
        return self.state.still_failing(uid, endpoint)

    # ------------------------------------------------------ declarative side

    def sync_policy(self) -> None:
        """Apply declared caPEM entries; remove what the policy no longer allows."""
        self._policy_sync.sync_policy()

    def reconcile(self) -> None:
        """Periodic: converge half-done work, re-apply policy, recreate deleted anchors,
        warn about anchors that expire within 30 days."""
        self._policy_sync.reconcile(self.clock())
