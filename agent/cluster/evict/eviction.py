"""One eviction: the policy/v1 Eviction POST to `pods/NAME/eviction` and what its answer means.

The apiserver checks the pod's PodDisruptionBudgets before deleting it and answers 429 when a
budget forbids it, so recycling never takes a workload below what its owner declared
acceptable. A UID precondition makes sure a retry never evicts a StatefulSet pod's
*replacement*, which has the same name.

The client given to `evict` should not retry a 429 itself (RetryPolicy(attempts=1)): the
Recycler owns the retry schedule, and a client that slept on Retry-After in place would stall
every other eviction behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agent.cluster.client import ApiError, resource_path

JSON = dict[str, Any]

EVICTED = "evicted"  # the pod is being deleted; its controller recreates it
GONE = "gone"  # already deleted, or replaced (UID precondition failed): nothing to do
REFUSED = "refused"  # 429 from a PodDisruptionBudget: retry later
RETRY = "retry"  # throttled (429 without a budget) or a transient failure: retry later
FAILED = "failed"  # will not work by retrying (403: no RBAC for pods/eviction, 400, ...)


@dataclass(frozen=True)
class Eviction:
    """What one eviction request came to."""

    outcome: str  # EVICTED | GONE | REFUSED | RETRY | FAILED
    message: str = ""
    retry_after: float | None = None  # the server's Retry-After, seconds

    @property
    def again(self) -> bool:
        return self.outcome in (REFUSED, RETRY)


class Poster(Protocol):
    def create(self, path: str, body: JSON) -> JSON: ...


def eviction_body(namespace: str, name: str, uid: str | None = None) -> JSON:
    body: JSON = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    }
    if uid:
        body["deleteOptions"] = {"preconditions": {"uid": uid}}
    return body


def evict(client: Poster, namespace: str, name: str, *, uid: str | None = None) -> Eviction:
    """POST an Eviction for one pod; never raises for an API answer."""
    path = resource_path("v1", "pods", namespace, name, "eviction")
    try:
        client.create(path, eviction_body(namespace, name, uid))
    except ApiError as exc:
        return classify(exc)
    return Eviction(EVICTED)


def classify(exc: ApiError) -> Eviction:
    """Map an eviction's error answer to what the Recycler does next."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc)
    if exc.status == 404:
        return Eviction(GONE, "the pod is already gone")
    if exc.status == 409 and "precondition" in message.lower():
        return Eviction(GONE, "the pod was already replaced")
    if exc.status == 429:
        details = body.get("details") or {}
        retry_after = exc.retry_after
        if retry_after is None and isinstance(details.get("retryAfterSeconds"), int | float):
            retry_after = float(details["retryAfterSeconds"])
        causes = [c.get("reason") for c in details.get("causes") or [] if isinstance(c, dict)]
        by_budget = "DisruptionBudget" in causes or "disruption budget" in message.lower()
        return Eviction(REFUSED if by_budget else RETRY, message, retry_after)
    if exc.status == 500 and "more than one poddisruptionbudget" in message.lower():
        return Eviction(FAILED, message)  # the apiserver never evicts such a pod
    if exc.transient:
        return Eviction(RETRY, message, exc.retry_after)
    return Eviction(FAILED, message)
