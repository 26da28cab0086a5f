"""The controller's watch side: what Node, ConfigMap and Pod events record and enqueue.

Callbacks here only update the controller's state (opt-in, runtime, policy, the failing pods
by uid) and queue work for the worker; the one thing that runs on the worker is the lookup of
a pod's Events, for failures whose status carries no error text."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.cluster.controller.interfaces import WARNING, PodRef, Work
from agent.core.detect import PodPullFailure, pull_failure_from_event, pull_failures_from_pod
from agent.core.errors import PolicyError
from agent.core.firsttrust import approvals, with_approvals
from agent.core.policy import parse_policy
from agent.core.recycle import controller_owner

if TYPE_CHECKING:
    from agent.cluster.controller.loop import Controller

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")

OPT_IN_ANNOTATION = "ca-trust-agent.io/remediate"
POLICY_KEY = "policy.yaml"
# A pod in ImagePullBackOff whose status carries no error text (kubelet < 1.32) or stuck
# creating its sandbox: its Events are looked up at most this often.
EVENT_LOOKUP_INTERVAL = 30.0


class Watch:
    """The watch-side part of a `Controller`: its state lives on the controller, shared
    with the worker under the controller's lock."""

    def __init__(self, ctl: Controller) -> None:
        self._c = ctl

    def on_node(self, obj: Mapping[str, Any] | None) -> None:
        c = self._c
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        opted = annotations.get(OPT_IN_ANNOTATION) == "enabled"
        version = (((obj or {}).get("status") or {}).get("nodeInfo") or {}).get(
            "containerRuntimeVersion"
        )
        with c._lock:
            was = c.opted_in
            c.opted_in = opted
            c.runtime = version.split("://", 1)[0] if isinstance(version, str) else None
        if opted and not was:
            log.info("node %s opted in", c.node_name)
            c._queue.put(Work("sync"))
            self.requeue_failing()
        elif was and not opted:
            log.info("node %s opted out: idle", c.node_name)

    def on_policy(self, obj: Mapping[str, Any] | None) -> None:
        """A ConfigMap event. Deleted or broken: keep the last good policy and say so."""
        c = self._c
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
        with c._lock:
            changed = policy != c.policy or not c.policy_loaded
            c.policy = policy
            c.policy_loaded = True
            c._last_policy_error = None
        if changed:
            log.info(
                "policy loaded: %d registries, scope %s, dryRun %s",
                len(policy.registries),
                policy.scope,
                policy.dry_run,
            )
            c.flights.forget_all()
            c._queue.put(Work("sync"))
            self.requeue_failing()

    def _policy_problem(self, message: str) -> None:
        c = self._c
        with c._lock:
            if message == c._last_policy_error:
                return
            c._last_policy_error = message
        log.warning("%s", message)
        c.recorder.node(c.node_name, WARNING, "PolicyInvalid", message)

    def on_pod(self, obj: Mapping[str, Any]) -> None:
        c = self._c
        meta = obj.get("metadata") or {}
        ref = PodRef(
            meta.get("namespace", ""),
            meta.get("name", ""),
            meta.get("uid", ""),
            controller_owner(meta),
        )
        failures = [p.failure for p in pull_failures_from_pod(obj) if p.failure is not None]
        with c._lock:
            # Remember who is failing now, so a policy change or an opt-in can act on them
            # at once instead of waiting for kubelet's next back-off (up to 5 minutes).
            if failures:
                c._failing[ref.uid] = (ref, failures)
            else:
                c._failing.pop(ref.uid, None)
        if not c.opted_in:
            return
        for ppf in pull_failures_from_pod(obj):
            if ppf.failure is not None:
                c._queue.put(Work("failure", ref, ppf.failure, ppf.image))
            else:
                self._maybe_lookup(ref, ppf)
        if _creating_sandbox(obj):
            self._maybe_lookup(ref, None)

    def on_pod_deleted(self, obj: Mapping[str, Any]) -> None:
        c = self._c
        uid = (obj.get("metadata") or {}).get("uid", "")
        with c._lock:
            c._failing.pop(uid, None)
            c._lookups.pop(uid, None)

    def requeue_failing(self) -> None:
        c = self._c
        with c._lock:
            failing = list(c._failing.values())
        for ref, failures in failing:
            for failure in failures:
                c._queue.put(Work("failure", ref, failure, failure.image))

    def _maybe_lookup(self, ref: PodRef, ppf: PodPullFailure | None) -> None:
        c = self._c
        now = time.monotonic()
        with c._lock:
            if now - c._lookups.get(ref.uid, -1e9) < EVENT_LOOKUP_INTERVAL:
                return
            c._lookups[ref.uid] = now
            if len(c._lookups) > 10000:  # bounded: forget the oldest half
                for uid, _ in sorted(c._lookups.items(), key=lambda kv: kv[1])[:5000]:
                    del c._lookups[uid]
        c._queue.put(Work("lookup", ref, image=ppf.image if ppf else None))

    def lookup(self, pod: PodRef, image: str | None) -> None:
        """On the worker: the newest pull failure among the pod's Events, if any, handled."""
        c = self._c
        try:
            events = c.cluster.pod_events(pod.namespace, pod.uid)
        except Exception as exc:
            log.warning("cannot list events of pod %s/%s: %s", pod.namespace, pod.name, exc)
            return
        newest = sorted(events, key=_event_time, reverse=True)
        for ev in newest:
            failure = pull_failure_from_event(ev, image)
            if failure is not None:
                c.handle_failure(pod, failure)
                return


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
