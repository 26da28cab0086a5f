"""Benchmarks: they print numbers and never assert timings.

`python -m bench` (or `scripts/bench`, which adds the private mount namespace the system-scope
rows need) runs every section and prints one table; `--quick` is a fast pass. Each module can
also be run on its own (`python bench/bench_fetch.py`, `python -m bench.bench_daemon` ...).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table; `target` is what the issue asks for ("-" when it sets none)."""

    section: str
    metric: str
    value: str
    target: str = "-"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one instant; an interval that
    ends exactly when another starts does not overlap it."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in edges:  # at equal times -1 sorts before +1: hand-over is not overlap
        current += step
        best = max(best, current)
    return best


def mib(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 20):.1f} MiB"


__all__ = ["Row", "max_overlap", "median", "mib", "percentile"]
