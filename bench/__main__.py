"""`python -m bench`: run every benchmark section and print ONE table.

    scripts/bench            # as root: adds the private mount namespace system scope needs
    scripts/bench --quick    # a fast pass (about a minute)
    .venv/bin/python -m bench --only latency,slots --runs 20

Sections: fetch (vs `openssl s_client -showcerts`), install (registry scope), install-system
(real update-ca-certificates; root in a private mount namespace, else "skipped"), latency
(detection -> CATrusted), idle (the `run` subprocess: RSS, CPU, other nodes' churn), slots
(restart slots, 5 agents), scale (100 agents against one API server), fleet (safe first
trust: N = 10, 100, 1,000 nodes' record components, one registry's storm), image (the
Dockerfile built with a real dockerd: size per layer; root and mmdebstrap, else "skipped").
A section that fails
prints its error in the table instead of stopping the others. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import Row, median

SECTIONS = (
    "fetch",
    "install",
    "install-system",
    "latency",
    "idle",
    "slots",
    "scale",
    "fleet",
    "recycle",
    "verify",
    "image",
)


# --- sections wrapping the existing benches ------------------------------------------------------


def fetch_rows(runs: int) -> list[Row]:
    from bench.bench_fetch import cases, in_process, intercepting, measure
    from lab.tls.pki import make_pki
    from lab.tls.servers import TLSServer

    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        pki = make_pki(tmp, names=("localhost",), ips=("127.0.0.1",))
        with TLSServer(pki.chain, pki.leaf) as server:
            # the proxy path (issue 19): through an intercepting CONNECT proxy vs direct
            proxy = intercepting(Path(tmp) / "proxy", pki, server.port)
            try:
                results = measure(cases(server.port, proxy.url), runs)
                warm = in_process(server.port, proxy.url, max(runs, 20))
            finally:
                proxy.stop()
    ref = next((r for r in results if r.case.name == "openssl s_client" and r.seconds), None)
    rows = []
    for r in results:
        metric = f"{r.case.name}: median (p90), N={runs}"
        if r.failed is not None:
            rows.append(Row("fetch", metric, "failed: " + r.failed.splitlines()[-1][:50]))
            continue
        ratio = f", {r.median / ref.median:.2f}x openssl" if ref and r is not ref else ""
        direct = next((d for d in results if d.case.name == "fetch_chain" and d.seconds), None)
        if r.case.name == "fetch_chain via proxy" and direct is not None:
            ratio += f", {(r.median - direct.median) * 1000:+.0f} ms vs direct"
        rows.append(Row("fetch", metric, f"{r.median * 1000:.0f} ms ({r.p90 * 1000:.0f}){ratio}"))
    added = (warm["via proxy"] - warm["direct"]) * 1000
    rows.append(
        Row(
            "fetch",
            f"fetch_chain in a warm process, direct vs via intercepting proxy, N={max(runs, 20)}",
            f"{warm['direct'] * 1000:.1f} ms vs {warm['via proxy'] * 1000:.1f} ms "
            f"({added:+.1f} ms)",
        )
    )
    return rows


def _install_rows(section: str, rows: Sequence[tuple[str, list[float]]]) -> list[Row]:
    out = []
    for name, xs in rows:
        step = name.split(": ", 1)[-1]
        target = "< 50 ms" if name == "registry scope: ours" else "-"
        if step == "ours":
            step = "ours (total minus fetch" + (
                ", refresh and restart)" if section.endswith("system") else ")"
            )
        value = f"{median(xs) * 1000:.1f} ms" if xs else "-"
        out.append(Row(section, f"{step}: median, N={len(xs)}", value, target))
    return out


def install_rows(runs: int) -> list[Row]:
    from bench.bench_install import registry_scope

    return _install_rows("install registry", registry_scope(runs))


def install_system_rows(runs: int) -> list[Row]:
    from bench.bench_install import system_scope
    from lab.isolation.sandbox import in_private_mount_namespace

    section = "install system"
    if os.geteuid() != 0:
        return [Row(section, "update-ca-certificates in a sandbox", "skipped: needs root")]
    if not in_private_mount_namespace():
        why = "skipped: needs a private mount namespace (run scripts/bench)"
        return [Row(section, "update-ca-certificates in a sandbox", why)]
    return _install_rows(section, system_scope(runs))


def verify_rows(runs: int) -> list[Row]:
    from bench.bench_verify import rows
    from lab.isolation.sandbox import in_private_mount_namespace

    section = "runtime verify"
    if os.geteuid() != 0 or not in_private_mount_namespace():
        why = "skipped: needs root in a private mount namespace (run scripts/bench)"
        return [Row(section, "CRI pull of the lab image", why)]
    return [Row(section, metric, value) for metric, value in rows(runs)]


def image_rows() -> list[Row]:
    from bench.bench_image import rows

    return rows()


# --- the table ----------------------------------------------------------------------------------


def header() -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"machine: {os.cpu_count()} CPUs, {mem} RAM, kernel {platform.release()}, "
        f"python {platform.python_version()}, {now}"
    )


def render(rows: Sequence[Row]) -> str:
    titles = Row("section", "metric", "value", "target")
    table = [titles, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in ("section", "metric", "value")]

    def line(r: Row) -> str:
        return (
            f"{r.section:<{widths[0]}} | {r.metric:<{widths[1]}} | {r.value:<{widths[2]}} | "
            f"{r.target}"
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths) + "-+-" + "-" * 10
    return "\n".join([line(titles), rule, *(line(r) for r in rows)])


def run_sections(args: argparse.Namespace) -> list[Row]:
    from bench import bench_daemon, bench_fleet, bench_recycle, bench_scale

    q = args.quick
    plan: dict[str, Callable[[], list[Row]]] = {
        "fetch": lambda: fetch_rows(args.fetch_runs or (3 if q else 20)),
        "install": lambda: install_rows(args.install_runs or (5 if q else 30)),
        "install-system": lambda: install_system_rows(args.install_runs or (5 if q else 30)),
        "latency": lambda: bench_daemon.section_latency(q, args.runs),
        "idle": lambda: bench_daemon.section_idle(q, args.idle_seconds, args.pods),
        "slots": lambda: bench_daemon.section_slots(q, args.slot_agents),
        "scale": lambda: bench_scale.section_scale(
            q, args.agents, args.per_process, args.idle_seconds, args.scale_pods
        ),
        "fleet": lambda: bench_fleet.section_fleet(
            q, args.fleet_nodes, args.fleet_confirmations, args.idle_seconds
        ),
        "recycle": lambda: [Row(*r) for r in bench_recycle.run(q)],
        "verify": lambda: verify_rows(3 if q else 10),
        "image": image_rows,
    }
    rows: list[Row] = []
    for name in args.only:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            rows += plan[name]()
        except Exception as exc:  # one broken section must not hide the others' numbers
            rows.append(Row(name, "error", f"{type(exc).__name__}: {exc}"[:120]))
        print(f"bench: {name} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; known: {SECTIONS}")
    return names


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast pass (about a minute)")
    parser.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        help=f"comma-separated sections (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument("--fetch-runs", type=int, help="runs per fetch command")
    parser.add_argument("--install-runs", type=int, help="install/remove rounds")
    parser.add_argument("--runs", type=int, help="detection->CATrusted runs")
    parser.add_argument("--idle-seconds", type=float, help="idle window (run process, scale)")
    parser.add_argument("--pods", type=int, help="pods churned past the run process")
    parser.add_argument("--slot-agents", type=int, help="agents contending for restart slots")
    parser.add_argument("--agents", type=int, help="agents in the scale section")
    parser.add_argument("--per-process", type=int, help="scale agents per worker process")
    parser.add_argument("--scale-pods", type=int, help="pods churned in the scale section")
    parser.add_argument("--fleet-nodes", type=_ints, help="fleet sizes, e.g. 10,100,1000")
    parser.add_argument(
        "--fleet-confirmations", type=_ints, help="confirmations in the fleet section, e.g. 1,3"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the agents' warnings are not the output

    from bench.bench_daemon import drop_proxy_and_trust_env

    drop_proxy_and_trust_env()
    started = time.monotonic()
    rows = run_sections(args)
    print(header())
    print(
        f"mode: {'quick' if args.quick else 'full'}, sections: {','.join(args.only)}, "
        f"{time.monotonic() - started:.0f} s"
    )
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
