"""The controller's remediation step: gate -> (first trust) -> engine -> Events and
metrics -> recyclePods -> the published trust.

Runs on the worker only. A failure the gate lets through is installed by the engine under
the per-host flight control; the outcome is reported as Events on the node (and the pod),
recorded in the metrics, and, when the CA now works, the pods still failing at that
endpoint are handed to the recycler. It reads the shared state and never writes it; what
it queues is its own retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from agent.cluster import oplog
from agent.cluster.controller.intercept import InterceptionStep
from agent.cluster.controller.interfaces import (
    FirstTrustStep,
    Metrics,
    PodRecycler,
    PodRef,
    Recorder,
    Work,
)
from agent.cluster.controller.publish import Publisher
from agent.cluster.controller.state import ControllerState, failing_hosts
from agent.core import firsttrust as ft
from agent.core import gate as g
from agent.core.detect import PullFailure
from agent.core.errors import AgentError, describe_failure
from agent.core.flights import Flights
from agent.core.policy import Policy
from agent.core.reasons import Reason
from agent.core.recycle import FailingPod
from agent.node.engine import Engine, InstallRequest, Result

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")


class Remediation:
    """The remediation step, with everything it acts through given at construction."""

    def __init__(
        self,
        state: ControllerState,
        *,
        node_name: str,
        engine: Engine,
        recorder: Recorder,
        flights: Flights,
        publisher: Publisher,
        metrics: Metrics | None = None,
        recycler: PodRecycler | None = None,
        first_trust: FirstTrustStep | None = None,
        interception: InterceptionStep | None = None,
    ) -> None:
        self._state = state
        self._node_name = node_name
        self._engine = engine
        self._recorder = recorder
        self._flights = flights
        self._publisher = publisher
        self._metrics = metrics
        self._recycler = recycler
        self._first_trust = first_trust
        self._interception = interception or InterceptionStep(
            node_name=node_name, engine=engine, recorder=recorder, flights=flights, metrics=metrics
        )

    def use_first_trust(self, first_trust: FirstTrustStep | None) -> None:
        """Safe first trust decides fetched anchors from now on (the daemon's wiring)."""
        self._first_trust = first_trust

    def handle_failure(self, pod: PodRef, failure: PullFailure) -> None:
        snap = self._state.snapshot()
        policy = snap.policy
        verdict = g.gate(failure, opted_in=snap.opted_in, policy=policy)
        if verdict.action == g.IGNORE:
            return
        key = verdict.endpoint.key if verdict.endpoint else failure.message[:200]
        if not self._flights.admit(key):
            # one remediation per host: this one is in flight or backing off, or it just
            # succeeded and this pod's pull had started before the CA was in place
            if verdict.action == g.REMEDIATE and verdict.endpoint is not None:
                self._recycle_late(pod, failure, verdict.endpoint.key, policy)
            return
        self._log_decision(pod, failure, verdict, policy.scope)
        if verdict.action in (g.DENY, g.REPORT):
            assert verdict.event_reason is not None
            self._report(pod, verdict.event_reason, verdict.message)
            if self._metrics:
                self._metrics.record_remediation(
                    "not-allowed" if verdict.action == g.DENY else "not-remediable", 0.0
                )
                if verdict.diagnosis is not None:
                    self._metrics.record_diagnosis(verdict.diagnosis.kind)
            self._flights.failed(key)
            return
        assert verdict.endpoint is not None
        self._report(pod, Reason.UNTRUSTED_REGISTRY_DETECTED, verdict.message)
        req = InstallRequest(
            endpoint=verdict.endpoint,
            registry=verdict.registry,
            options=policy.install_options,
            pins=verdict.pins,
            image=failure.image,
        )
        try:
            if verdict.interception:  # the declared proxy CA decides: no first trust
                self._interception.remediate(self, req, pod, key, policy, snap.ca_sources)
                return
            self.remediate(req, pod, failure, key)
        except Exception as exc:  # a bug or a broken dependency: say so, and try again later
            self._unexpected(pod, failure, key, exc)

    def remediate(
        self, req: InstallRequest, pod: PodRef, failure: PullFailure, key: str
    ) -> Result | None:
        """Install `req` for a failing pod: through safe first trust when there is one."""
        if self._first_trust is not None:
            # THE first-trust seam (agent.cluster.firsttrust): the cluster's record decides
            # whether, and which anchor, this node installs; this step installs and reports
            policy = self._state.snapshot().policy
            return self.follow(self._first_trust.decide(req, policy, pod, failure), pod, key)
        return self.install(req, pod, key)

    def follow(self, decision: ft.Decision, pod: PodRef, key: str) -> Result | None:
        """Carry out what first trust decided: install, rotate, or report why not."""
        if decision.kind == ft.PROCEED:
            return self.install(decision.requests[0], pod, key)
        if decision.kind == ft.ROTATE:
            return self._rotate(decision, pod, key)
        message = decision.message
        if decision.kind == ft.HOLD:
            self._flights.forget(key)  # the record's watch or the policy's brings it back
        else:
            delay = self._flights.failed(key)
            if decision.kind == ft.RETRY:
                message += f"; next attempt in {delay:.0f}s at the earliest"
        assert decision.reason is not None
        self._report(pod, decision.reason, message)
        return None

    def _rotate(self, decision: ft.Decision, pod: PodRef, key: str) -> Result | None:
        """New anchor beside the old; once the runtime verified it, the new one alone."""
        first = self.install(decision.requests[0], pod, key)
        if (
            first is None
            or first.status != "installed"
            or first.restart_error is not None
            or first.restart_required
        ):
            return first  # not in use yet: the old anchor stays trusted beside the new
        req = decision.requests[1]
        try:
            done = self._engine.install(req)
        except AgentError as exc:
            log.warning("rotation of %s: old anchor not removed yet: %s", req.endpoint.key, exc)
            return None
        anchor = done.anchor
        new = f"{anchor.subject} ({anchor.sha256})" if anchor else "the new anchor"
        self._report(
            pod,
            Reason.CA_ROTATED,
            f"Rotated the CA for {req.endpoint.key}: {new} is verified and trusted; the "
            f"previous anchor {decision.rotated_from} was trusted beside it until then and "
            "is now removed",
        )
        return done

    def _unexpected(self, pod: PodRef, failure: PullFailure, key: str, exc: Exception) -> None:
        """A remediation step raised where no failure was expected. The host backs off and
        the failure is queued again, so it is neither lost nor retried in a tight loop."""
        log.error("remediation of %s raised", key, exc_info=exc)
        delay = self._flights.failed(key)
        self._report(
            pod,
            Reason.CA_TRUST_FAILED,
            f"Could not trust {key}: the agent failed unexpectedly ({describe_failure(exc)}); "
            f"nothing unverified was left in place; retrying in {delay:.0f}s",
        )
        if self._metrics:
            self._metrics.record_work_failure("failure")
            self._metrics.record_remediation("failed", 0.0)
        self._state.queue.later(delay, Work("retry", pod, failure))

    def _log_decision(
        self, pod: PodRef, failure: PullFailure, verdict: g.Verdict, scope: str
    ) -> None:
        """The operator's log: what was seen, and what the policy made of it."""
        node = self._node_name
        endpoint = (verdict.endpoint or failure.failing)
        registry = (verdict.registry or failure.registry or endpoint)
        ep, reg = (endpoint.key if endpoint else "", registry.key if registry else "")
        oplog.detected(node, pod.namespace, pod.name, failure.image or "", ep, reg)
        oplog.decided(node, pod.namespace, pod.name, ep, reg, action=verdict.action,
                      scope=scope, message=verdict.message)

    def install(self, req: InstallRequest, pod: PodRef | None, key: str) -> Result | None:
        t0 = time.perf_counter()
        try:
            result = self._engine.install(req)
        except AgentError as exc:
            delay = self._flights.failed(key)
            oplog.failed(self._node_name, req.endpoint.key, (req.registry or req.endpoint).key,
                         exc.kind, str(exc), time.perf_counter() - t0, _pod_key(pod))
            if exc.kind == MISSING_INTERMEDIATE:
                # the server sends its leaf alone: no CA to take from it (diagnosis kind
                # missing-intermediate); a TLS-inspecting proxy looks exactly like this
                self._report(pod, Reason.REGISTRY_CERTIFICATE_INVALID, _missing(req, exc))
                if self._metrics:
                    self._metrics.record_remediation("not-remediable", time.perf_counter() - t0)
                    self._metrics.record_diagnosis("missing-intermediate")
                return None
            msg = (
                f"Could not trust {req.endpoint.key} ({exc.kind}): {exc}. "
                f"Nothing was changed; next attempt in {delay:.0f}s at the earliest"
            )
            self._report(pod, Reason.CA_TRUST_FAILED, msg)
            if self._metrics:
                self._metrics.record_remediation("failed", time.perf_counter() - t0)
            return None
        err = result.restart_error
        if err is not None and err.kind != "refused":
            # The CA is in place but the runtime did not come back through its restart:
            # try the restart again after a back-off (install again = finish what is owed).
            delay = self._flights.failed(key)
            self._state.queue.later(delay, Work("repair", key=req.endpoint.key))
        else:
            self._flights.succeeded(key)
        oplog.outcome(
            self._node_name, result, time.perf_counter() - t0, _pod_key(pod), req.source
        )
        self._report_result(result, pod, req.route)
        self._recycle(result)
        if self._metrics:
            self._metrics.record_remediation(_metric_result(result), time.perf_counter() - t0)
        self._publisher.publish()
        return result

    def _report_result(self, result: Result, pod: PodRef | None, route: str = "") -> None:
        anchor = result.anchor
        what = f"{anchor.subject} ({anchor.sha256})" if anchor is not None else "the CA"
        where = f"{result.scope} scope ({', '.join(result.stores)})"
        if result.status == "dry-run":
            self._report(
                pod,
                Reason.CA_TRUST_DRY_RUN,
                f"Dry run: would trust {what} for {result.endpoint.key} in {where}; "
                f"plan: {len(result.actions)} steps; nothing was changed",
            )
            return
        if result.status == "unchanged":  # logged by oplog.outcome; no Event
            return
        target = (
            "every registry without a certs.d directory of its own (_default)"
            if result.endpoint.host == "_default"
            else result.endpoint.key
        )
        self._report(
            pod,
            Reason.CA_TRUSTED,
            f"Trusted {what} for {target} in {where}; {result.next_step}"
            + (f"; {result.verified_by}" if result.verified_by else "")
            + (f" (scope: {result.scope_reason})" if result.scope_reason else "")
            + (f"; the chain was fetched as {route}" if route else ""),
        )
        for rt in result.restarted:
            self._report(
                None,
                Reason.CONTAINER_RUNTIME_RESTARTED,
                f"Restarted {rt} so it reloads the system trust store for "
                f"{result.endpoint.key}; it answers again",
            )
            if self._metrics:
                self._metrics.record_runtime_restart(rt, "ok")
        err = result.restart_error
        if err is not None:
            retry = (
                "" if err.kind == "refused" else "; the restart is retried with back-off"
            )
            self._report(
                None,
                Reason.CONTAINER_RUNTIME_RESTART_REFUSED,
                f"{err}; the CA for {result.endpoint.key} is installed but pulls "
                f"keep failing until the runtime restarts{retry}",
            )
            if self._metrics:
                runtimes = ",".join(self._engine.runtimes) or "?"
                self._metrics.record_runtime_restart(runtimes, err.kind)

    # ------------------------------------------------------------ recyclePods

    def _recycle(self, result: Result) -> None:
        """The CA now works for this endpoint: hand the pods still failing there to the
        recycler, which evicts the owned ones in its own thread (PDB retries included)."""
        enabled = self._state.policy.recycle_pods
        if not enabled or self._recycler is None or not _effective(result):
            return
        pods = [_failing_pod(ref, failures) for ref, failures in self._state.failing()]
        self._recycler.recycle(result.endpoint.key, pods)

    def _recycle_late(
        self, pod: PodRef, failure: PullFailure, endpoint: str, policy: Policy
    ) -> None:
        # only pods whose status shows the failure: the recycler re-checks that status
        # right before evicting, which a failure known only from an Event cannot pass
        if (
            policy.recycle_pods
            and not policy.dry_run
            and self._recycler is not None
            and self._state.still_failing(pod.uid, endpoint)
        ):
            self._recycler.late(_failing_pod(pod, [failure]), endpoint)

    # -------------------------------------------------------------- Events

    def _report(self, pod: PodRef | None, reason: Reason, message: str) -> None:
        """On the Node, and on the pod when there is one."""
        self._recorder.node(self._node_name, reason.type, reason, message)
        if pod is not None:
            self._recorder.pod(pod.namespace, pod.name, pod.uid, reason.type, reason, message)


MISSING_INTERMEDIATE = "leaf-not-self-signed"  # agent.core.trust: a lone leaf, not self-signed


def _missing(req: InstallRequest, exc: AgentError) -> str:
    image = f"Pulling {req.image}" if req.image else "A pull"
    registry = (req.registry or req.endpoint).key
    return (
        f"{image} from registry {registry} failed: {exc.message} The agent cannot take that "
        "CA from the server: the registry's owner should send the full chain, or give the "
        "intermediate as registries[].caPEM; behind a TLS-inspecting proxy, declare the "
        "proxy's CA as policy interception. Nothing was installed"
    )


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


def _failing_pod(ref: PodRef, failures: Sequence[PullFailure]) -> FailingPod:
    return FailingPod(ref.namespace, ref.name, ref.uid, ref.owner, failing_hosts(failures))
