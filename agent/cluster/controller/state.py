"""The state the controller's parts share, behind one lock, and the work queue.

The watch side writes it (opt-in, runtime, policy, caFrom sources, the failing pods), the
worker's steps read it; every read or write is one method here, under the lock, so no part
holds the lock itself or sees another part's fields. The `Controller` creates one and hands
it to its parts."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.cluster.controller.interfaces import PodRef, Work
from agent.core.detect import PullFailure
from agent.core.policy import DEFAULT_POLICY, Policy, Resolved

# Event lookups remembered per pod uid; past this many, the oldest half is forgotten.
MAX_LOOKUPS = 10000


@dataclass(frozen=True)
class Snapshot:
    """What the worker's steps decide by, read at once."""

    opted_in: bool
    policy: Policy
    policy_loaded: bool  # a policy came from the ConfigMap: removals are allowed
    ca_sources: Resolved


class WorkQueue:
    """The worker's queue: the watch side puts, the worker gets, a back-off puts later.

    It counts what was put and what the worker finished, so a test (or a shutdown) can wait
    for "everything queued so far is done" instead of sleeping."""

    def __init__(self) -> None:
        self._items: queue.Queue[Work] = queue.Queue()
        self._counts = threading.Condition()
        self._put = 0
        self._done = 0

    def put(self, item: Work) -> None:
        with self._counts:
            self._put += 1
        self._items.put(item)

    def later(self, delay: float, item: Work) -> None:
        timer = threading.Timer(delay, self.put, args=(item,))
        timer.daemon = True  # a pending retry never keeps a stopping agent alive
        timer.start()

    def get(self, timeout: float) -> Work | None:
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self) -> Work | None:
        try:
            return self._items.get_nowait()
        except queue.Empty:
            return None

    def done(self) -> None:
        """The worker finished an item it got (however it ended)."""
        with self._counts:
            self._done += 1
            self._counts.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every item put so far is done; False when `timeout` passes first."""
        with self._counts:
            return self._counts.wait_for(lambda: self._done >= self._put, timeout)


@dataclass
class ControllerState:
    # the one lock. Re-entrant because agent.cluster.firsttrust still takes it (through
    # `Controller._lock`) around a read of `Controller.policy`, which takes it again.
    lock: threading.RLock = field(default_factory=threading.RLock)
    queue: WorkQueue = field(default_factory=WorkQueue)
    _opted_in: bool = False
    _runtime: str | None = None
    _policy: Policy = DEFAULT_POLICY
    _policy_loaded: bool = False
    _last_policy_error: str | None = None
    # caFrom sources as the cluster side last found them (agent.cluster.casources)
    _ca_sources: Resolved = field(default_factory=dict)
    _failing: dict[str, tuple[PodRef, list[PullFailure]]] = field(default_factory=dict)
    _lookups: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------- reads

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(self._opted_in, self._policy, self._policy_loaded, self._ca_sources)

    @property
    def opted_in(self) -> bool:
        with self.lock:
            return self._opted_in

    @property
    def runtime(self) -> str | None:
        with self.lock:
            return self._runtime

    @property
    def policy(self) -> Policy:
        with self.lock:
            return self._policy

    def failing(self) -> list[tuple[PodRef, list[PullFailure]]]:
        """Every pod whose status shows a pull failure now, with its failures."""
        with self.lock:
            return list(self._failing.values())

    def is_failing(self, uid: str) -> bool:
        with self.lock:
            return uid in self._failing

    def still_failing(self, uid: str, endpoint: str) -> bool:
        """The pod's latest status still shows a pull failure at `endpoint`."""
        with self.lock:
            entry = self._failing.get(uid)
        return entry is not None and endpoint in failing_hosts(entry[1])

    def recycling_enabled(self) -> bool:
        with self.lock:
            return self._opted_in and self._policy.recycle_pods and not self._policy.dry_run

    # --------------------------------------------------------------- writes

    def set_node(self, opted_in: bool, runtime: str | None) -> bool:
        """Record the Node's opt-in and runtime; return whether it was opted in before."""
        with self.lock:
            was = self._opted_in
            self._opted_in, self._runtime = opted_in, runtime
        return was

    def set_policy(self, policy: Policy) -> bool:
        """A good policy arrived; return whether it changes anything."""
        with self.lock:
            changed = policy != self._policy or not self._policy_loaded
            self._policy, self._policy_loaded = policy, True
            self._last_policy_error = None
        return changed

    def policy_problem(self, message: str) -> bool:
        """A policy problem; return False when it is the one reported last (said once)."""
        with self.lock:
            if message == self._last_policy_error:
                return False
            self._last_policy_error = message
        return True

    def set_sources(self, resolved: Resolved) -> None:
        with self.lock:
            self._ca_sources = dict(resolved)

    def pod_seen(self, ref: PodRef, failures: list[PullFailure]) -> None:
        """Remember who is failing now, so a policy change or an opt-in can act on them at
        once instead of waiting for kubelet's next back-off (up to 5 minutes)."""
        with self.lock:
            if failures:
                self._failing[ref.uid] = (ref, failures)
            else:
                self._failing.pop(ref.uid, None)

    def pod_gone(self, uid: str) -> None:
        with self.lock:
            self._failing.pop(uid, None)
            self._lookups.pop(uid, None)

    def lookup_due(self, uid: str, now: float, interval: float) -> bool:
        """At most one Event lookup per pod per `interval`: True (and remembered) when due."""
        with self.lock:
            if now - self._lookups.get(uid, -1e9) < interval:
                return False
            self._lookups[uid] = now
            if len(self._lookups) > MAX_LOOKUPS:  # bounded: forget the oldest half
                oldest = sorted(self._lookups.items(), key=lambda kv: kv[1])
                for old, _ in oldest[: MAX_LOOKUPS // 2]:
                    del self._lookups[old]
        return True


def failing_hosts(failures: Sequence[PullFailure]) -> frozenset[str]:
    return frozenset(f.failing.key for f in failures if f.failing is not None)
