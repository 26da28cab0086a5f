"""Whole-process time of `ca-trust-agent fetch` against `openssl s_client -showcerts`.

Not a test: it prints numbers and asserts nothing. Starts a lab TLS server on loopback
(leaf + intermediate, EC P-256), then runs each command N times, round-robin so drift
hits every command alike, after one warm-up run each (page cache, .pyc files).

    .venv/bin/python bench/bench_fetch.py [-n 20]

Rows:
  openssl s_client     the reference: `openssl s_client -showcerts -connect ... </dev/null`
  python (floor)       `python -c pass`: the interpreter alone, a floor no Python tool beats
  fetch_chain          `python -c` importing agent.node.chain and fetching (no analysis, no output)
  fetch + analyze      the same plus agent.core.trust.analyze (what `fetch` decides)
  cli fetch            `python -m agent fetch 127.0.0.1:PORT` (skipped if the CLI fails)
  fetch_chain via proxy  fetch_chain of `proxied.test:443` through the lab's intercepting
                       CONNECT proxy (lab/tls/intercept.py: CONNECT, a re-signed leaf, a second
                       TLS connection to the same server): the added time of the proxy path
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.tls.intercept import InterceptingProxy, Upstream  # noqa: E402 - repo on sys.path
from lab.tls.pki import PKI, make_pki  # noqa: E402
from lab.tls.servers import TLSServer  # noqa: E402

PROXIED = "proxied.test"  # a name only the proxy's table knows: never resolved

_DROP = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    case: Case
    seconds: tuple[float, ...]
    failed: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env["PYTHONPATH"] = str(REPO)
    return env


def _run(
    argv: Sequence[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    start = time.perf_counter()
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    return time.perf_counter() - start, done


def intercepting(workdir: Path, pki: PKI, port: int) -> InterceptingProxy:
    """The lab's intercepting proxy, answering `proxied.test:443` from the server on `port`;
    started (stop it)."""
    upstream = Upstream("127.0.0.1", port, "localhost", pki.paths.root)
    return InterceptingProxy(workdir, {f"{PROXIED}:443": upstream}).start()


def cases(port: int, proxy_url: str | None = None) -> list[Case]:
    py = sys.executable
    target = f"127.0.0.1:{port}"
    fetch = (
        "from agent.node.chain import fetch_chain; from agent.core.hostport import HostPort; "
        f"fetch_chain(HostPort('127.0.0.1', {port}))"
    )
    analyze = (
        "import datetime as dt; from agent.node.chain import fetch_chain; "
        "from agent.core.hostport import HostPort; from agent.core.trust import analyze; "
        f"c = fetch_chain(HostPort('127.0.0.1', {port})); "
        "analyze(c.certs, c.target, now=dt.datetime.now(dt.UTC))"
    )
    return [
        Case("openssl s_client", ("openssl", "s_client", "-showcerts", "-connect", target)),
        Case("python (floor)", (py, "-c", "pass")),
        Case("fetch_chain", (py, "-c", fetch)),
        Case("fetch + analyze", (py, "-c", analyze)),
        Case("cli fetch", (py, "-m", "agent", "fetch", target)),
        *(
            [Case("fetch_chain via proxy", (py, "-c", _via(proxy_url)))]
            if proxy_url is not None
            else []
        ),
    ]


def _via(proxy_url: str) -> str:
    return (
        "from agent.node.chain import fetch_chain; from agent.core.hostport import HostPort; "
        f"fetch_chain(HostPort({PROXIED!r}, 443), proxy={proxy_url!r})"
    )


def in_process(port: int, proxy_url: str, n: int) -> dict[str, float]:
    """Median seconds of one `fetch_chain` in a warm process, direct and through the proxy:
    the added time of the proxy path without the interpreter's start-up around it. The lab
    proxy answers the client's handshake before it connects upstream (its leaf is made on
    first use), so this is the CONNECT round trip itself; a proxy that dials the registry
    first adds that connection's time."""
    from agent.core.hostport import HostPort
    from agent.node.chain import fetch_chain

    def timed(call: object) -> float:
        start = time.perf_counter()
        call()  # type: ignore[operator]
        return time.perf_counter() - start

    def direct() -> object:
        return fetch_chain(HostPort("127.0.0.1", port), proxy=None)

    def via() -> object:
        return fetch_chain(HostPort(PROXIED, 443), proxy=proxy_url)

    direct(), via()  # warm-up: imports, the proxy's first leaf for the name
    times: dict[str, list[float]] = {"direct": [], "via proxy": []}
    for _ in range(n):
        times["direct"].append(timed(direct))
        times["via proxy"].append(timed(via))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(all_cases: Sequence[Case], n: int) -> list[Result]:
    env = _env()
    failed: dict[str, str] = {}
    for case in all_cases:  # warm-up, and find out which commands work at all
        _, done = _run(case.argv, env)
        if done.returncode != 0:
            failed[case.name] = (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
    times: dict[str, list[float]] = {c.name: [] for c in all_cases}
    for _ in range(n):
        for case in all_cases:
            if case.name not in failed:
                times[case.name].append(_run(case.argv, env)[0])
    return [Result(c, tuple(times[c.name]), failed.get(c.name)) for c in all_cases]


def table(results: Sequence[Result]) -> str:
    ref = next((r for r in results if r.case.name == "openssl s_client" and r.seconds), None)
    lines = [f"{'command':<22} {'median ms':>10} {'p90 ms':>8} {'x openssl':>10}"]
    for r in results:
        if r.failed is not None:
            lines.append(f"{r.case.name:<22} {'failed':>10}   {r.failed.splitlines()[-1][:60]}")
            continue
        ratio = f"{r.median / ref.median:.2f}" if ref else "-"
        lines.append(f"{r.case.name:<22} {r.median * 1000:>10.1f} {r.p90 * 1000:>8.1f} {ratio:>10}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs per command (default 20)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        pki = make_pki(tmp, names=("localhost",), ips=("127.0.0.1",))
        with TLSServer(pki.chain, pki.leaf) as server:
            proxy = intercepting(Path(tmp) / "proxy", pki, server.port)
            try:
                results = measure(cases(server.port, proxy.url), args.n)
                warm = in_process(server.port, proxy.url, max(args.n, 50))
            finally:
                proxy.stop()
    print(f"N={args.n} runs each, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(table(results))
    print(
        f"in one process, median of {max(args.n, 50)}: fetch_chain direct "
        f"{warm['direct'] * 1000:.1f} ms, through the intercepting proxy "
        f"{warm['via proxy'] * 1000:.1f} ms ({(warm['via proxy'] - warm['direct']) * 1000:+.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
