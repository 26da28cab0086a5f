"""recyclePods: how soon a failing pod's replacement exists once its registry is trusted.

Against the fake API server, with a real TLS registry stand-in and the real engine on a
host-root tree (registry scope). Per run: a new registry endpoint (a new TLS server port), a
pod owned by a ReplicaSet that failed to pull from it with x509, `recyclePods: true`. The
agent trusts the CA, evicts the pod through `pods/NAME/eviction`, and a tiny ReplicaSet
controller in this process (a watch on the pods) creates the replacement when it sees the
pod deleted. Measured:

- CATrusted -> replacement created: from the moment the fake receives the POST of the pod's
  `CATrusted` Event to the moment the replacement's create returns. The Event is written by
  the recorder's own thread and the eviction by the recycler's, so either may reach the API
  first: a negative value means the replacement existed before the Event did.
- failure -> replacement created: from storing the failing pod (what kubelet does) to the
  replacement, i.e. detection + fetch + install + verify + eviction + the controller.

Runs are half a second apart so each eviction finds a token in the rate limiter (default
burst 10, then 2/s); back to back, runs past the tenth would measure the pacing instead.

For comparison, what the pod would wait without recycling: kubelet retries a failed pull
after 10 s, doubling to a 300 s cap (measured on kubelet 1.35: about +11-13 s, +25 s,
+41-52 s, +85-90 s); a CA trusted at a random moment of a wait of B seconds leaves B/2 on
average and B at most.

    .venv/bin/python -m bench.bench_recycle [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import logging
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

from kubernetes.client import Configuration  # noqa: E402

from agent.cluster.client import ApiError, KubeClient, RetryPolicy, resource_path  # noqa: E402
from agent.cluster.daemon import Agent  # noqa: E402
from agent.cluster.evict import EVICTED, Eviction, Recycler  # noqa: E402
from agent.core.recycle import DEFAULT_LIMITS, FailingPod, Owner, kubelet_backoff_steps  # noqa: E402
from agent.node.engine import Engine  # noqa: E402
from agent.node.host import DirectRunner, HostFS  # noqa: E402
from bench import percentile  # noqa: E402
from bench.bench_daemon import (  # noqa: E402
    NODE,
    NS,
    TimedApi,
    agent_user_agent,
    drop_proxy_and_trust_env,
    failing_pod,
    host_root,
    kube_client,
    opted_in_node,
    policy,
    running_agent,
)
from lab.tls.pki import make_pki  # noqa: E402
from lab.tls.servers import TLSServer  # noqa: E402

JSON = dict[str, Any]
Rows = list[tuple[str, str, str, str]]
SECTION = "recycle"
RECYCLE_LOOPBACK = 'recyclePods: true\nregistries:\n  - host: "127.0.0.1"\n'
TIMEOUT = 15.0


class ReplicaSetController:
    """Just enough of a ReplicaSet controller: when an owned pod is deleted, create a
    replacement (`<name>-r`, same owner) and note when that create returned."""

    def __init__(self, url: str) -> None:
        self.client = kube_client(url, "bench/replicaset-controller")
        self.created: dict[str, float] = {}  # evicted pod name -> replacement created at
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="fake-rs", daemon=True)

    def start(self) -> ReplicaSetController:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        self._thread.join(5)
        self.client.close()

    def created_at(self, name: str) -> float | None:
        with self._lock:
            return self.created.get(name)

    def _run(self) -> None:
        path = resource_path("v1", "pods", "shop")
        _, rv = self.client.list_all(path)
        while not self._stop.is_set():
            try:
                self._stream = self.client.watch_lines(path, resource_version=rv)
                for event in self._stream:
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if event.get("type") == "DELETED":
                        self._replace(obj)
            except ApiError:
                if not self._stop.is_set():
                    time.sleep(0.05)

    def _replace(self, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
        if not owners or owners[0].get("kind") != "ReplicaSet":
            return
        replacement = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-r",
                "namespace": meta["namespace"],
                "ownerReferences": owners,
            },
            "spec": pod.get("spec") or {},
        }
        self.client.create(resource_path("v1", "pods", meta["namespace"]), replacement)
        with self._lock:
            self.created[meta["name"]] = time.perf_counter()


def owned(pod: JSON, run: int) -> JSON:
    pod["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": f"web-{run}-7d9f",
            "uid": f"rs-{run}",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return pod


def _wait(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(0.001)
    return None


def measure(runs: int) -> tuple[list[float], list[float], int]:
    """(CATrusted -> replacement, failure -> replacement, runs that timed out)."""
    after_event: list[float] = []
    end_to_end: list[float] = []
    missed = 0
    drop_proxy_and_trust_env()
    # the Node's Events share one spam-filter bucket that many remediations in a row exhaust
    logging.getLogger("agent.cluster.events").setLevel(logging.ERROR)
    api = TimedApi()
    with tempfile.TemporaryDirectory(prefix="bench-recycle-") as tmp, api:
        ca = make_pki(Path(tmp) / "pki", names=("registry.test",), ips=("127.0.0.1",))
        root = host_root(Path(tmp) / "host")
        api.put_object(opted_in_node(NODE))
        api.put_object(policy(RECYCLE_LOOPBACK))
        engine = Engine(HostFS(str(root)), DirectRunner())
        config = Configuration()
        config.host = api.url
        # as `run` wires it: one attempt per eviction, the recycler owns the retries
        evict_client = KubeClient(
            config, retry=RetryPolicy(attempts=1), user_agent=agent_user_agent(NODE)
        )
        agent = Agent(
            kube_client(api.url, agent_user_agent(NODE)),
            NODE,
            NS,
            engine,
            reconcile_seconds=3600,
            evict_client=evict_client,
        )
        rs = ReplicaSetController(api.url).start()
        try:
            with running_agent(agent):
                for i in range(runs + 1):
                    name = f"web-{i}"
                    with TLSServer(ca.chain, ca.leaf) as server:  # a new endpoint every run
                        pod = owned(failing_pod(name, NODE, f"127.0.0.1:{server.port}"), i)
                        start = time.perf_counter()
                        api.put_object(pod)
                        created = _wait(lambda n=name: rs.created_at(n), TIMEOUT)
                        trusted = _wait(
                            lambda n=name: api.event_arrival("CATrusted", "Pod", n), TIMEOUT
                        )
                    # one eviction token back (default 2/s): each run measures an unpaced
                    # remediation, not the rate limit (burst 10) that 20 runs in a row hit
                    time.sleep(1.0 / DEFAULT_LIMITS.per_second)
                    if created is None or trusted is None:
                        missed += 1
                    elif i > 0:  # run 0 warms up imports and connections
                        after_event.append(created - trusted)
                        end_to_end.append(created - start)
        finally:
            rs.stop()
            evict_client.close()
    return after_event, end_to_end, missed


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pacing_rows(pods: int = 60) -> Rows:
    """The default limits on a big pass, on a simulated clock: when the cap-th eviction
    happens, and what is left to kubelet."""
    clock = _Clock()
    evicted_at: list[float] = []

    def evict(namespace: str, name: str, uid: str) -> Eviction:
        evicted_at.append(clock.now)
        return Eviction(EVICTED)

    class _Quiet:
        def node(self, node_name: str, type: str, reason: str, message: str) -> None:
            pass

        def pod(self, namespace: str, name: str, uid: str, type: str, r: str, m: str) -> None:
            pass

    recycler = Recycler(node_name=NODE, evict=evict, recorder=_Quiet(), clock=clock)
    owner = Owner("ReplicaSet", "web", "rs")
    recycler.recycle(
        "r:443",
        [FailingPod("shop", f"p{i}", f"u{i}", owner, frozenset({"r:443"})) for i in range(pods)],
    )
    while (delay := recycler.run_due()) is not None:
        clock.now += delay
    limits = DEFAULT_LIMITS
    return [
        (
            SECTION,
            f"{pods} failing pods, one registry: evicted / last at (simulated clock)",
            f"{len(evicted_at)} / +{evicted_at[-1]:.1f} s",
            f"cap {limits.cap}; burst {limits.burst}, then {limits.per_second:g}/s",
        )
    ]


def kubelet_rows() -> Rows:
    rows: Rows = []
    for step, wait in enumerate(kubelet_backoff_steps(), start=1):
        rows.append(
            (
                SECTION,
                f"without recycling, back-off wait {step} ({wait:.0f} s): mean / max left",
                f"{wait / 2:.0f} s / {wait:.0f} s",
                "-",
            )
        )
    return rows


def run(quick: bool, runs: int | None = None) -> Rows:
    """The section's rows: (section, metric, value, target)."""
    n = runs or (5 if quick else 20)
    after_event, end_to_end, missed = measure(n)
    rows: Rows = []
    if after_event:
        k = len(after_event)
        rows += [
            (
                SECTION,
                f"CATrusted -> replacement created: p50 (N={k})",
                _ms(percentile(after_event, 50)),
                "< kubelet back-off (10-300 s)",
            ),
            (SECTION, "CATrusted -> replacement created: max", _ms(max(after_event)), "-"),
            (
                SECTION,
                f"failure -> replacement created: p50 (N={k})",
                _ms(percentile(end_to_end, 50)),
                "-",
            ),
            (SECTION, "failure -> replacement created: max", _ms(max(end_to_end)), "-"),
        ]
    else:
        rows.append((SECTION, "replacements", f"none created ({missed} timed out)", "-"))
    if missed and after_event:
        rows.append((SECTION, f"runs with no replacement within {TIMEOUT:.0f} s", str(missed), "0"))
    return rows + pacing_rows() + kubelet_rows()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs instead of 20")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args(argv)
    rows = run(args.quick, args.runs)
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for section, metric, value, target in rows:
        print(f"{section:<{widths[0]}}  {metric:<{widths[1]}}  {value:>{widths[2]}}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
