"""`ca-trust-agent run`: wire the watches, the controller, Events, Leases and metrics.

Nothing here decides anything (that is `controller`), and nothing here parses flags (that
is `cli`). Threads: one per watch (own Node, policy ConfigMap, Pods on this node, and the
caFrom sources the policy names: `casources`), one
worker, one jittered reconcile timer, the metrics server. SIGTERM stops them all.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from agent import __version__
from agent.cluster.casources import CASources
from agent.cluster.client import KubeClient, RetryPolicy, resource_path
from agent.cluster.config import DaemonConfig
from agent.cluster.controller import Controller
from agent.cluster.events import EventRecorder
from agent.cluster.evict import Eviction, Recycler, evict
from agent.cluster.firsttrust import FirstTrust
from agent.cluster.lease import RestartSlots
from agent.cluster.nodes import TrustedRegistriesAnnotation
from agent.cluster.trustrecord import TrustRecord
from agent.cluster.watch import Watcher
from agent.core.errors import InputError
from agent.core.reasons import Reason
from agent.core.recycle import DEFAULT_LIMITS, Limits
from agent.metrics import Metrics, Readiness, serve
from agent.node.engine import Engine
from agent.node.wiring import build_engine

log = logging.getLogger(__name__)

POLICY_NAME = "ca-trust-agent"


class ApiCluster:
    """The controller's narrow view of the API: pod Events, the node annotation, and
    evictions for recyclePods."""

    def __init__(
        self, client: KubeClient, node_name: str, *, evict_client: KubeClient | None = None
    ) -> None:
        self.client = client
        # A client that does not retry a 429 in place: the Recycler schedules the retries of
        # a refused eviction itself (agent.cluster.evict).
        self.evict_client = evict_client or client
        # remembers the last value written, so an unchanged list sends no PATCH
        self._annotation = TrustedRegistriesAnnotation(client, node_name)

    def pod_events(self, namespace: str, uid: str) -> list[Mapping[str, Any]]:
        # resourceVersion=0: served from the apiserver's watch cache, not a quorum read
        # from etcd for every lookup (a failing workload of 1,000 pods is 1,000 lookups)
        page = self.client.list(
            resource_path("v1", "events", namespace),
            field_selector=f"involvedObject.uid={uid}",
            resource_version="0",
        )
        return list(page.get("items") or [])

    def set_trusted_registries(self, node_name: str, keys: Sequence[str]) -> None:
        self._annotation.update(keys)

    def evict(self, namespace: str, name: str, uid: str) -> Eviction:
        return evict(self.evict_client, namespace, name, uid=uid)


class Agent:
    """The running agent; `start()` then `wait()`, or `stop()` from anywhere."""

    def __init__(
        self,
        client: KubeClient,
        node_name: str,
        namespace: str,
        engine: Engine,
        *,
        metrics: Metrics | None = None,
        reconcile_seconds: float = 300.0,
        explicit_runtimes: bool = False,
        evict_client: KubeClient | None = None,
        recycle_limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.namespace = namespace
        self.metrics = metrics or Metrics()
        self.recorder = EventRecorder(
            client, host=node_name, on_drop=self.metrics.record_event_dropped, queue_size=256
        )
        self.engine = engine
        cluster = ApiCluster(client, node_name, evict_client=evict_client)
        # recyclePods: idle unless the policy turns it on; its own thread (PDB retries). It
        # asks the controller (built next, before any thread starts) about the pods.
        self.recycler = Recycler(
            node_name=node_name,
            evict=cluster.evict,
            recorder=self.recorder,
            still_failing=lambda uid, ep: self.controller.still_failing(uid, ep),  # noqa: PLW0108
            enabled=lambda: self.controller.recycling_enabled(),  # noqa: PLW0108
            metrics=self.metrics,
            limits=recycle_limits,
        )
        self.controller = Controller(
            node_name,
            engine,
            self.recorder,
            cluster,
            metrics=self.metrics,
            recycler=self.recycler,
        )
        # safe first trust: a fetched anchor is installed only as the cluster's record allows;
        # its watch side hands waiting pods back to the controller's queue (`requeue`)
        self.trust_record = TrustRecord(client, namespace)
        self.first_trust = FirstTrust(
            self.trust_record,
            engine,
            node_name=node_name,
            requeue=self.controller.requeue,
            namespace=namespace,
            policy_name=POLICY_NAME,
            conflicts=self.metrics,
            clock=self.controller.clock,
        )
        self.controller.first_trust = self.first_trust
        self.slots = RestartSlots(client, namespace, holder=node_name)
        engine.set_restart_gate(self._restart_gate)
        self.reconcile_seconds = reconcile_seconds
        self.explicit_runtimes = explicit_runtimes
        self.stopping = threading.Event()
        self.watchers = {
            "node": Watcher(
                client,
                resource_path("v1", "nodes"),
                field_selector=f"metadata.name={node_name}",
                on_restart=lambda r: self.metrics.record_watch_restart("node", r),
            ),
            "policy": Watcher(
                client,
                resource_path("v1", "configmaps", namespace),
                field_selector=f"metadata.name={POLICY_NAME}",
                on_restart=lambda r: self.metrics.record_watch_restart("policy", r),
            ),
            "record": self.trust_record.watcher(
                on_restart=lambda r: self.metrics.record_watch_restart("record", r),
            ),
            "pods": Watcher(
                client,
                resource_path("v1", "pods"),
                field_selector=f"spec.nodeName={node_name}",
                on_restart=lambda r: self.metrics.record_watch_restart("pods", r),
            ),
        }
        # caFrom: ConfigMap / ClusterTrustBundle watches, only for the kinds the policy names
        self.sources = CASources(
            client,
            namespace,
            self.controller.on_ca_sources,
            on_restart=self.metrics.record_watch_restart,
        )
        self.metrics.bind_state(
            ready=lambda: self.ready().ready, opted_in=lambda: self.controller.opted_in
        )
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        log.info(
            "ca-trust-agent starting on node %s (namespace %s, host root %s)",
            self.node_name,
            self.namespace,
            self.engine.fs.root,
        )
        handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "node": self._on_node,
            "policy": self._on_policy,
            "pods": self._on_pod,
            "record": self.first_trust.on_record,
        }
        # The node, the policy and the trust record first: a pod failure is judged by them.
        for name in ("node", "policy", "record", "pods"):
            self._spawn(f"watch-{name}", self._pump, name, handlers[name])
        self._spawn("worker", self.controller.work, self.stopping)
        self._spawn("recycler", self.recycler.serve, self.stopping)
        self._spawn("reconcile", self._reconcile_timer)

    def ready(self) -> Readiness:
        pending = [n for n, w in self.watchers.items() if not w.synced.is_set()]
        if pending:
            return Readiness(False, "waiting for the first list of " + ", ".join(pending))
        return Readiness(True, "ok")

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        log.info("stopping")
        self.stopping.set()
        for w in self.watchers.values():
            w.stop()
        self.sources.stop()
        self.controller.stop()
        self.recycler.wake()

    def wait(self, timeout: float | None = None) -> None:
        self.stopping.wait(timeout)

    def join(self, timeout: float = 10.0) -> None:
        for t in self._threads:
            t.join(timeout)
        self.sources.join(timeout)
        self.recorder.close()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # --------------------------------------------------------------- watches

    def _pump(self, name: str, handler: Callable[[str, dict[str, Any]], None]) -> None:
        watcher = self.watchers[name]
        for kind, obj in watcher.events():
            try:
                handler(kind, obj)
            except Exception:  # one bad object never stops a watch
                log.exception("handling %s %s failed", name, kind)

    def _on_node(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.controller.on_node(None)
            return
        self.controller.on_node(obj)
        runtime = self.controller.runtime
        if runtime and not self.explicit_runtimes and self.engine.runtimes != (runtime,):
            info = obj.get("status", {}).get("nodeInfo", {}) if isinstance(obj, dict) else {}
            version = info.get("containerRuntimeVersion", "") if isinstance(info, dict) else ""
            log.info("container runtime from the Node object: %s", version or runtime)
            self.engine.use_runtimes((runtime,), version=str(version))

    def _on_policy(self, kind: str, obj: dict[str, Any]) -> None:
        self.controller.on_policy(None if kind == "DELETED" else obj)
        if not self.stopping.is_set():
            self.sources.configure(self.controller.policy.sources())

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.controller.on_pod_deleted(obj)
        else:
            self.controller.on_pod(obj)

    def _reconcile_timer(self) -> None:
        # The first tick after a random fraction of the period, so a DaemonSet rollout does
        # not make every node reconcile at once (kured's delaytick).
        delay = random.uniform(0.1, 1.0) * self.reconcile_seconds
        while not self.stopping.wait(delay):
            self.controller.request_reconcile()
            delay = self.reconcile_seconds * random.uniform(0.8, 1.2)

    # ------------------------------------------------------------ restarts

    @contextmanager
    def _restart_gate(self, runtime: str) -> Iterator[None]:
        """A runtime restart holds one of maxConcurrentRestarts cluster-wide Lease slots."""
        max_slots = self.controller.policy.max_concurrent_restarts
        self.slots.max_slots = max_slots

        def on_wait(holders: tuple[str, ...]) -> None:
            held = f" (held by {', '.join(holders)})" if holders else ""
            self.recorder.node(
                self.node_name,
                Reason.CONTAINER_RUNTIME_RESTART_DEFERRED.type,
                Reason.CONTAINER_RUNTIME_RESTART_DEFERRED,
                f"Waiting for one of {max_slots} cluster-wide restart slot(s){held} before "
                f"restarting {runtime}",
            )

        with self.slots.slot(runtime, on_wait=on_wait):
            yield


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise InputError(f"--metrics-address {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


class MetricsAddressError(InputError):
    """The metrics endpoint cannot listen where it was told to (port in use, no such
    address): exit 2, with the address and the system's reason in one line."""

    def __init__(self, address: str, exc: OSError) -> None:
        why = exc.strerror or str(exc)
        super().__init__(
            f"cannot serve metrics on {address}: {why.lower()}; is another agent or exporter "
            "listening there? Choose another with --metrics-address HOST:PORT",
            "metrics-address",
        )


