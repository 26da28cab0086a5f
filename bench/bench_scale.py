"""Many agents against ONE fake API server: numbers, never assertions.

100 real `Agent`s (watches, worker, Event recorder, restart slots), 25 per worker subprocess so
two cores are not one GIL, all against one fake API server in this process:

- time until every agent is ready, and each worker's RSS;
- API requests per agent per minute while idle, from the fake's request log;
- bytes each agent receives while pods on 25 nodes that run no agent are created, updated and
  deleted (per-agent mean and max; bookmarks are all an agent should get);
- all agents need a runtime restart at once with `maxConcurrentRestarts: 2` in the policy:
  each takes a slot exactly as the daemon's restart gate does and "restarts" for `hold`
  seconds; the maximum number of restarts running at one instant (from the intervals the
  workers report on the shared monotonic clock) and the total time.

    .venv/bin/python -m bench.bench_scale [--quick] [--agents 100] [--per-process 25]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import Row, max_overlap, mib  # noqa: E402
from bench.bench_daemon import (  # noqa: E402
    APISERVER_BOOKMARK_SECONDS,
    NS,
    OTHER_NODES,
    BenchApi,
    churn,
    drop_proxy_and_trust_env,
    host_root,
    kube_client,
    opted_in_node,
    policy,
)
from bench.workers import Worker, spawn  # noqa: E402
from lab.fakes.apiserver import FakeApiServer  # noqa: E402

JSON = dict[str, Any]
UA_PREFIX = "ca-trust-agent/bench ("
MAX_RESTARTS = 2
SCALE_POLICY = f'maxConcurrentRestarts: {MAX_RESTARTS}\nregistries:\n  - host: "127.0.0.1"\n'


def user_agent(node: str) -> str:
    return f"{UA_PREFIX}{node})"


# --- worker side: a process of agents driven over stdin/stdout ---------------------------------


def _emit(message: JSON) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_worker(api_url: str, nodes: Sequence[str], root: Path, hold: float,
               poll: float | None) -> int:
    from agent.cluster.daemon import Agent
    from agent.cluster.lease import RestartSlots
    from agent.node.engine import Engine
    from agent.node.host import DirectRunner, HostFS

    drop_proxy_and_trust_env()
    agents = []
    for node in nodes:
        client = kube_client(api_url, user_agent(node))
        engine = Engine(HostFS(str(host_root(root / node))), DirectRunner())
        agent = Agent(client, node, NS, engine)
        if poll is not None:  # a faster poll than the agent's default, for a short pass
            agent.slots = RestartSlots(client, NS, holder=node, poll_seconds=poll)
        agents.append(agent)
    for agent in agents:
        agent.start()
    deadline = time.monotonic() + 90
    while not all(a.ready().ready for a in agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    _emit({"ready": sum(a.ready().ready for a in agents), "pid": os.getpid()})
    for line in sys.stdin:
        if line.strip() == "restart":
            _emit(restart_all(agents, hold))
        elif line.strip() == "stop":
            break
    for agent in agents:
        agent.stop()
    for agent in agents:
        agent.join(timeout=5)
    _emit({"stopped": True})
    return 0


def restart_all(agents: Sequence[Any], hold: float) -> JSON:
    """Every agent restarts at once, each through its slot as the daemon's gate takes it."""
    intervals: list[tuple[float, float]] = []
    errors: list[str] = []
    limits: set[int] = set()
    lock = threading.Lock()

    def one(agent: Any) -> None:
        try:
            # what Agent._restart_gate does: the policy's limit, then a slot
            agent.slots.max_slots = agent.controller.policy.max_concurrent_restarts
            with agent.slots.slot("containerd"):
                began = time.monotonic()
                time.sleep(hold)
                ended = time.monotonic()
            with lock:
                intervals.append((began, ended))
                limits.add(agent.slots.max_slots)
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(a,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return {"intervals": intervals, "errors": errors, "limits": sorted(limits)}


# --- driver side ------------------------------------------------------------------------------


def start_worker(api_url: str, nodes: Sequence[str], root: Path, hold: float,
                 poll: float | None, log: Path) -> Worker:
    argv = [
        sys.executable, "-m", "bench.bench_scale", "--worker", "--api", api_url,
        "--nodes", ",".join(nodes), "--root", str(root), "--hold", str(hold),
    ]
    if poll is not None:
        argv += ["--poll", str(poll)]
    return spawn(argv, log)


def scale(agents: int, per_process: int, idle_seconds: float, pods: int, hold: float,
          poll: float | None) -> list[Row]:
    section = f"scale ({agents} agents)"
    nodes = [f"agent-{i:03d}" for i in range(agents)]
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp,
        BenchApi(bookmark_interval=APISERVER_BOOKMARK_SECONDS) as api,
    ):
        for node in (*nodes, *OTHER_NODES):
            api.put_object(opted_in_node(node))
        api.put_object(policy(SCALE_POLICY))
        workers: list[Worker] = []
        try:
            t0 = time.monotonic()
            for i in range(0, agents, per_process):
                chunk = nodes[i : i + per_process]
                workers.append(start_worker(api.url, chunk, Path(tmp) / f"w{i}", hold, poll,
                                            Path(tmp) / f"w{i}.log"))
            ready = sum(w.expect("ready", 120)["ready"] for w in workers)
            rows.append(Row(section, f"agents ready ({len(workers)} processes)",
                            f"{ready} of {agents} in {time.monotonic() - t0:.1f} s"))
            rss = [w.rss_kib() * 1024 for w in workers]
            rows.append(Row(section, f"RSS per worker process of {per_process} agents",
                            f"mean {mib(sum(rss) / len(rss))}, max {mib(max(rss))}"))
            rows += idle_requests(api, nodes, idle_seconds, section)
            rows += churn_bytes(api, nodes, pods, section)
            rows += restarts(workers, hold, poll, section)
        finally:
            for w in workers:
                w.stop()
    return rows


