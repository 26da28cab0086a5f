"""Prometheus metrics and the agent's small HTTP endpoint: /metrics, /healthz, /readyz.

The collectors live in a private `CollectorRegistry`: the global one would also export
whatever any imported library registers, and two `Metrics` in one process (tests) would
collide on names. The client library's standard process, platform and GC collectors are
added to it explicitly (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
`process_start_time_seconds`, `python_info`, `python_gc_*`): the usual dashboards, and the
agent's footprint target, read those off a running pod.

The server is the standard library's `ThreadingHTTPServer` in a daemon thread: three paths do
not justify a web framework, and a daemon thread never keeps a stopping agent alive.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

NAMESPACE = "ca_trust_agent"
# The DaemonSet's container port named `metrics` must equal this (tests/unit/test_manifests.py).
DEFAULT_PORT = 9402
# Inside a pod the probes come from the kubelet on the node, so loopback is not enough.
DEFAULT_ADDRESS = "0.0.0.0"  # noqa: S104

# A remediation spans a TLS fetch (sub-second) up to a runtime restart and its readiness wait
# (seconds to a minute); the buckets cover both ends.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Readiness:
    """What the readiness callable answers: ready or not, and why not."""

    ready: bool
    reason: str = ""


ReadinessCheck = Callable[[], Readiness]


def always_ready() -> Readiness:
    return Readiness(True, "ok")


class Metrics:
    """The registry and every collector the agent exports, named once here."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # what every exporter has: /proc/self (memory, CPU, fds, start time), the
        # interpreter's version and its garbage collector
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.remediations = Counter(
            "remediations",
            "Remediation attempts by result (trusted, dry-run, not-allowed, failed, ...).",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.remediation_duration = Histogram(
            "remediation_duration_seconds",
            "Wall time of one remediation, from fetch to verified install or rollback.",
            namespace=NAMESPACE,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.trusted_cas = Gauge(
            "trusted_cas",
            "CA anchors this agent currently has installed on the node (ledger entries).",
            namespace=NAMESPACE,
            registry=r,
        )
        self.ca_not_after = Gauge(
            "ca_not_after_timestamp_seconds",
            "notAfter of the installed anchor per endpoint, as a Unix timestamp.",
            ["endpoint"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.runtime_restarts = Counter(
            "runtime_restarts",
            "Container runtime restarts by runtime and result.",
            ["runtime", "result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.watch_restarts = Counter(
            "watch_restarts",
            "Kubernetes watches restarted, by resource and reason (expired, error, timeout).",
            ["resource", "reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.events_dropped = Counter(
            "events_dropped",
            "Kubernetes Events not written (rate limit or API error); remediation went on.",
            namespace=NAMESPACE,
            registry=r,
        )
        # safe first trust: a node was shown another anchor than the cluster's record holds
        # (an attacker on its path, or a rotation awaiting approval); labelled by registry,
        # which the policy bounds (default deny)
        self.trust_conflicts = Counter(
            "trust_conflicts",
            "Fetched anchors refused because the cluster's trust record holds another one.",
            ["registry"],
            namespace=NAMESPACE,
            registry=r,
        )
        # a step that raised where no failure was expected (a bug, a broken dependency):
        # the item is retried with back-off and a CATrustFailed Event says so
        self.work_failures = Counter(
            "work_item_failures",
            "Work items (failure, sync, reconcile, repair, ...) that raised unexpectedly; "
            "each is retried with back-off.",
            ["kind"],
            namespace=NAMESPACE,
            registry=r,
        )
        # pull failures a CA cannot fix (RegistryCertificateInvalid), by diagnosis kind
        # (agent.core.diagnosis.KINDS: a fixed set, so the label stays bounded)
        self.certificate_invalid = Counter(
            "registry_certificate_invalid",
            "Pull failures on a registry certificate defect no CA can fix, by kind (expired, "
            "name-mismatch, legacy-cn, no-ip-san, ...); nothing was installed.",
            ["kind"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.pods_recycled = Counter(
            "pods_recycled",
            "Failing pods handled by recyclePods after a fix, by result (evicted, refused, "
            "gone, recovered, gave-up, error, bare, over-cap, cooling, retry, cancelled).",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        # Read at scrape time from the running agent (`bind_state`): the alert "agent not
        # ready on an opted-in node" needs both, and a not-ready agent still serves /metrics.
        self.ready = Gauge(
            "ready",
            "1 when the agent's watches have listed (what /readyz answers), else 0.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.node_opted_in = Gauge(
            "node_opted_in",
            "1 when this agent's Node carries ca-trust-agent.io/remediate=enabled, else 0.",
            namespace=NAMESPACE,
            registry=r,
        )
        # Series that are set, not only incremented, are replaced as a whole under this lock
        # so a scrape never sees a half-updated set of endpoints.
        self._lock = threading.Lock()
        self._endpoints: set[str] = set()

    def bind_state(self, *, ready: Callable[[], bool], opted_in: Callable[[], bool]) -> None:
        """Export the agent's readiness and the node's opt-in, asked at every scrape."""
        self.ready.set_function(lambda: float(ready()))
        self.node_opted_in.set_function(lambda: float(opted_in()))

    def record_remediation(self, result: str, duration_seconds: float) -> None:
        self.remediations.labels(result=result).inc()
        self.remediation_duration.observe(duration_seconds)

    def record_runtime_restart(self, runtime: str, result: str) -> None:
        self.runtime_restarts.labels(runtime=runtime, result=result).inc()

    def record_watch_restart(self, resource: str, reason: str) -> None:
        self.watch_restarts.labels(resource=resource, reason=reason).inc()

    def record_pod_recycled(self, result: str) -> None:
        self.pods_recycled.labels(result=result).inc()

    def record_work_failure(self, kind: str) -> None:
        self.work_failures.labels(kind=kind).inc()

    def record_diagnosis(self, kind: str) -> None:
        self.certificate_invalid.labels(kind=kind).inc()

    def record_trust_conflict(self, registry: str) -> None:
        self.trust_conflicts.labels(registry=registry).inc()

    def record_event_dropped(self, reason: str = "") -> None:
        """Count a dropped Event. `reason` (rate-limited, api-error, ...) is accepted so this
        fits EventRecorder's on_drop callback; it is logged there, not a label here."""
        self.events_dropped.inc()

    def set_trusted(self, not_after: Mapping[str, datetime]) -> None:
        """Mirror the ledger: one notAfter series per endpoint, stale endpoints dropped.

        Called with the whole ledger after every change, so a removed CA stops being
        exported instead of lingering until the pod restarts.
        """
        with self._lock:
            for gone in self._endpoints - not_after.keys():
                self.ca_not_after.remove(gone)
            for endpoint, when in not_after.items():
                self.ca_not_after.labels(endpoint=endpoint).set(when.timestamp())
            self._endpoints = set(not_after)
            self.trusted_cas.set(len(not_after))


_TEXT = "text/plain; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    """Serves one request; the server object carries the registry and readiness check."""

    server: _MetricsHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "ca-trust-agent"
    sys_version = ""
    _routes: ClassVar[dict[str, str]] = {
        "/metrics": "_metrics",
        "/healthz": "_healthz",
        "/readyz": "_readyz",
    }

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        name = self._routes.get(path)
        if name is None:
            self._send(404, b"not found\n")
            return
        getattr(self, name)()

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, encoder(self.server.registry), content_type)

    def _healthz(self) -> None:
        # Answering at all is the liveness signal: the process and this thread are alive.
        self._send(200, b"ok\n")

    def _readyz(self) -> None:
        try:
            state = self.server.ready()
        except Exception as exc:  # a broken check must read as "not ready", not kill the server
            state = Readiness(False, f"readiness check failed: {exc}")
        body = ((state.reason or ("ok" if state.ready else "not ready")) + "\n").encode()
        self._send(200 if state.ready else 503, body)

    def _send(self, code: int, body: bytes, content_type: str = _TEXT) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Probes hit this every few seconds; at INFO they would drown the agent's own log.
        log.debug("%s %s", self.address_string(), format % args)


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        ready: ReadinessCheck,
        family: socket.AddressFamily,
    ) -> None:
        self.address_family = family
        self.registry = registry
        self.ready = ready
        super().__init__(address, _Handler)


@dataclass(frozen=True)
class MetricsServer:
    """Handle on a running endpoint: where it listens, and how to stop it."""

    host: str
    port: int
    _server: _MetricsHTTPServer
    _thread: threading.Thread

    def stop(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def serve(
    metrics: Metrics,
    *,
    host: str = DEFAULT_ADDRESS,
    port: int = DEFAULT_PORT,
    readiness: ReadinessCheck = always_ready,
) -> MetricsServer:
    """Start /metrics, /healthz and /readyz in a daemon thread; port 0 picks a free port.

    `host` is the bind address (an IPv4 or IPv6 literal; "0.0.0.0" for every interface).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _MetricsHTTPServer((host, port), metrics.registry, readiness, family)
    thread = threading.Thread(
        target=server.serve_forever, name="metrics-http", kwargs={"poll_interval": 0.5}, daemon=True
    )
    thread.start()
    bound_port = int(server.server_address[1])
    log.info("metrics endpoint listening", extra={"address": host, "port": bound_port})
    return MetricsServer(host=host, port=bound_port, _server=server, _thread=thread)
