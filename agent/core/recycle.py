"""Pure: which failing pods to recycle after a remediation, and how fast.

Once a CA is trusted, a pod in ImagePullBackOff only recovers at kubelet's next pull attempt;
kubelet's back-off doubles from 10 s to a 300 s cap, so that can be five minutes. With
`recyclePods: true` the agent evicts such a pod instead, and its controller creates a
replacement that pulls at once. This module decides which pods qualify, how many per
remediation, how fast, and when to retry a refused eviction; the Eviction call and the thread
that paces it are in `agent.cluster.evict`. Nothing here touches the API or the node.

Who qualifies: a pod whose recorded pull failure is at the host just trusted, and whose
controller (the ownerReference with `controller: true`) is a ReplicaSet, StatefulSet,
DaemonSet or Job — they recreate an evicted pod. A bare pod, or one whose controller we do
not know to recreate it (a mirror pod's Node, a custom resource), is never evicted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RECREATING_KINDS = frozenset({"ReplicaSet", "StatefulSet", "DaemonSet", "Job"})

# kubelet's image-pull back-off (pkg/kubelet/images: 10 s doubling, 300 s cap): the longest a
# pod can wait for its next attempt, and so the point past which an eviction gains nothing.
KUBELET_BACKOFF_INITIAL = 10.0
KUBELET_BACKOFF_CAP = 300.0


@dataclass(frozen=True)
class Owner:
    """A pod's controlling owner (metadata.ownerReferences[controller=true])."""

    kind: str
    name: str
    uid: str

    @property
    def recreates(self) -> bool:
        """Its controller creates a new pod when this one is evicted."""
        return self.kind in RECREATING_KINDS


def controller_owner(metadata: Mapping[str, Any]) -> Owner | None:
    """The ownerReference marked `controller: true`; other owners (GC only) do not count."""
    for ref in metadata.get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            kind, name, uid = (str(ref.get(k, "")) for k in ("kind", "name", "uid"))
            return Owner(kind, name, uid)
    return None


@dataclass(frozen=True)
class FailingPod:
    """A pod on this node whose image pull failed, as the controller recorded it."""

    namespace: str
    name: str
    uid: str
    owner: Owner | None
    hosts: frozenset[str]  # HostPort.key of each host its pulls failed at

    @property
    def recyclable(self) -> bool:
        return self.owner is not None and self.owner.recreates


@dataclass(frozen=True)
class Limits:
    """How much one remediation may recycle, and how fast. Not in policy.yaml on purpose: the
    operator chooses whether, these bound how much."""

    cap: int = 50  # evictions per remediation; the rest is left to kubelet's retry
    burst: int = 10  # evictions at once, then `per_second` (token bucket, per node)
    per_second: float = 2.0
    retry_base: float = 5.0  # first retry of a refused eviction, doubling (Retry-After wins)
    retry_cap: float = 60.0
    # Past kubelet's back-off cap its own retry has come first: stop retrying refusals then.
    retry_window: float = KUBELET_BACKOFF_CAP
    # An owner recycled for a host is not recycled again for it this soon: if its replacement
    # fails too, the CA did not help, and evicting again would only churn.
    owner_cooldown: float = 600.0
    # A pod whose failure is reported this soon after the remediation (its pull started
    # before the CA was in place) still joins that remediation's recycling.
    late_window: float = 120.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Selection:
    """The failing pods at one endpoint, sorted into what happens to them."""

    endpoint: str
    evict: tuple[FailingPod, ...]  # owned by a recreating controller, within the cap
    left: tuple[FailingPod, ...]  # bare or unknown controller: told, left to kubelet
    over_cap: tuple[FailingPod, ...]  # recyclable, but past the cap: left to kubelet
    cooling: tuple[FailingPod, ...]  # owner recycled for this endpoint recently

    @property
    def empty(self) -> bool:
        return not (self.evict or self.left or self.over_cap or self.cooling)


def select(
    pods: Iterable[FailingPod],
    endpoint: str,
    *,
    cap: int,
    cooling_owners: Collection[str] = (),
    skip: Collection[str] = (),
) -> Selection:
    """Sort the pods failing at `endpoint` (a HostPort.key). `cooling_owners` are owner uids
    recycled for this endpoint recently; `skip` are pod uids already being handled."""
    matching = sorted(
        (p for p in pods if endpoint in p.hosts and p.uid not in skip),
        key=lambda p: (p.namespace, p.name, p.uid),
    )
    left = tuple(p for p in matching if not p.recyclable)
    owned = [p for p in matching if p.recyclable]
    cooling = tuple(p for p in owned if p.owner is not None and p.owner.uid in cooling_owners)
    ready = [p for p in owned if p not in cooling]
    return Selection(endpoint, tuple(ready[:cap]), left, tuple(ready[cap:]), cooling)


def retry_delay(attempt: int, retry_after: float | None, limits: Limits) -> float:
    """Seconds before retrying an eviction refused `attempt` times: doubling from
    `retry_base`, capped, and never sooner than the server's Retry-After."""
    backoff = min(limits.retry_cap, limits.retry_base * 2.0 ** max(0, attempt - 1))
    return max(backoff, retry_after or 0.0)


def kubelet_backoff_steps(cap: float = KUBELET_BACKOFF_CAP) -> tuple[float, ...]:
    """kubelet's successive waits between pull attempts: 10, 20, 40, ... up to the cap."""
    steps, wait = [], KUBELET_BACKOFF_INITIAL
    while wait < cap:
        steps.append(wait)
        wait *= 2
    steps.append(cap)
    return tuple(steps)


@dataclass
class TokenBucket:
    """`burst` tokens, refilled at `per_second`; the clock is injected (monotonic seconds)."""

    per_second: float
    burst: int
    clock: Callable[[], float]
    _tokens: float = field(init=False)
    _stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._stamp = self.clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.per_second

    def _refill(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.per_second)
        self._stamp = now


__all__ = [
    "DEFAULT_LIMITS",
    "RECREATING_KINDS",
    "FailingPod",
    "Limits",
    "Owner",
    "Selection",
    "TokenBucket",
    "controller_owner",
    "kubelet_backoff_steps",
    "retry_delay",
    "select",
]
