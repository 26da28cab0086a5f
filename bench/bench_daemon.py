"""The daemon's figures against the fake API server: numbers, never assertions.

1. latency  detection -> `CATrusted`: from just before the fake stores a pod whose pull failed
            with x509 to the moment the fake receives the POST of that pod's `CATrusted`
            Event. Every run uses a new registry endpoint (a new TLS server port), so each is
            a full remediation: fetch, analyze, write, verify, in registry scope on a
            host-root tree. p50/p99 over the runs (the first, a warm-up, is dropped);
            the fake's sockets get TCP_NODELAY as a real API server's have, and one more
            row shows the fake as shipped (see `_NoDelayHandler`).
2. idle     `python -m agent run` as a subprocess: RSS (VmRSS, VmHWM) and CPU (utime+stime)
            over an idle window, and whether the typed Kubernetes models got imported.
3. churn    bytes the fake sends to that agent while pods on 25 OTHER nodes are created,
            updated and deleted, against an unfiltered pod watch over the same churn; and
            the agent's RSS before and after.
4. slots    K agents (threads, each its own client and RestartSlots) all restart at once
            with maxConcurrentRestarts 1 and 2; the maximum number of restarts seen running
            at the same instant, and the total time.

    .venv/bin/python -m bench.bench_daemon [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kubernetes.client import Configuration  # noqa: E402

from agent import __version__  # noqa: E402
from agent.cluster.client import KubeClient, resource_path  # noqa: E402
from agent.cluster.daemon import Agent  # noqa: E402
from agent.cluster.lease import RestartSlots  # noqa: E402
from agent.node.engine import Engine  # noqa: E402
from agent.node.host import DirectRunner, HostFS  # noqa: E402
from bench import Row, max_overlap, mib, percentile  # noqa: E402
from lab.fakes.apiserver import (  # noqa: E402
    FakeApiServer,
    make_configmap,
    make_node,
    make_pod,
    write_kubeconfig,
)
from lab.fakes.apiserver.handler import Handler  # noqa: E402
from lab.fakes.hostroot import node_root  # noqa: E402
from lab.procs import free_port, wait_for  # noqa: E402
from lab.tls.pki import make_pki  # noqa: E402
from lab.tls.servers import TLSServer  # noqa: E402

JSON = dict[str, Any]
NS = "ca-trust-agent"
NODE = "node-a"
OTHER_NODES = tuple(f"node-{c}" for c in "bcdefghijklmnopqrstuvwxyz")
# kube-apiserver's watch cache sends a BOOKMARK about once a minute (cacher bookmarkFrequency);
# the fake's default of 1 s would make "idle" mean "woken three times a second".
APISERVER_BOOKMARK_SECONDS = 60.0
ALLOW_LOOPBACK = 'registries:\n  - host: "127.0.0.1"\n'
# Variables that would send the agent's fetch through a proxy or change its trust.
_DROP_ENV = (
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


# --- the cluster the agent sees -------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONPATH"] = str(REPO)
    return env


def drop_proxy_and_trust_env() -> None:
    """The bench process itself behaves like a node: no proxy, no trust overrides."""
    for name in _DROP_ENV:
        os.environ.pop(name, None)


def host_root(path: Path) -> Path:
    """A node's root file system: containerd reading certs.d (registry scope), Debian."""
    node_root(path)
    return path


def opted_in_node(name: str) -> JSON:
    return make_node(
        name,
        annotations={"ca-trust-agent.io/remediate": "enabled"},
        runtime="containerd://1.6.20",
    )


def policy(text: str) -> JSON:
    return make_configmap("ca-trust-agent", {"policy.yaml": text}, namespace=NS)


def x509_message(image: str, hostport: str) -> str:
    return (
        f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
        f'failed to do request: Head "https://{hostport}/v2/lab/tiny/manifests/v1": '
        "x509: certificate signed by unknown authority"
    )


