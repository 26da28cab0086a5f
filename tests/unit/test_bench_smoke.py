"""`python -m bench` runs every section that needs no root and prints one table.

A smoke test of the benchmark harness with tiny counts: it checks that the table comes out
with a row for each section and no section failed. The numbers themselves are never checked:
benchmarks report, they do not assert timings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # real TLS servers, a real `run` subprocess

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "--quick",
    "--only", "fetch,install,latency,idle,slots,scale,fleet",
    "--fetch-runs", "1",
    "--install-runs", "1",
    "--runs", "2",
    "--idle-seconds", "1",
    "--pods", "10",
    "--slot-agents", "2",
    "--agents", "4",
    "--per-process", "2",
    "--scale-pods", "10",
    "--fleet-nodes", "3",
    "--fleet-confirmations", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def table() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.split(" | ")]


def test_the_table_starts_with_the_machine_and_the_column_titles(table: list[str]) -> None:
    assert table[0].startswith("machine: ") and "CPUs" in table[0] and "kernel" in table[0]
    titles = next(line for line in table if line.startswith("section "))
    assert cells(titles) == ["section", "metric", "value", "target"]


def test_every_requested_section_has_rows_and_none_failed(table: list[str]) -> None:
    rows = [cells(line) for line in table if line.count(" | ") == 3]
    sections = {r[0] for r in rows}
    for expected in (
        "fetch",
        "install registry",
        "detect->CATrusted",
        "idle (run subprocess)",
        "other nodes' churn",
        "restart slots",
        "scale (4 agents)",
        "fleet N=3 c=2",
    ):
        assert expected in sections, f"no {expected!r} rows in:\n" + "\n".join(table)
    errors = [r for r in rows if r[1] == "error"]
    assert errors == []


def test_the_rows_that_have_a_target_show_it_next_to_the_value(table: list[str]) -> None:
    rows = {cells(line)[1]: cells(line) for line in table if line.count(" | ") == 3}
    p50 = next(r for metric, r in rows.items() if metric.startswith("p50 over"))
    assert p50[3] == "<= 250 ms" and p50[2].endswith(" ms")
    slots = next(r for m, r in rows.items() if m.startswith("max simultaneous restarts, K="))
    assert slots[3] == "<= 1" and slots[2].isdigit()
