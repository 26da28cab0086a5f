"""Safe first trust at fleet size: numbers, never assertions.

N nodes' first-trust components (lab.fakes.fleet: the product's TrustRecord, FirstTrust, Watcher,
EventRecorder and node annotation per node, each with its own API client and its own watch of
the record; only the engine is a stand-in), `PER_PROCESS` nodes per worker subprocess (so two
cores are not one GIL), against one fake API server in this process that refuses stale
conditional updates (409) and sends every watcher the whole object on every change, as
kube-apiserver does. For each N:

- idle: API requests per node per minute, the record watch open;
- storm: every node fails on one new registry at the same moment (kubelet's retry emulated
  at 13 s for a failure the record could not decide): API requests per node (mean, max),
  record write attempts, writes that landed, 409s, reads past the watch cache, bytes sent to
  the nodes' record watches (total and per node) and to the nodes in all, the record's size,
  and the time until every node reported CATrusted.

    .venv/bin/python -m bench.bench_fleet [--quick] [--nodes 10,100,1000] [--confirmations 1,3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import Row  # noqa: E402
from bench.workers import Worker, spawn  # noqa: E402

REGISTRY = "registry.fleet.example:5000"
IMAGE = f"{REGISTRY}/team/app:v1"
KUBELET_RETRY = 13.0
STORM_TIMEOUT = 600.0
PER_PROCESS = 125
JSON = dict[str, Any]


@dataclass(frozen=True)
class FleetResult:
    nodes: int
    confirmations: int
    idle_requests_per_node_minute: float
    storm_requests_mean: float
    storm_requests_max: int
    write_attempts: int
    writes: int
    conflicts: int
    reads: int
    watch_bytes: int
    bytes_to_nodes: int
    record_bytes: int
    seconds_all_trusted: float | None
    trusted: int
    failed_events: int


# --- worker side: a process of nodes driven over stdin/stdout -----------------------------------


def _emit(message: JSON) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_worker(api_url: str, names: Sequence[str], confirmations: int, anchor_file: Path) -> int:
    from agent.core.trust import cert_from_der
    from lab.fakes.fleet import make_node, policy, running

    anchor = cert_from_der(anchor_file.read_bytes())
    threading.stack_size(512 * 1024)
    nodes = [make_node(api_url, name, anchor, policy(REGISTRY, confirmations)) for name in names]
    for node in nodes:
        node.kubelet_retry = KUBELET_RETRY
    with running(nodes):
        deadline = time.monotonic() + 300
        while not all(x.watcher.synced.is_set() for x in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)
        _emit({"ready": sum(x.watcher.synced.is_set() for x in nodes)})
        for line in sys.stdin:
            if line.strip() != "storm":
                break
            began = time.monotonic()
            for node in nodes:
                node.fail(IMAGE, REGISTRY)
            for node in nodes:
                node.trusted.wait(max(0.0, began + STORM_TIMEOUT - time.monotonic()))
            while not all(x.work.empty() for x in nodes):
                time.sleep(0.05)
            _emit({
                "trusted_at": [x.trusted_at for x in nodes if x.trusted_at is not None],
                "writes": sum(x.record.writes for x in nodes),
                "conflicts": sum(x.record.conflicts for x in nodes),
                "reads": sum(x.record.reads for x in nodes),
                "failed": sum(x.outcomes.count("CATrustFailed") for x in nodes),
            })
    _emit({"stopped": True})
    return 0


# --- driver side --------------------------------------------------------------------------------


def start_worker(
    api_url: str, names: Sequence[str], confirmations: int, anchor_file: Path, log: Path
) -> Worker:
    argv = [
        sys.executable, "-m", "bench.bench_fleet", "--worker", "--api", api_url,
        "--names", ",".join(names), "--confirmations", str(confirmations),
        "--anchor", str(anchor_file),
    ]
    return spawn(argv, log)


def measure(n: int, confirmations: int, idle_seconds: float) -> FleetResult:
    from cryptography.hazmat.primitives.serialization import Encoding

    from agent.core import firsttrust as ft
    from lab.fakes.apiserver import FakeApiServer
    from lab.fakes.fleet import NS, UA_PREFIX, node_object
    from lab.tls import pki

    names = [f"node-{i:04}" for i in range(n)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp,
        # bookmarks as kube-apiserver sends them; history enough for the storm's writes
        FakeApiServer(bookmark_interval=60.0, history=100_000) as api,
    ):
        anchor_file = Path(tmp) / "anchor.der"
        anchor_file.write_bytes(pki.make_ca("Fleet Root CA").cert.public_bytes(Encoding.DER))
        for name in names:
            api.put_object(dict(node_object(name)))
        workers = [
            start_worker(api.url, names[i : i + PER_PROCESS], confirmations, anchor_file,
                         Path(tmp) / f"worker-{i}.log")
            for i in range(0, n, PER_PROCESS)
        ]
        try:
            for w in workers:
                w.expect("ready", 300)

            def fleet_requests() -> list[str]:
                return [r.client for r in api.requests() if r.client.startswith(UA_PREFIX)]

            api.clear_requests()
            time.sleep(idle_seconds)
            idle = len(fleet_requests()) / n / idle_seconds * 60

            api.clear_requests()
            sent_before = api.bytes_by_client()
            watch_before = api.watch_bytes("configmaps")
            began = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
            for w in workers:
                w.send("storm")
            reports = [w.expect("trusted_at", STORM_TIMEOUT + 120) for w in workers]
            per_node: dict[str, int] = {}
            for client in fleet_requests():
                per_node[client] = per_node.get(client, 0) + 1
            # the fleet writes no other ConfigMap: every POST or PUT there is the record's
            attempts = sum(
                1 for r in api.requests() if r.method in ("POST", "PUT") and "/configmaps" in r.path
            )
            sent_after = api.bytes_by_client()
            watch_bytes = api.watch_bytes("configmaps") - watch_before
            record = api.get_object("configmaps", NS, ft.RECORD_NAME) or {}
        finally:
            for w in workers:
                w.stop()
    done = [t for r in reports for t in r["trusted_at"]]
    to_nodes = sum(
        v - sent_before.get(k, 0) for k, v in sent_after.items() if k.startswith(UA_PREFIX)
    )
    return FleetResult(
        nodes=n,
        confirmations=confirmations,
        idle_requests_per_node_minute=idle,
        storm_requests_mean=sum(per_node.values()) / n,
        storm_requests_max=max(per_node.values(), default=0),
        write_attempts=attempts,
        writes=sum(r["writes"] for r in reports),
        conflicts=sum(r["conflicts"] for r in reports),
        reads=sum(r["reads"] for r in reports),
        watch_bytes=watch_bytes,
        bytes_to_nodes=to_nodes,
        record_bytes=len(json.dumps(record, separators=(",", ":"))),
        seconds_all_trusted=(max(done) - began) if len(done) == n else None,
        trusted=len(done),
        failed_events=sum(r["failed"] for r in reports),
    )


def _kb(n: float) -> str:
    return f"{n / 1000:.1f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def rows_for(r: FleetResult) -> list[Row]:
    section = f"fleet N={r.nodes} c={r.confirmations}"
    took = (
        f"{r.seconds_all_trusted:.2f} s" if r.seconds_all_trusted is not None
        else f"{r.trusted}/{r.nodes} within {STORM_TIMEOUT:.0f} s"
    )
    return [
        Row(section, "idle: API requests per node per minute",
            f"{r.idle_requests_per_node_minute:.2f}"),
        Row(section, "storm: API requests per node, mean (max)",
            f"{r.storm_requests_mean:.1f} ({r.storm_requests_max})"),
        Row(section, "storm: record writes attempted / landed / 409",
            f"{r.write_attempts} / {r.writes} / {r.conflicts}", "O(1) after acceptance"),
        Row(section, "storm: record reads past the watch cache", str(r.reads)),
        Row(section, "storm: bytes to record watchers (per node)",
            f"{_kb(r.watch_bytes)} ({_kb(r.watch_bytes / r.nodes)})"),
        Row(section, "storm: bytes to nodes, all requests (per node)",
            f"{_kb(r.bytes_to_nodes)} ({_kb(r.bytes_to_nodes / r.nodes)})"),
        Row(section, "record size (the ConfigMap as watched)", f"{r.record_bytes} B", "bounded"),
        Row(section, "storm: every node CATrusted after", took),
        Row(section, "storm: CATrustFailed Events (record not consulted)", str(r.failed_events)),
    ]


def section_fleet(
    quick: bool, nodes: Sequence[int] | None = None, confirmations: Sequence[int] | None = None,
    idle_seconds: float | None = None,
) -> list[Row]:
    sizes = nodes or ((10, 100) if quick else (10, 100, 1000))
    modes = confirmations or ((1,) if quick else (1, 3))
    idle = idle_seconds or (2.0 if quick else 10.0)
    old = threading.stack_size()
    threading.stack_size(512 * 1024)  # the fake's threads: one per watch and per connection
    try:
        rows: list[Row] = []
        for c in modes:
            for n in sizes:
                print(f"bench: fleet N={n} confirmations={c} ...", file=sys.stderr, flush=True)
                rows += rows_for(measure(n, c, idle))
        return rows
    finally:
        threading.stack_size(old)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="python -m bench.bench_fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nodes", type=_ints)
    parser.add_argument("--confirmations", type=_ints)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--anchor", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.worker:
        return run_worker(args.api, args.names.split(","), args.confirmations[0], args.anchor)
    from bench.__main__ import render

    os.environ.pop("SSL_CERT_FILE", None)
    print(render(section_fleet(args.quick, args.nodes, args.confirmations, args.idle_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