def failing_pod(name: str, node: str, hostport: str, namespace: str = "shop") -> JSON:
    image = f"{hostport}/lab/tiny:v1"
    return make_pod(
        name,
        namespace=namespace,
        node=node,
        image=image,
        waiting_reason="ErrImagePull",
        waiting_message=x509_message(image, hostport),
    )


def kube_client(url: str, user_agent: str) -> KubeClient:
    config = Configuration()
    config.host = url
    return KubeClient(config, user_agent=user_agent)


def agent_user_agent(node: str) -> str:
    """What `ca-trust-agent run` sends (daemon.run): the fake counts bytes by it."""
    return f"ca-trust-agent/{__version__} ({node})"


class _NoDelayHandler(Handler):
    """The fake's handler with TCP_NODELAY, as Go's net (kube-apiserver) sets on every socket.

    The fake writes a response's headers and body in two send()s; without TCP_NODELAY Nagle
    holds the body until the client's delayed ACK (~40 ms on Linux), a stall per response
    that a real API server does not have and that would dominate the agent's latency."""

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BenchApi(FakeApiServer):
    """The fake API server; `nodelay=False` keeps the shipped handler (see _NoDelayHandler)."""

    def __init__(self, *, nodelay: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if nodelay:
            self._httpd.RequestHandlerClass = _NoDelayHandler


class TimedApi(BenchApi):
    """The fake, also noting when each Event POST arrived (its request log has no clock)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._posts_lock = threading.Lock()
        self._event_posts: list[tuple[float, JSON]] = []

    def handle(
        self, method: str, route: Any, query: dict[str, str], body: Any, content_type: str
    ) -> tuple[int, JSON]:
        if method == "POST" and route.kind.plural == "events" and isinstance(body, dict):
            arrived = time.perf_counter()
            with self._posts_lock:
                self._event_posts.append((arrived, body))
        result: tuple[int, JSON] = super().handle(method, route, query, body, content_type)
        return result

    def event_arrival(self, reason: str, kind: str, name: str) -> float | None:
        """perf_counter() when the first matching Event POST arrived, None if none yet."""
        with self._posts_lock:
            for arrived, body in self._event_posts:
                involved = body.get("involvedObject") or {}
                if (body.get("reason"), involved.get("kind"), involved.get("name")) == (
                    reason,
                    kind,
                    name,
                ):
                    return arrived
        return None


def _wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


@contextlib.contextmanager
def running_agent(agent: Agent, timeout: float = 20.0) -> Iterator[Agent]:
    agent.start()
    try:
        if not _wait(lambda: agent.ready().ready, timeout, 0.01):
            raise RuntimeError(f"agent not ready within {timeout}s: {agent.ready().reason}")
        yield agent
    finally:
        agent.stop()
        agent.join()


# --- 1. detection -> CATrusted ---------------------------------------------------------------


def detection_latency(runs: int, *, nodelay: bool = True) -> list[Row]:
    latencies, missed, node_trusted = remediation_latencies(runs, nodelay=nodelay)
    section = "detect->CATrusted"
    if not latencies:
        return [Row(section, "remediations", f"none completed ({missed} timed out)")]
    n = len(latencies)
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    if not nodelay:
        return [Row(section, f"p50 / p99, the fake as shipped (no TCP_NODELAY), N={n}",
                    f"{p50:.0f} ms / {p99:.0f} ms")]
    rows = [
        Row(section, f"p50 over {n} new endpoints (registry scope)", f"{p50:.0f} ms",
            "<= 250 ms"),
        Row(section, f"p99 over {n} new endpoints", f"{p99:.0f} ms", "<= 1 s"),
        Row(section, "max", f"{max(latencies) * 1000:.0f} ms"),
    ]
    if missed:
        rows.append(Row(section, "runs with no CATrusted within 15 s", str(missed), "0"))
    rows.append(Row(section, "node CATrusted Events written (rest spam-filtered)",
                    f"{node_trusted} of {runs + 1}"))
    return rows


def remediation_latencies(runs: int, *, nodelay: bool) -> tuple[list[float], int, int]:
    """(seconds from pod status to its CATrusted Event per run, runs that timed out, node
    CATrusted Events written)."""
    latencies: list[float] = []
    missed = 0
    api = TimedApi(nodelay=nodelay)  # bound here: `with` would type it as the base class
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, api:
        ca = make_pki(Path(tmp) / "pki", names=("registry.test",), ips=("127.0.0.1",))
        root = host_root(Path(tmp) / "host")
        api.put_object(opted_in_node(NODE))
        api.put_object(policy(ALLOW_LOOPBACK))
        engine = Engine(HostFS(str(root)), DirectRunner())
        agent = Agent(
            kube_client(api.url, agent_user_agent(NODE)), NODE, NS, engine, reconcile_seconds=3600
        )
        with running_agent(agent):
            for i in range(runs + 1):
                name = f"web-{i}"
                with TLSServer(ca.chain, ca.leaf) as server:  # a new endpoint every run
                    pod = failing_pod(name, NODE, f"127.0.0.1:{server.port}")
                    start = time.perf_counter()
                    api.put_object(pod)
                    # the pod's Event: the node's own Events share one spam-filter bucket
                    # (burst 25) that 50 remediations in a row exhaust on purpose
                    arrived = _wait(partial(api.event_arrival, "CATrusted", "Pod", name), 15)
                if arrived is None:
                    missed += 1
                elif i > 0:  # run 0 warms up imports and connections
                    latencies.append(arrived - start)
        node_trusted = sum(
            1 for e in api.objects("events")
            if e.get("reason") == "CATrusted" and e["involvedObject"].get("kind") == "Node"
        )
    return latencies, missed, node_trusted


# --- 2 and 3. the `run` subprocess: idle footprint, then other nodes' churn -------------------

_WRAPPER = """\
import json, os, signal, sys

def _dump(_signum, _frame):
    names = list(sys.modules)
    info = {
        "models": sum(1 for m in names if m.startswith("kubernetes.client.models.")),
        "typed_api": sum(1 for m in names if m.startswith("kubernetes.client.api.")),
        "modules": len(names),
    }
    with open(os.environ["BENCH_MODULES_OUT"], "w") as out:
        json.dump(info, out)

signal.signal(signal.SIGUSR1, _dump)
from agent.cli import main
sys.exit(main())
"""

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class AgentProcess:
    """`python -m agent run` (through a wrapper that reports its imports on SIGUSR1)."""

    def __init__(self, tmp: Path, api_url: str, node: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        wrapper = tmp / "run_agent.py"
        wrapper.write_text(_WRAPPER)
        self.modules_out = tmp / "modules.json"
        self.log = tmp / "agent.log"
        argv = [
            sys.executable, str(wrapper), "run",
            "--kubeconfig", str(write_kubeconfig(tmp / "kubeconfig", api_url)),
            "--host-root", str(host_root(tmp / "host")),
            "--runner", "direct",
            "--namespace", NS,
            "--metrics-address", f"127.0.0.1:{self.port}",
        ]
        env = {**clean_environ(), "NODE_NAME": node, "BENCH_MODULES_OUT": str(self.modules_out)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=log)
        self.pid = self.proc.pid

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not wait_for(lambda: self.ready() or self.proc.poll() is not None, timeout, 0.05):
            raise RuntimeError(f"agent not ready in {timeout}s: {self.tail()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent exited {self.proc.returncode}: {self.tail()}")

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def loaded_modules(self, timeout: float = 5.0) -> JSON | None:
        self.proc.send_signal(signal.SIGUSR1)
        if not wait_for(self.modules_out.exists, timeout, 0.05):
            return None
        time.sleep(0.05)  # the handler may still be writing
        data: JSON = json.loads(self.modules_out.read_text())
        return data

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class StreamCounter:
    """A raw pod watch WITHOUT a field selector, read and counted in a thread: the contrast."""

    def __init__(self, client: KubeClient, resource_version: str) -> None:
        self.events = 0
        self._stream = client.watch_lines(
            resource_path("v1", "pods"), resource_version=resource_version,
            timeout_seconds=3600,
        )
        self._thread = threading.Thread(target=self._read, name="unfiltered-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for event in self._stream:
                if event.get("type") != "BOOKMARK":
                    self.events += 1

    def close(self) -> None:
        self._stream.close()
        self._thread.join(timeout=5)


def churn(api: FakeApiServer, pods: int) -> float:
    """Create, then fail, then delete `pods` pods on the other nodes; returns the seconds."""
    start = time.perf_counter()
    names = [(f"churn-{i}", OTHER_NODES[i % len(OTHER_NODES)]) for i in range(pods)]
    for name, node in names:
        api.put_object(make_pod(name, namespace="churn", node=node, image="registry.test/x:1",
                                waiting_reason="ContainerCreating"))
    for name, node in names:
        api.put_object(failing_pod(name, node, "registry.test:5443", namespace="churn"))
    for name, _ in names:
        api.delete_object("pods", "churn", name)
    return time.perf_counter() - start


def idle_and_churn(idle_seconds: float, pods: int) -> list[Row]:
    idle, ch = "idle (run subprocess)", "other nodes' churn"
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp,
        BenchApi(bookmark_interval=APISERVER_BOOKMARK_SECONDS) as api,
    ):
        api.put_object(opted_in_node(NODE))
        for node in OTHER_NODES:
            api.put_object(opted_in_node(node))
        api.put_object(policy(ALLOW_LOOPBACK))
        agent = AgentProcess(Path(tmp), api.url, NODE)
        try:
            agent.wait_ready()
            time.sleep(1.0)  # let start-up work (first lists, the annotation) finish
            rss_start, cpu_start, t_start = agent.rss_kib(), agent.cpu_seconds(), time.monotonic()
            samples = [rss_start]
            while time.monotonic() - t_start < idle_seconds:
                time.sleep(min(1.0, idle_seconds))
                samples.append(agent.rss_kib())
            cpu = agent.cpu_seconds() - cpu_start
            wall = time.monotonic() - t_start
            rows += [
                Row(idle, "RSS idle (VmRSS, max of samples)", mib(max(samples) * 1024),
                    "<= 56 MiB"),
                Row(idle, "peak RSS since start (VmHWM)", mib(agent.hwm_kib() * 1024)),
                Row(idle, f"CPU over {wall:.0f} s idle (bookmarks every "
                    f"{APISERVER_BOOKMARK_SECONDS:.0f} s; one tick = "
                    f"{100 / _CLK_TCK / wall:.3f} %)",
                    f"{cpu / wall * 100:.3f} %", "<= 0.1 %"),
            ]
            modules = agent.loaded_modules()
            if modules is None:
                rows.append(Row(idle, "typed models loaded", "skipped: no answer to SIGUSR1"))
            else:
                loaded = modules["models"] or modules["typed_api"]
                rows.append(Row(
                    idle, "typed models / typed API loaded",
                    f"{'YES' if loaded else 'no'} ({modules['models']} model modules, "
                    f"{modules['typed_api']} API modules of {modules['modules']})", "no",
                ))
            rows += _churn_rows(api, agent, pods, ch)
        finally:
            code = agent.stop()
        if code not in (0, None):
            rows.append(Row(idle, "exit code after SIGTERM", str(code), "0"))
    return rows


def _churn_rows(
    api: FakeApiServer, agent: AgentProcess, pods: int, section: str
) -> list[Row]:
    ours = agent_user_agent(NODE)
    contrast_ua = "bench/unfiltered-pod-watch"
    client = kube_client(api.url, contrast_ua)
    watches_before = api.watch_count("pods")
    counter = StreamCounter(client, str(api.resource_version))
    try:
        api.wait_for_watches(watches_before + 1, "pods")
        rss_before = agent.rss_kib()
        ours_before, theirs_before = api.bytes_sent(ours), api.bytes_sent(contrast_ua)
        seconds = churn(api, pods)
        _wait(lambda: counter.events >= 3 * pods, 60, 0.05)
        time.sleep(1.5)  # the agent's filtered streams drain too
        ours_total = api.bytes_sent(ours)
        ours_bytes = ours_total - ours_before
        theirs_bytes = api.bytes_sent(contrast_ua) - theirs_before
        time.sleep(1.0)
        rss_after = agent.rss_kib()
    finally:
        counter.close()
        client.close()
    return [
        Row(section, f"{3 * pods} pod writes ({pods} pods x create/update/delete, "
            f"{len(OTHER_NODES)} nodes)", f"{seconds:.1f} s"),
        Row(section, "bytes sent to node-a's agent during the churn", f"{ours_bytes} B",
            "~0 (bookmarks only)"),
        Row(section, "  (the same counter since the agent started: lists, watches, writes)",
            f"{ours_total} B"),
        Row(section, "bytes sent to an unfiltered pod watch, same churn", f"{theirs_bytes} B",
            "contrast"),
        Row(section, "agent RSS before -> after the churn",
            f"{mib(rss_before * 1024)} -> {mib(rss_after * 1024)}", "flat"),
    ]


# --- 4. restart slots --------------------------------------------------------------------------


def restart_slots(agents: int, limits: Sequence[int], hold: float, poll: float) -> list[Row]:
    section = "restart slots"
    rows: list[Row] = []
    with BenchApi() as api:
        for limit in limits:
            intervals, errors, total = contend(api.url, f"bench-slots-{limit}", agents, limit,
                                               hold, poll)
            label = f"K={agents}, maxConcurrentRestarts={limit}"
            rows.append(Row(section, f"max simultaneous restarts, {label}",
                            str(max_overlap(intervals)), f"<= {limit}"))
            rows.append(Row(section, f"total time, {label} ({hold * 1000:.0f} ms restarts, "
                            f"poll {poll:g} s)", f"{total:.1f} s"))
            if errors:
                rows.append(Row(section, f"restarts that got no slot, {label}",
                                f"{len(errors)}: {errors[0][:60]}", "0"))
    return rows


def contend(url: str, namespace: str, agents: int, limit: int, hold: float,
            poll: float) -> tuple[list[tuple[float, float]], list[str], float]:
    """`agents` holders all restart at once; returns the restart intervals, the errors and the
    total wall time."""
    intervals: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(agents + 1)

    def one(i: int) -> None:
        client = kube_client(url, f"bench/slots ({namespace}-{i})")
        slots = RestartSlots(client, namespace, holder=f"node-{i}", max_slots=limit,
                             poll_seconds=poll, acquire_timeout=120)
        barrier.wait()
        try:
            with slots.slot("containerd"):
                began = time.monotonic()
                time.sleep(hold)  # the runtime restart
                ended = time.monotonic()
            with lock:
                intervals.append((began, ended))
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(agents)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join(timeout=180)
    return intervals, errors, time.monotonic() - start


# --- entry points --------------------------------------------------------------------------------


def section_latency(quick: bool, runs: int | None = None) -> list[Row]:
    n = runs or (10 if quick else 50)
    return detection_latency(n) + detection_latency(n, nodelay=False)


def section_idle(quick: bool, idle_seconds: float | None = None,
                 pods: int | None = None) -> list[Row]:
    return idle_and_churn(idle_seconds or (10.0 if quick else 30.0),
                          pods or (300 if quick else 2000))


def section_slots(quick: bool, agents: int | None = None) -> list[Row]:
    # quick polls faster than the agent's 5 s default so the pass stays short
    return restart_slots(agents or 5, (1, 2), hold=0.2, poll=1.0 if quick else 5.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the agents' warnings are not the output
    drop_proxy_and_trust_env()
    rows = section_latency(args.quick) + section_idle(args.quick) + section_slots(args.quick)
    for row in rows:
        print(f"{row.section:24} {row.metric:60} {row.value:>24} {row.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
