"""The Recycler: the evictions a remediation asks for, run in their own thread.

One at a time, paced by a token bucket, a refused one retried later with back-off. Why a
thread and not the controller's queue: a PodDisruptionBudget may refuse for minutes, and the
worker must stay free for other hosts' remediations meanwhile. Which pods, how many and how
fast are decided in `agent.core.recycle` (pure); this module only acts and reports.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from agent.cluster import oplog
from agent.cluster.evict.eviction import EVICTED, GONE, REFUSED, RETRY, Eviction
from agent.cluster.evict.passes import Pass, Task, final_summary, summary
from agent.core.reasons import NORMAL, WARNING, Reason
from agent.core.recycle import (
    DEFAULT_LIMITS,
    FailingPod,
    Limits,
    Selection,
    TokenBucket,
    retry_delay,
    select,
)

# the name the recycler has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.evict")

REASON = Reason.POD_RECYCLED


class Recorder(Protocol):
    def node(self, node_name: str, type: str, reason: str, message: str) -> None: ...

    def pod(
        self, namespace: str, name: str, uid: str, type: str, reason: str, message: str
    ) -> None: ...


class RecycleMetrics(Protocol):
    def record_pod_recycled(self, result: str) -> None: ...


Evict = Callable[[str, str, str], Eviction]  # (namespace, name, uid)
StillFailing = Callable[[str, str], bool]  # (pod uid, endpoint key)


class Recycler:
    """Evicts what a remediation selected, paced and retried in its own thread (`serve`).

    `recycle()` and `late()` are called from the controller's worker and never block: they
    only queue (and queue Events). `run_due()` does the due work and says when the next is
    due, so tests drive it with an injected clock and no thread."""

    def __init__(
        self,
        *,
        node_name: str,
        evict: Evict,
        recorder: Recorder,
        still_failing: StillFailing | None = None,
        enabled: Callable[[], bool] | None = None,
        metrics: RecycleMetrics | None = None,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_name = node_name
        self._evict = evict
        self.recorder = recorder
        self.still_failing = still_failing
        self.enabled = enabled  # recyclePods still on: checked before every attempt
        self.metrics = metrics
        self.limits = limits
        self.clock = clock
        self._bucket = TokenBucket(limits.per_second, limits.burst, clock)
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._passes: dict[str, Pass] = {}  # endpoint -> its latest pass
        self._pending: set[str] = set()  # pod uids with an attempt queued
        self._recent: dict[tuple[str, str], float] = {}  # (owner uid, endpoint) -> evicted at
        # per endpoint, the pods last reported as not evicted (bare, over the cap, cooling):
        # a later "unchanged" remediation (every reconcile, for caPEM registries) does not
        # tell them again
        self._reported: dict[str, set[str]] = {}
        self._wake = threading.Event()

    # ------------------------------------------------------- controller side

    def recycle(self, endpoint: str, pods: Iterable[FailingPod]) -> Selection:
        """A remediation for `endpoint` was verified: recycle the pods failing there."""
        now = self.clock()
        with self._lock:
            self._forget_old(now)
            cooling = {owner for (owner, ep) in self._recent if ep == endpoint}
            chosen = select(
                pods, endpoint, cap=self.limits.cap, cooling_owners=cooling, skip=self._pending
            )
            before = self._reported.get(endpoint, set())
            kept = (*chosen.left, *chosen.over_cap, *chosen.cooling)
            self._reported[endpoint] = {p.uid for p in kept}
            news = [p for p in kept if p.uid not in before]
            if not chosen.evict and not news:
                return chosen
            run = Pass(
                endpoint,
                now,
                left=len(chosen.left),
                over_cap=len(chosen.over_cap),
                cooling=len(chosen.cooling),
            )
            self._passes[endpoint] = run
            run.known.update(p.uid for p in kept)
            for pod in chosen.evict:
                self._schedule(run, pod, now)
        for pod in chosen.left:
            if pod.uid not in before:
                self._tell_bare(pod, endpoint)
        self._count("bare", sum(p.uid not in before for p in chosen.left))
        self._count("over-cap", sum(p.uid not in before for p in chosen.over_cap))
        self._count("cooling", sum(p.uid not in before for p in chosen.cooling))
        if not chosen.evict:
            self._maybe_summarize(run)
        self._wake.set()
        return chosen

    def late(self, pod: FailingPod, endpoint: str) -> str | None:
        """A failure at `endpoint` reported after its remediation (the pull started before the
        CA was in place) joins that remediation's pass while it is open. Returns what was
        done with the pod ("evict", "bare", "over-cap", "cooling"), None when nothing."""
        now = self.clock()
        with self._lock:
            run = self._passes.get(endpoint)
            if (
                run is None
                or now - run.started > self.limits.late_window
                or pod.uid in run.known
                or pod.uid in self._pending
            ):
                return None
            run.known.add(pod.uid)
            action = "bare"
            if pod.recyclable and pod.owner is not None:
                at = self._recent.get((pod.owner.uid, endpoint))
                if at is not None and at < run.started:  # recycled by an earlier pass
                    action = "cooling"
                elif run.scheduled >= self.limits.cap:
                    action = "over-cap"
                else:
                    action = "evict"
                    self._schedule(run, pod, now)
                    # a pass already summarised (it had nothing to evict when the first
                    # pod was reported) says it again once this pod's attempt is made
                    run.summarized = False
            if action == "bare":
                run.left += 1
            elif action == "over-cap":
                run.over_cap += 1
            elif action == "cooling":
                run.cooling += 1
        if action == "bare":
            self._tell_bare(pod, endpoint)
        if action != "evict":
            self._count(action, 1)
        self._wake.set()
        return action

    # ---------------------------------------------------------- thread side

    def serve(self, stop: threading.Event) -> None:
        """The recycler thread: due work, then sleep until the next is due or new work."""
        while not stop.is_set():
            try:
                delay = self.run_due()
            except Exception:  # the thread must survive anything one eviction does
                log.exception("recycling failed")
                delay = 1.0
            self._wake.wait(0.5 if delay is None else min(delay, 0.5))
            self._wake.clear()

    def run_due(self) -> float | None:
        """Attempt every due eviction the rate limit allows, in order. Returns seconds until
        the next attempt is possible, or None when nothing is queued."""
        while True:
            now = self.clock()
            with self._lock:
                if not self._heap:
                    return None
                due, seq, task = self._heap[0]
                if due > now:
                    return due - now
                heapq.heappop(self._heap)
            if self.enabled is not None and not self.enabled():  # recyclePods turned off
                self._done(task, "cancelled")
                continue
            if self._recovered(task):  # kubelet's own retry got there first
                self._done(task, "recovered")
                continue
            with self._lock:
                if not self._bucket.take():  # keeps its place in the queue
                    heapq.heappush(self._heap, (due, seq, task))
                    return self._bucket.wait()
            self._attempt(task)

    def pending(self) -> int:
        """Evictions still queued (retries included)."""
        with self._lock:
            return len(self._heap)

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------- internals

    def _attempt(self, task: Task) -> None:
        pod, run = task.pod, task.run
        try:
            result = self._evict(pod.namespace, pod.name, pod.uid)
        except Exception as exc:  # not an API answer (those are classified): retry it
            log.exception("evicting %s/%s failed", pod.namespace, pod.name)
            result = Eviction(RETRY, f"{type(exc).__name__}: {exc}")
        if result.outcome == EVICTED:
            owner = pod.owner
            assert owner is not None  # only recyclable pods are scheduled
            with self._lock:
                self._recent[(owner.uid, run.endpoint)] = self.clock()
            self.recorder.pod(
                pod.namespace,
                pod.name,
                pod.uid,
                NORMAL,
                REASON,
                f"registry {run.endpoint} is trusted now; evicted so its controller "
                f"({owner.kind} {owner.name}) recreates it and pulls at once",
            )
            oplog.recycled(self.node_name, pod.namespace, pod.name, run.endpoint,
                           f"{owner.kind} {owner.name}")
            self._done(task, EVICTED)
        elif result.outcome == GONE:
            self._done(task, GONE)
        elif result.again:
            self._again(task, result)
        else:
            log.warning("cannot evict pod %s/%s: %s", pod.namespace, pod.name, result.message)
            self._done(task, "error", result.message)

    def _again(self, task: Task, result: Eviction) -> None:
        """Refused or throttled: retry with back-off, or give up once kubelet's own
        back-off would have retried the pull anyway."""
        pod, run = task.pod, task.run
        now = self.clock()
        delay = retry_delay(task.attempt, result.retry_after, self.limits)
        self._count(result.outcome, 1)
        refused = result.outcome == REFUSED
        if now + delay - run.started > self.limits.retry_window:
            why = (
                "its PodDisruptionBudget kept refusing eviction"
                if refused
                else f"eviction kept failing ({result.message})"
            )
            self.recorder.pod(
                pod.namespace,
                pod.name,
                pod.uid,
                NORMAL,
                Reason.CA_TRUSTED,
                f"registry {run.endpoint} is trusted now; {why}, so kubelet will retry the "
                "pull at its next back-off",
            )
            self._done(task, "gave-up")
            return
        log.info(
            "eviction of %s/%s %s; retrying in %.0fs",
            pod.namespace,
            pod.name,
            "refused by a PodDisruptionBudget" if refused else f"failed ({result.message})",
            delay,
        )
        with self._lock:
            if refused:
                run.retrying.add(pod.uid)
            first = task.attempt == 1
            if first:
                run.first_round -= 1
                run.retried = True
            task.attempt += 1
            heapq.heappush(self._heap, (now + delay, next(self._seq), task))
        if first:
            self._maybe_summarize(run)

    def _done(self, task: Task, result: str, message: str = "") -> None:
        """The pod's last attempt: tally, summarize the pass when its time has come."""
        pod, run = task.pod, task.run
        self._count(result, 1)
        with self._lock:
            self._pending.discard(pod.uid)
            run.retrying.discard(pod.uid)
            run.pending -= 1
            if task.attempt == 1:
                run.first_round -= 1
            if result == "error":
                run.failed.append(message)
            else:
                run.tally[result] += 1
            finished = run.pending == 0 and run.summarized and run.retried
        self._maybe_summarize(run)
        if finished:
            self._final_summary(run)

    def _maybe_summarize(self, run: Pass) -> None:
        """The Node summary, once every pod of the pass had its first attempt."""
        with self._lock:
            if run.summarized or run.first_round > 0:
                return
            run.summarized = True
            message = summary(run, self.limits)
            failed = bool(run.failed)
            evicted = run.tally[EVICTED]
        oplog.recycle_summary(self.node_name, run.endpoint, message, evicted)
        self.recorder.node(self.node_name, WARNING if failed else NORMAL, REASON, message)

    def _final_summary(self, run: Pass) -> None:
        """After retries settle, the outcome the first summary could not know yet."""
        with self._lock:
            message = final_summary(run, self.limits)
        self.recorder.node(self.node_name, NORMAL, REASON, message)

    def _tell_bare(self, pod: FailingPod, endpoint: str) -> None:
        self.recorder.pod(
            pod.namespace,
            pod.name,
            pod.uid,
            NORMAL,
            Reason.CA_TRUSTED,
            f"registry {endpoint} is trusted now; kubelet will retry the pull at its next back-off",
        )

    def _recovered(self, task: Task) -> bool:
        check = self.still_failing
        return check is not None and not check(task.pod.uid, task.run.endpoint)

    def _schedule(self, run: Pass, pod: FailingPod, now: float) -> None:
        """Caller holds the lock."""
        run.known.add(pod.uid)
        run.scheduled += 1
        run.first_round += 1
        run.pending += 1
        self._pending.add(pod.uid)
        heapq.heappush(self._heap, (now, next(self._seq), Task(pod, run)))

    def _forget_old(self, now: float) -> None:
        """Caller holds the lock."""
        cooldown = self.limits.owner_cooldown
        for key in [k for k, at in self._recent.items() if now - at >= cooldown]:
            del self._recent[key]

    def _count(self, result: str, n: int) -> None:
        if self.metrics is not None:
            for _ in range(n):
                self.metrics.record_pod_recycled(result)

