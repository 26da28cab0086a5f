"""The controller's watch side: what Node, ConfigMap, Pod and caFrom events record and
enqueue.

Callbacks here only write the shared state (opt-in, runtime, policy, the failing pods by
uid) and queue work for the worker; the one thing that runs on the worker is the lookup of
a pod's Events, for failures whose status carries no error text, which returns the failure
it found for the worker to hand on (the watch side never remediates)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from agent.cluster.controller.interfaces import Cluster, PodRef, Recorder, Work
from agent.cluster.controller.state import ControllerState
from agent.core.detect import (
    PodPullFailure,
    PullFailure,
    pull_failure_from_event,
    pull_failures_from_pod,
)
from agent.core.errors import PolicyError
from agent.core.firsttrust import approvals, with_approvals
from agent.core.flights import Flights
from agent.core.policy import Resolved, parse_policy
from agent.core.reasons import Reason
from agent.core.recycle import controller_owner

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")

OPT_IN_ANNOTATION = "ca-trust-agent.io/remediate"
POLICY_KEY = "policy.yaml"
# A pod in ImagePullBackOff whose status carries no error text (kubelet < 1.32) or stuck
# creating its sandbox: its Events are looked up at most this often.
EVENT_LOOKUP_INTERVAL = 30.0


class Watch:
    """The watch-side step: writes `state`, puts work on `state.queue`."""

    def __init__(
        self,
        state: ControllerState,
        *,
        node_name: str,
        recorder: Recorder,
        cluster: Cluster,
        flights: Flights,
    ) -> None:
        self._state = state
        self._node_name = node_name
        self._recorder = recorder
        self._cluster = cluster
        self._flights = flights

    def on_node(self, obj: Mapping[str, Any] | None) -> None:
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        opted = annotations.get(OPT_IN_ANNOTATION) == "enabled"
        version = (((obj or {}).get("status") or {}).get("nodeInfo") or {}).get(
            "containerRuntimeVersion"
        )
        runtime = version.split("://", 1)[0] if isinstance(version, str) else None
        was = self._state.set_node(opted, runtime)
        if opted and not was:
            log.info("node %s opted in", self._node_name)
            self._state.queue.put(Work("sync"))
            self.requeue_failing()
        elif was and not opted:
            log.info("node %s opted out: idle", self._node_name)

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
        # operator approvals (`approve.*` keys beside policy.yaml) become pins
        policy = with_approvals(policy, approvals(obj.get("data") or {}))
        if self._state.set_policy(policy):
            log.info(
                "policy loaded: %d registries, scope %s, dryRun %s",
                len(policy.registries),
                policy.scope,
                policy.dry_run,
            )
            self._flights.forget_all()
            self._state.queue.put(Work("sync"))
            self.requeue_failing()

    def _policy_problem(self, message: str) -> None:
        if not self._state.policy_problem(message):
            return
        log.warning("%s", message)
        reason = Reason.POLICY_INVALID
        self._recorder.node(self._node_name, reason.type, reason, message)

    def on_ca_sources(self, resolved: Resolved) -> None:
        """The caFrom sources changed (a bundle rotated, appeared or went): re-sync."""
        self._state.set_sources(resolved)
        self._state.queue.put(Work("sync"))

    def on_pod(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = PodRef(
            meta.get("namespace", ""),
            meta.get("name", ""),
            meta.get("uid", ""),
            controller_owner(meta),
        )
        found = pull_failures_from_pod(obj)
        self._state.pod_seen(ref, [p.failure for p in found if p.failure is not None])
        if not self._state.opted_in:
            return
        for ppf in found:
            if ppf.failure is not None:
                self._state.queue.put(Work("failure", ref, ppf.failure, ppf.image))
            else:
                self._maybe_lookup(ref, ppf)
        if _creating_sandbox(obj):
            self._maybe_lookup(ref, None)

    def on_pod_deleted(self, obj: Mapping[str, Any]) -> None:
        self._state.pod_gone((obj.get("metadata") or {}).get("uid", ""))

    def requeue_failing(self) -> None:
        for ref, failures in self._state.failing():
            for failure in failures:
                self._state.queue.put(Work("failure", ref, failure, failure.image))

    def _maybe_lookup(self, ref: PodRef, ppf: PodPullFailure | None) -> None:
        if self._state.lookup_due(ref.uid, time.monotonic(), EVENT_LOOKUP_INTERVAL):
            self._state.queue.put(Work("lookup", ref, image=ppf.image if ppf else None))

    def lookup(self, pod: PodRef, image: str | None) -> PullFailure | None:
        """On the worker: the newest pull failure among the pod's Events, if any."""
        try:
            events = self._cluster.pod_events(pod.namespace, pod.uid)
        except Exception as exc:
            log.warning("cannot list events of pod %s/%s: %s", pod.namespace, pod.name, exc)
            return None
        for ev in sorted(events, key=_event_time, reverse=True):
            failure = pull_failure_from_event(ev, image)
            if failure is not None:
                return failure
        return None


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