def requests_per_agent(api: FakeApiServer, nodes: Sequence[str]) -> list[int]:
    counts = dict.fromkeys(nodes, 0)
    by_agent = {user_agent(n): n for n in nodes}
    for record in api.requests():
        node = by_agent.get(record.client)
        if node is not None:
            counts[node] += 1
    return list(counts.values())


def idle_requests(api: FakeApiServer, nodes: Sequence[str], seconds: float,
                  section: str) -> list[Row]:
    time.sleep(1.0)  # start-up writes (node annotations) are not idle
    startup = requests_per_agent(api, nodes)
    api.clear_requests()
    time.sleep(seconds)
    per_minute = [c * 60 / seconds for c in requests_per_agent(api, nodes)]
    mean = sum(per_minute) / len(per_minute)
    return [
        Row(section, "API requests per agent during start-up",
            f"mean {sum(startup) / len(startup):.1f}, max {max(startup)}"),
        Row(section, f"API requests per agent per minute, idle ({seconds:.0f} s window)",
            f"mean {mean:.2f}, max {max(per_minute):.1f}"),
    ]


def churn_bytes(
    api: FakeApiServer, nodes: Sequence[str], pods: int, section: str
) -> list[Row]:
    before = api.bytes_by_client()
    seconds = churn(api, pods)
    time.sleep(3.0)  # every agent's filtered stream has seen the changes go by
    after = api.bytes_by_client()
    got = [after.get(user_agent(n), 0) - before.get(user_agent(n), 0) for n in nodes]
    total = [after.get(user_agent(n), 0) for n in nodes]
    return [
        Row(section, f"bytes per agent from {3 * pods} pod writes on {len(OTHER_NODES)} "
            f"other nodes ({seconds:.1f} s)",
            f"mean {sum(got) / len(got):.0f} B, max {max(got)} B", "~0 (bookmarks only)"),
        Row(section, "  (the same counters since start: lists, watches, writes)",
            f"mean {sum(total) / len(total):.0f} B, max {max(total)} B"),
    ]


def restarts(workers: Sequence[Worker], hold: float, poll: float | None,
             section: str) -> list[Row]:
    start = time.monotonic()
    for w in workers:
        w.send("restart")
    answers = [w.expect("intervals", 900) for w in workers]
    intervals = [(s, e) for a in answers for s, e in a["intervals"]]
    errors = [e for a in answers for e in a["errors"]]
    limits = sorted({x for a in answers for x in a["limits"]})
    end = max((e for _, e in intervals), default=time.monotonic())
    how = f"{hold * 1000:.0f} ms restarts, poll {poll:g} s" if poll else (
        f"{hold * 1000:.0f} ms restarts, the agent's 5 s poll")
    rows = [
        Row(section, f"max simultaneous restarts, all need one, maxConcurrentRestarts="
            f"{MAX_RESTARTS}", str(max_overlap(intervals)), f"<= {MAX_RESTARTS}"),
        Row(section, f"restarts done / total time ({how})",
            f"{len(intervals)} in {end - start:.1f} s"),
        Row(section, "maxConcurrentRestarts the agents read from the policy",
            ",".join(map(str, limits)) or "-", str(MAX_RESTARTS)),
    ]
    if errors:
        rows.append(Row(section, "restarts that got no slot", f"{len(errors)}: {errors[0][:60]}",
                        "0"))
    return rows


def section_scale(quick: bool, agents: int | None = None, per_process: int | None = None,
                  idle_seconds: float | None = None, pods: int | None = None) -> list[Row]:
    return scale(
        agents=agents or 100,
        per_process=per_process or 25,
        idle_seconds=idle_seconds or (5.0 if quick else 30.0),
        pods=pods or (200 if quick else 1000),
        hold=0.2,
        poll=0.5 if quick else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--agents", type=int)
    parser.add_argument("--per-process", type=int)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=float, default=0.2, help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the agents' warnings are not the output
    if args.worker:
        return run_worker(args.api, args.nodes.split(","), Path(args.root), args.hold, args.poll)
    drop_proxy_and_trust_env()
    for row in section_scale(args.quick, args.agents, args.per_process):
        print(f"{row.section:20} {row.metric:70} {row.value:>28} {row.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
