"""Recycling pods through the Eviction API, off the controller's worker thread.

`evict()` is one POST of a policy/v1 Eviction to `pods/NAME/eviction`. The apiserver checks
the pod's PodDisruptionBudgets before deleting it and answers 429 when a budget forbids it,
so recycling never takes a workload below what its owner declared acceptable. A UID
precondition makes sure a retry never evicts a StatefulSet pod's *replacement*, which has the
same name.

`Recycler` runs the evictions a remediation asks for in its own thread: one at a time, paced
by a token bucket, a refused one retried later with back-off. Why a thread and not the
controller's queue: a PodDisruptionBudget may refuse for minutes, and the worker must stay
free for other hosts' remediations meanwhile. Which pods, how many and how fast are decided
in `agent.core.recycle` (pure); this package only acts and reports.

`eviction` holds the API call and the classification of its answer, `recycler` the thread
(passes, pacing, retries), `passes` what one pass tallies and its Node summaries.
"""

from __future__ import annotations

from agent.cluster.evict.eviction import (
    EVICTED,
    FAILED,
    GONE,
    REFUSED,
    RETRY,
    Eviction,
    classify,
    evict,
    eviction_body,
)
from agent.cluster.evict.recycler import Recycler

__all__ = [
    "EVICTED",
    "FAILED",
    "GONE",
    "REFUSED",
    "RETRY",
    "Eviction",
    "Recycler",
    "classify",
    "evict",
    "eviction_body",
]
