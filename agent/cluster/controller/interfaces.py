"""What the controller's parts share: the narrow interfaces to the outside world (Events,
the cluster reads and patches, metrics, the pod recycler), the pod reference a watch event
becomes, the work item the watch side queues for the worker, and the two seams between
the steps of a remediation (`Installer`, `FirstTrustStep`), so no part imports another."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from agent.core.detect import PullFailure
from agent.core.firsttrust import Decision
from agent.core.policy import Policy
from agent.core.reasons import NORMAL, WARNING
from agent.core.recycle import FailingPod, Owner
from agent.core.remediation import InstallRequest, Result


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

    def record_work_failure(self, kind: str) -> None: ...

    def record_diagnosis(self, kind: str) -> None: ...


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
class Work:
    kind: str  # "failure" | "retry" | "lookup" | "sync" | "reconcile" | "repair" | "stop"
    pod: PodRef | None = None
    failure: PullFailure | None = None
    image: str | None = None
    key: str | None = None  # "repair": the ledger entry to finish (an owed restart)


class Installer(Protocol):
    """The last step of a remediation: the engine installs `req`, and the outcome is
    reported (Events, metrics, the node annotation). `key` is the flight-control key."""

    def install(self, req: InstallRequest, pod: PodRef | None, key: str) -> Result | None: ...


class FirstTrustStep(Protocol):
    """Safe first trust (agent.cluster.firsttrust.FirstTrust) as the remediation step sees
    it: a stage that decides what to do with a fetched anchor (install this request, rotate,
    hold, refuse) and returns that decision; the remediation step installs and reports."""

    def decide(
        self, req: InstallRequest, policy: Policy, pod: PodRef, failure: PullFailure
    ) -> Decision: ...


__all__ = [
    "NORMAL",
    "WARNING",
    "Cluster",
    "FirstTrustStep",
    "Installer",
    "Metrics",
    "PodRecycler",
    "PodRef",
    "Recorder",
    "Work",
]