def run(config: DaemonConfig) -> int:
    """The composition root: everything the agent runs is built here, from `config`."""
    if not config.node_name:
        raise InputError("no node name: set NODE_NAME (downward API spec.nodeName) or --node-name")
    engine = build_engine(config.engine)
    # the node in the User-Agent: API audit logs then say which agent did what
    user_agent = f"ca-trust-agent/{__version__} ({config.node_name})"
    client = KubeClient.from_config(config.kubeconfig, user_agent=user_agent)
    # evictions: one attempt per call, the Recycler owns the retry schedule
    evict_client = KubeClient.from_config(
        config.kubeconfig, user_agent=user_agent, retry=RetryPolicy(attempts=1)
    )
    metrics = Metrics()
    agent = Agent(
        client,
        config.node_name,
        config.namespace,
        engine,
        metrics=metrics,
        reconcile_seconds=config.reconcile_seconds,
        explicit_runtimes=config.explicit_runtimes,
        evict_client=evict_client,
    )
    host, port = _address(config.metrics_address)
    try:
        server = serve(metrics, host=host, port=port, readiness=agent.ready)
    except OSError as exc:
        # e.g. a second agent, or another exporter on the host network: one clear line
        # and a non-zero exit (kubelet shows it as the container's last words)
        client.close()
        evict_client.close()
        raise MetricsAddressError(config.metrics_address, exc) from None

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    try:
        while not agent.stopping.is_set():
            agent.wait(1.0)
    finally:
        agent.stop()
        agent.join()
        server.stop()
        client.close()
        evict_client.close()
    return 0


__all__ = ["Agent", "ApiCluster", "run"]
