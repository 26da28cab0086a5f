"""A fleet of nodes' first-trust components in one process, against one fake API server.

Each `FleetNode` is what an agent runs for safe first trust, with the product's own classes:
its API client (its own user agent, so the fake's request log tells the nodes apart), the
trust record (`TrustRecord`) fed by its own watch (`Watcher`), the first-trust stage
(`FirstTrust`), Events (`EventRecorder`) and the node annotation
(`TrustedRegistriesAnnotation`), plus one worker thread, as the daemon has. Only the engine
is a stand-in (`AnchorView`): the anchor this node's path shows, and what it "installed",
with no host effects. A failure is handled as `Remediation` does it: `UntrustedRegistryDetected`,
the stage's decision, the install, `CATrusted` and the annotation, or the Event that says why
not.

Used by the fleet benchmark (bench/bench_fleet.py: N = 10 ... 1,000) and by the integration
tests of the record (tests/integration/cluster/test_trust_record.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.controller.interfaces import PodRef
from agent.cluster.events import EventRecorder
from agent.cluster.firsttrust import FirstTrust
from agent.cluster.nodes import TrustedRegistriesAnnotation
from agent.cluster.trustrecord import TrustRecord
from agent.cluster.watch import Watcher
from agent.core import firsttrust as ft
from agent.core.detect import PullFailure, parse_pull_error
from agent.core.hostport import parse_hostport
from agent.core.policy import Policy, parse_policy
from agent.core.remediation import InstallRequest, Result
from agent.core.trust import CertInfo

NS = "ca-trust-agent"
UA_PREFIX = "fleet-node/"


@dataclass(frozen=True)
class _Entry:
    """What the first-trust stage reads from a ledger entry."""

    sha256: str
    files: tuple[str, ...] = ()


class _NoFiles:
    def read_bytes(self, path: str) -> bytes | None:
        return None


class AnchorView:
    """The engine as first trust sees it: a dry run shows the anchor this node's path
    presents; an install "trusts" it (remembered, nothing written)."""

    def __init__(self, anchor: CertInfo) -> None:
        self.anchor = anchor
        self.held: dict[str, str] = {}  # endpoint -> sha256 installed
        self.fs = _NoFiles()

    def install(self, req: InstallRequest) -> Result:
        status = "dry-run" if req.dry_run else "installed"
        if not req.dry_run:
            self.held[req.endpoint.key] = self.anchor.sha256
        return Result(
            req.endpoint, req.registry or req.endpoint, status, req.scope, (), self.anchor,
            None, (),
        )

    def entries(self) -> dict[str, _Entry]:
        return {key: _Entry(sha) for key, sha in self.held.items()}


@dataclass
class FleetNode:
    name: str
    client: KubeClient
    record: TrustRecord
    stage: FirstTrust
    engine: AnchorView
    recorder: EventRecorder
    annotation: TrustedRegistriesAnnotation
    watcher: Watcher
    policy: Policy
    work: queue.SimpleQueue[tuple[PodRef, PullFailure] | None] = field(
        default_factory=queue.SimpleQueue
    )
    outcomes: list[str] = field(default_factory=list)  # Event reasons, in order
    trusted: threading.Event = field(default_factory=threading.Event)
    trusted_at: float | None = None  # time.monotonic() of CATrusted
    # kubelet retries a failing pull on its own (11-15 s resyncs, LAB.md): a failure the
    # record could not decide (CATrustFailed) comes back after this long; None: never
    kubelet_retry: float | None = None

    def fail(self, image: str, registry: str) -> None:
        """kubelet reports an x509 pull failure of `image` on this node."""
        message = (
            f'failed to pull and unpack image "{image}": failed to resolve reference '
            f'"{image}": failed to do request: Head "https://{registry}/v2/x/manifests/v1": '
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
        )
        failure = parse_pull_error(message, image)
        assert failure is not None
        pod = PodRef("default", f"web-{self.name}", f"uid-{self.name}")
        self.work.put((pod, failure))

    def serve(self) -> None:
        while (item := self.work.get()) is not None:
            self.handle(*item)

    def handle(self, pod: PodRef, failure: PullFailure) -> None:
        """As `Remediation.handle_failure` and `Remediation.follow` do it."""
        endpoint = failure.failing
        assert endpoint is not None
        self._report(pod, "Warning", "UntrustedRegistryDetected", f"{endpoint.key}: x509")
        req = InstallRequest(endpoint=endpoint, registry=endpoint, scope="registry")
        decision = self.stage.decide(req, self.policy, pod, failure)
        if decision.kind in (ft.PROCEED, ft.ROTATE):
            for r in decision.requests:
                self.engine.install(r)
            self._report(pod, "Normal", "CATrusted", f"Trusted {endpoint.key}")
            self.annotation.update(sorted(self.engine.held))
            self.trusted_at = time.monotonic()
            self.trusted.set()
            return
        assert decision.reason is not None
        self._report(pod, decision.reason.type, str(decision.reason), decision.message)
        if decision.kind == ft.RETRY and self.kubelet_retry is not None:
            timer = threading.Timer(self.kubelet_retry, self.work.put, ((pod, failure),))
            timer.daemon = True
            timer.start()

    def _report(self, pod: PodRef, type_: str, reason: str, message: str) -> None:
        self.outcomes.append(reason)
        self.recorder.node(self.name, type_, reason, message)
        self.recorder.pod(pod.namespace, pod.name, pod.uid, type_, reason, message)


def make_node(api_url: str, name: str, anchor: CertInfo, policy: Policy) -> FleetNode:
    config = Configuration()
    config.host = api_url
    client = KubeClient(
        config,
        retry=RetryPolicy(attempts=3, initial=0.05, max_wait=0.5),
        user_agent=UA_PREFIX + name,
    )
    record = TrustRecord(client, NS)
    engine = AnchorView(anchor)
    work: queue.SimpleQueue[tuple[PodRef, PullFailure] | None] = queue.SimpleQueue()
    stage = FirstTrust(
        record,
        engine,  # type: ignore[arg-type]  # the part of the engine first trust uses
        node_name=name,
        requeue=lambda pod, failure, key: work.put((pod, failure)),
        namespace=NS,
        clock=lambda: datetime.now(UTC),
    )
    return FleetNode(
        name=name,
        client=client,
        record=record,
        stage=stage,
        engine=engine,
        recorder=EventRecorder(client, host=name),  # synchronous: no thread per node
        annotation=TrustedRegistriesAnnotation(client, name, current=None),
        watcher=record.watcher(),
        policy=policy,
        work=work,
    )


@contextmanager
def running(nodes: list[FleetNode]) -> Iterator[list[FleetNode]]:
    """Each node's record watch and worker in threads of their own; stopped on exit."""
    threads = []
    for node in nodes:
        for target in (_pump(node), node.serve):
            t = threading.Thread(target=target, name=f"fleet-{node.name}", daemon=True)
            t.start()
            threads.append(t)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.watcher.stop()
            node.work.put(None)
        for t in threads:
            t.join(10)
        for node in nodes:
            node.client.close()


def _pump(node: FleetNode) -> Callable[[], None]:
    def pump() -> None:
        for kind, obj in node.watcher.events():
            node.stage.on_record(kind, obj)

    return pump


def policy_text(registry: str, confirmations: int = 1) -> str:
    host = parse_hostport(registry).host
    return f'confirmations: {confirmations}\nregistries:\n  - host: "{host}"\n'


def policy(registry: str, confirmations: int = 1) -> Policy:
    return parse_policy(policy_text(registry, confirmations))


def node_object(name: str) -> Mapping[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {"ca-trust-agent.io/remediate": "enabled"}},
    }


__all__ = [
    "NS", "UA_PREFIX", "AnchorView", "FleetNode", "make_node", "node_object", "policy",
    "policy_text", "running",
]
