"""The controller's remediation step: gate -> engine -> Events and metrics -> recyclePods.

Runs on the worker only. A failure the gate lets through is installed by the engine under
the per-host flight control; the outcome is reported as Events on the node (and the pod),
recorded in the metrics, and, when the CA now works, the pods still failing at that
endpoint are handed to the recycler."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.cluster import oplog
from agent.cluster.controller.interfaces import NORMAL, WARNING, PodRef, Work
from agent.core import gate as g
from agent.core.detect import PullFailure
from agent.core.errors import AgentError, describe_failure
from agent.core.policy import Policy
from agent.core.recycle import FailingPod
from agent.node.engine import InstallRequest, Result

if TYPE_CHECKING:
    from agent.cluster.controller.loop import Controller

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")


class Remediation:
    """The remediation part of a `Controller`: reads the policy and the failing pods the
    watch side recorded, and acts through the controller's engine, recorder and metrics."""

    def __init__(self, ctl: Controller) -> None:
        self._c = ctl

    def handle_failure(self, pod: PodRef, failure: PullFailure) -> None:
        c = self._c
        with c._lock:
            opted_in, policy = c.opted_in, c.policy
        verdict = g.gate(failure, opted_in=opted_in, policy=policy)
        if verdict.action == g.IGNORE:
            return
        key = verdict.endpoint.key if verdict.endpoint else failure.message[:200]
        if not c.flights.admit(key):
            # one remediation per host: this one is in flight or backing off, or it just
            # succeeded and this pod's pull had started before the CA was in place
            if verdict.action == g.REMEDIATE and verdict.endpoint is not None:
                self._recycle_late(pod, failure, verdict.endpoint.key, policy)
            return
        self._log_decision(pod, failure, verdict, policy.scope)
        if verdict.action in (g.DENY, g.REPORT):
            assert verdict.event_reason is not None
            self._both(pod, WARNING, verdict.event_reason, verdict.message)
            if c.metrics:
                c.metrics.record_remediation(
                    "not-allowed" if verdict.action == g.DENY else "not-remediable", 0.0
                )
            c.flights.failed(key)
            return
        assert verdict.endpoint is not None
        self._both(pod, WARNING, "UntrustedRegistryDetected", verdict.message)
        try:
            self._remediate(pod, failure, verdict, policy, key)
        except Exception as exc:  # a bug or a broken dependency: say so, and try again later
            self._unexpected(pod, failure, key, exc)

    def _remediate(
        self, pod: PodRef, failure: PullFailure, verdict: g.Verdict, policy: Policy, key: str
    ) -> None:
        c = self._c
        assert verdict.endpoint is not None
        req = InstallRequest(
            endpoint=verdict.endpoint,
            registry=verdict.registry,
            scope=policy.scope,
            restart=policy.restart,
            pins=verdict.pins,
            dry_run=policy.dry_run,
            image=failure.image,
            hosts_toml=policy.hosts_toml,
            allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
        )
        if c.first_trust is not None:
            # safe first trust: the cluster's record decides (agent.cluster.firsttrust)
            c.first_trust.remediate(self, req, pod, failure, key)
            return
        self.install(req, pod, key)

    def _unexpected(self, pod: PodRef, failure: PullFailure, key: str, exc: Exception) -> None:
        """A remediation step raised where no failure was expected. The host backs off and
        the failure is queued again, so it is neither lost nor retried in a tight loop."""
        c = self._c
        log.error("remediation of %s raised", key, exc_info=exc)
        delay = c.flights.failed(key)
        self._both(
            pod,
            WARNING,
            "CATrustFailed",
            f"Could not trust {key}: the agent failed unexpectedly ({describe_failure(exc)}); "
            f"nothing unverified was left in place; retrying in {delay:.0f}s",
        )
        if c.metrics:
            c.metrics.record_work_failure("failure")
            c.metrics.record_remediation("failed", 0.0)
        c._later(delay, Work("retry", pod, failure))

    def _log_decision(
        self, pod: PodRef, failure: PullFailure, verdict: g.Verdict, scope: str
    ) -> None:
        """The operator's log: what was seen, and what the policy made of it."""
        node = self._c.node_name
        endpoint = (verdict.endpoint or failure.failing)
        registry = (verdict.registry or failure.registry or endpoint)
        ep, reg = (endpoint.key if endpoint else "", registry.key if registry else "")
        oplog.detected(node, pod.namespace, pod.name, failure.image or "", ep, reg)
        oplog.decided(node, pod.namespace, pod.name, ep, reg, action=verdict.action,
                      scope=scope, message=verdict.message)

    def install(self, req: InstallRequest, pod: PodRef | None, key: str) -> Result | None:
        c = self._c
        t0 = time.perf_counter()
        try:
            result = c.engine.install(req)
        except AgentError as exc:
            delay = c.flights.failed(key)
            oplog.failed(c.node_name, req.endpoint.key, (req.registry or req.endpoint).key,
                         exc.kind, str(exc), time.perf_counter() - t0, _pod_key(pod))
            msg = (
                f"Could not trust {req.endpoint.key} ({exc.kind}): {exc}. "
                f"Nothing was changed; next attempt in {delay:.0f}s at the earliest"
            )
            self._report(pod, WARNING, "CATrustFailed", msg)
            if c.metrics:
                c.metrics.record_remediation("failed", time.perf_counter() - t0)
            return None
        err = result.restart_error
        if err is not None and err.kind != "refused":
            # The CA is in place but the runtime did not come back through its restart:
            # try the restart again after a back-off (install again = finish what is owed).
            delay = c.flights.failed(key)
            c._later(delay, Work("repair", key=req.endpoint.key))
        else:
            c.flights.succeeded(key)
        oplog.outcome(c.node_name, result, time.perf_counter() - t0, _pod_key(pod), req.source)
        self._report_result(result, pod)
        self._recycle(result)
        if c.metrics:
            c.metrics.record_remediation(_metric_result(result), time.perf_counter() - t0)
        c._policy_sync.publish()
        return result

    def _report_result(self, result: Result, pod: PodRef | None) -> None:
        c = self._c
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
        if result.status == "unchanged":  # logged by oplog.outcome; no Event
            return
        self._report(
            pod,
            NORMAL,
            "CATrusted",
            f"Trusted {what} for {result.endpoint.key} in {where}; {result.next_step}"
            + (f"; {result.verified_by}" if result.verified_by else "")
            + (f" (scope: {result.scope_reason})" if result.scope_reason else ""),
        )
        for rt in result.restarted:
            c.recorder.node(
                c.node_name,
                NORMAL,
                "ContainerRuntimeRestarted",
                f"Restarted {rt} so it reloads the system trust store for "
                f"{result.endpoint.key}; it answers again",
            )
            if c.metrics:
                c.metrics.record_runtime_restart(rt, "ok")
        err = result.restart_error
        if err is not None:
            retry = (
                "" if err.kind == "refused" else "; the restart is retried with back-off"
            )
            c.recorder.node(
                c.node_name,
                WARNING,
                "ContainerRuntimeRestartRefused",
                f"{err}; the CA for {result.endpoint.key} is installed but pulls "
                f"keep failing until the runtime restarts{retry}",
            )
            if c.metrics:
                c.metrics.record_runtime_restart(",".join(c.engine.runtimes) or "?", err.kind)

    # ------------------------------------------------------------ recyclePods

    def _recycle(self, result: Result) -> None:
        """The CA now works for this endpoint: hand the pods still failing there to the
        recycler, which evicts the owned ones in its own thread (PDB retries included)."""
        c = self._c
        with c._lock:
            enabled = c.policy.recycle_pods
            failing = list(c._failing.values())
        if not enabled or c.recycler is None or not _effective(result):
            return
        pods = [_failing_pod(ref, failures) for ref, failures in failing]
        c.recycler.recycle(result.endpoint.key, pods)

    def _recycle_late(
        self, pod: PodRef, failure: PullFailure, endpoint: str, policy: Policy
    ) -> None:
        # only pods whose status shows the failure: the recycler re-checks that status
        # right before evicting, which a failure known only from an Event cannot pass
        c = self._c
        if (
            policy.recycle_pods
            and not policy.dry_run
            and c.recycler is not None
            and self.still_failing(pod.uid, endpoint)
        ):
            c.recycler.late(_failing_pod(pod, [failure]), endpoint)

    def recycling_enabled(self) -> bool:
        c = self._c
        with c._lock:
            return c.opted_in and c.policy.recycle_pods and not c.policy.dry_run

    def still_failing(self, uid: str, endpoint: str) -> bool:
        """The pod's latest status still shows a pull failure at `endpoint` (the recycler
        asks right before evicting: kubelet's own retry may have fixed it meanwhile)."""
        c = self._c
        with c._lock:
            entry = c._failing.get(uid)
        return entry is not None and endpoint in _failing_hosts(entry[1])

    def _report(self, pod: PodRef | None, type_: str, reason: str, message: str) -> None:
        if pod is None:
            self._c.recorder.node(self._c.node_name, type_, reason, message)
        else:
            self._both(pod, type_, reason, message)

    def _both(self, pod: PodRef, type_: str, reason: str, message: str) -> None:
        c = self._c
        c.recorder.node(c.node_name, type_, reason, message)
        c.recorder.pod(pod.namespace, pod.name, pod.uid, type_, reason, message)


def _pod_key(pod: PodRef | None) -> tuple[str, str] | None:
    return (pod.namespace, pod.name) if pod is not None else None


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
