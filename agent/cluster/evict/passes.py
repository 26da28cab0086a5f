"""A recycling pass: what one remediation asked the Recycler for, its tally, and the Node
summaries it ends with (once every pod had its first attempt, and again after retries)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from agent.cluster.evict.eviction import EVICTED, GONE
from agent.core.recycle import FailingPod, Limits


@dataclass
class Pass:
    """The recycling one remediation asked for, and its tally for the Node summary."""

    endpoint: str
    started: float
    known: set[str] = field(default_factory=set)  # pod uids this pass has seen
    scheduled: int = 0  # counts toward the cap
    first_round: int = 0  # pods whose first attempt is still to come
    pending: int = 0  # pods with an attempt still to come
    left: int = 0
    over_cap: int = 0
    cooling: int = 0
    tally: Counter[str] = field(default_factory=Counter)  # evicted, gone, recovered, gave-up
    retrying: set[str] = field(default_factory=set)  # uids refused by a budget, waiting
    retried: bool = False  # some first attempt was refused or failed transiently
    failed: list[str] = field(default_factory=list)
    summarized: bool = False


@dataclass
class Task:
    pod: FailingPod
    run: Pass
    attempt: int = 1  # the attempt to make next; rate-limit waits do not count


def summary(run: Pass, limits: Limits) -> str:
    """The Node summary once every pod of the pass had its first attempt."""
    t = run.tally
    parts = [
        f"recycled {t[EVICTED]} pods for {run.endpoint}",
        f"{run.left} bare pods left to kubelet's retry",
        f"{len(run.retrying)} refused by PodDisruptionBudget, retrying",
    ]
    if run.over_cap:
        parts.append(
            f"{run.over_cap} over the cap of {limits.cap} per "
            "remediation left to kubelet's retry"
        )
    if run.cooling:
        parts.append(
            f"{run.cooling} not recycled again: their controller's pods were "
            f"evicted for {run.endpoint} within "
            f"{limits.owner_cooldown / 60:.0f} min"
        )
    if t["recovered"]:
        parts.append(f"{t['recovered']} recovered on their own")
    if t["cancelled"]:
        parts.append(f"{t['cancelled']} not evicted: recyclePods was turned off")
    if t[GONE]:
        parts.append(f"{t[GONE]} already gone")
    if run.failed:
        parts.append(f"{len(run.failed)} could not be evicted: {run.failed[0]}")
    return "; ".join(parts)


def final_summary(run: Pass, limits: Limits) -> str:
    """After retries settle, the outcome the first summary could not know yet."""
    evicted, gave_up = run.tally[EVICTED], run.tally["gave-up"]
    message = f"recycling for {run.endpoint} done after retries: {evicted} pods recycled"
    if gave_up:
        message += (
            f"; {gave_up} left to kubelet's retry, eviction refused for "
            f"{limits.retry_window:.0f}s"
        )
    return message
