"""Install latency per scope, split into the engine's own steps.

Not a test: prints numbers, asserts nothing.

- registry scope: the real engine on a host-root tree (containerd with config_path) against
  a real TLS server on loopback; each round installs then removes. The number that matters
  is "ours" = install total minus the TLS fetch (target < 50 ms).
- system scope (only inside a private mount namespace, as `scripts/bench` runs it): the real
  `update-ca-certificates` over tmpfs copies of the trust directories, with the restart
  step done by a command that does nothing, so the row shows our overhead around the
  refresh. The real containerd restart is timed by bench/bench_lab.py.

    .venv/bin/python bench/bench_install.py [-n 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.core.hostport import HostPort  # noqa: E402
from agent.node.engine import Engine, InstallRequest  # noqa: E402
from agent.node.host import DirectRunner, HostFS  # noqa: E402
from agent.node.runtimes import RestartMethod, RuntimeManager  # noqa: E402
from lab.fakes.hostroot import node_root  # noqa: E402
from lab.tls.pki import make_pki  # noqa: E402
from lab.tls.servers import TLSServer  # noqa: E402


class _NoWaitManager(RuntimeManager):
    """Runs the configured restart command but has no daemon to wait for."""

    def restart(self, runtime: str, *, timeout: float = 60.0) -> float:
        t0 = time.perf_counter()
        self.runner.run([a.replace("{runtime}", runtime) for a in self.method.command])
        return time.perf_counter() - t0


def _ms(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    ordered = sorted(xs)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(xs) * 1000:8.1f} {p90 * 1000:8.1f}"


def registry_scope(n: int) -> list[tuple[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        ca = make_pki(Path(tmp) / "pki", names=("registry.test",), ips=("127.0.0.1",))
        root = Path(tmp) / "host"
        node_root(root)
        engine = Engine(HostFS(str(root)), DirectRunner(), runtimes=("containerd",))
        rows: dict[str, list[float]] = {
            k: [] for k in ("total", "fetch", "ours", "verify", "remove")
        }
        with TLSServer(ca.chain, ca.leaf) as server:
            target = HostPort("127.0.0.1", server.port)
            for _ in range(n + 1):
                t0 = time.perf_counter()
                result = engine.install(InstallRequest(target, scope="registry"))
                total = time.perf_counter() - t0
                t1 = time.perf_counter()
                engine.remove(target)
                removed = time.perf_counter() - t1
                if result.status != "installed":
                    raise SystemExit(f"unexpected install status {result.status}")
                rows["total"].append(total)
                rows["fetch"].append(result.timings.get("fetch", 0.0))
                rows["ours"].append(total - result.timings.get("fetch", 0.0))
                rows["verify"].append(result.timings.get("verify", 0.0))
                rows["remove"].append(removed)
        return [(f"registry scope: {k}", v[1:]) for k, v in rows.items()]  # drop the warm-up


def system_scope(n: int) -> list[tuple[str, list[float]]]:
    """Real update-ca-certificates; only in a private mount namespace over tmpfs copies."""
    from lab.isolation.sandbox import in_private_mount_namespace

    if not in_private_mount_namespace():
        return []
    from lab.isolation.sandbox import isolate_node_paths

    rows: dict[str, list[float]] = {k: [] for k in ("total", "refresh", "ours")}
    with (
        tempfile.TemporaryDirectory(prefix="bench-system-") as tmp,
        isolate_node_paths(Path(tmp) / "sandbox"),
    ):
        ca = make_pki(Path(tmp) / "pki", names=("registry.test",), ips=("127.0.0.1",))
        fs = HostFS("/")
        manager = _NoWaitManager(fs, DirectRunner(), RestartMethod("command", ("true",)))
        engine = Engine(fs, DirectRunner(), runtimes=("containerd",), manager=manager)
        with TLSServer(ca.chain, ca.leaf) as server:
            target = HostPort("127.0.0.1", server.port)
            for _ in range(max(3, n // 5) + 1):
                t0 = time.perf_counter()
                result = engine.install(InstallRequest(target, scope="system"))
                total = time.perf_counter() - t0
                engine.remove(target)
                refresh = result.timings.get("refresh", 0.0)
                rows["total"].append(total)
                rows["refresh"].append(refresh)
                rows["ours"].append(
                    total
                    - refresh
                    - result.timings.get("fetch", 0.0)
                    - sum(v for k, v in result.timings.items() if k.startswith("restart:"))
                )
    return [(f"system scope: {k}", v[1:]) for k, v in rows.items()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args(argv)
    for name in ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        os.environ.pop(name, None)
    rows = registry_scope(args.n) + system_scope(args.n)
    print(
        f"install latency, N={args.n} (system scope N={max(3, args.n // 5)}), {os.cpu_count()} CPUs"
    )
    print(f"{'step':34} {'median ms':>8} {'p90 ms':>8}")
    for name, xs in rows:
        print(f"{name:34} {_ms(xs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
