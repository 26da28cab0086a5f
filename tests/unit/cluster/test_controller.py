"""The daemon's decisions, driven directly: pods in, Events and node changes out.

The engine underneath is the real one on a host-root tree; only the TLS fetch/verify and
the runtime restart are stand-ins (tests/integration/cluster/test_daemon.py runs the same flow
against the fake API server with real TLS servers).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.cluster.controller import Controller
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo, cert_from_der
from agent.node.engine import Engine
from agent.node.host import HostFS
from lab.fakes.doubles import RecordingRunner
from lab.fakes.hostroot import node_root
from lab.tls import pki

NODE = "node-a"
IMAGE = "registry.test:5443/lab/tiny:v1"
X509 = (
    f'failed to pull and unpack image "{IMAGE}": failed to resolve reference "{IMAGE}": '
    'failed to do request: Head "https://registry.test:5443/v2/lab/tiny/manifests/v1": '
    "x509: certificate signed by unknown authority"
)


@dataclass
class Recorder:
    events: list[tuple[str, str, str, str]] = field(default_factory=list)

    def node(self, node_name: str, type: str, reason: str, message: str) -> None:
        self.events.append(("Node", node_name, reason, message))

    def pod(
        self, namespace: str, name: str, uid: str, type: str, reason: str, message: str
    ) -> None:
        self.events.append(("Pod", f"{namespace}/{name}", reason, message))

    def reasons(self, kind: str = "Node") -> list[str]:
        return [r for k, _, r, _ in self.events if k == kind]


@dataclass
class Cluster:
    annotations: list[list[str]] = field(default_factory=list)
    events_by_uid: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    lookups: int = 0

    def pod_events(self, namespace: str, uid: str) -> list[Mapping[str, Any]]:
        self.lookups += 1
        return self.events_by_uid.get(uid, [])

    def set_trusted_registries(self, node_name: str, keys: Sequence[str]) -> None:
        self.annotations.append(list(keys))


class Manager:
    def __init__(self) -> None:
        self.restarts: list[str] = []

    def check_restart_allowed(self, runtime: str, **_: object) -> None:
        pass

    def restart(self, runtime: str, **_: object) -> float:
        self.restarts.append(runtime)
        return 0.0


@dataclass
class World:
    root: Path
    controller: Controller
    recorder: Recorder
    cluster: Cluster
    fetches: list[HostPort]
    chain: tuple[CertInfo, ...]


@pytest.fixture
def world(tmp_path: Path) -> World:
    root = tmp_path / "host"
    node_root(root)
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",))
    chain = tuple(cert_from_der(c.public_bytes(Encoding.DER)) for c in ca.chain)
    fetches: list[HostPort] = []

    def fetch(target: HostPort) -> tuple[CertInfo, ...]:
        fetches.append(target)
        return chain

    engine = Engine(
        HostFS(str(root)),
        _NoRunner(),
        runtimes=("containerd",),
        manager=Manager(),  # type: ignore[arg-type]
        fetch=fetch,
        verify=lambda target, cafile: None,
    )
    recorder, cluster = Recorder(), Cluster()
    controller = Controller(node_name=NODE, engine=engine, recorder=recorder, cluster=cluster)
    return World(root, controller, recorder, cluster, fetches, chain)


class _NoRunner:
    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> Any:
        raise AssertionError(f"no command expected, got {argv}")


def node_obj(enabled: bool = True) -> dict[str, Any]:
    ann = {"ca-trust-agent.io/remediate": "enabled"} if enabled else {}
    return {
        "metadata": {"name": NODE, "annotations": ann},
        "status": {"nodeInfo": {"containerRuntimeVersion": "containerd://1.6.20"}},
    }


def policy_obj(text: str) -> dict[str, Any]:
    return {"metadata": {"name": "ca-trust-agent"}, "data": {"policy.yaml": text}}


def failing_pod(
    name: str = "web-1", message: str = X509, reason: str = "ErrImagePull"
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name, "uid": f"uid-{name}"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": IMAGE}]},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": IMAGE,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        },
    }


ALLOW = 'registries:\n  - host: "registry.test:5443"\n'


def test_an_allowed_registry_on_an_opted_in_node_is_trusted_and_reported(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    c.on_pod(failing_pod())
    c.drain()
    assert world.recorder.reasons("Node") == ["UntrustedRegistryDetected", "CATrusted"]
    assert world.recorder.reasons("Pod") == ["UntrustedRegistryDetected", "CATrusted"]
    trusted = next(m for _, _, r, m in world.recorder.events if r == "CATrusted")
    assert "registry.test:5443" in trusted and world.chain[-1].sha256 in trusted
    assert "registry scope" in trusted
    assert world.cluster.annotations[-1] == ["registry.test:5443"]


def test_a_node_that_did_not_opt_in_stays_idle(world: World) -> None:
    c = world.controller
    c.on_node(node_obj(enabled=False))
    c.on_policy(policy_obj(ALLOW))
    c.on_pod(failing_pod())
    c.drain()
    assert world.recorder.events == [] and world.fetches == []


def test_a_registry_missing_from_the_policy_is_not_trusted(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj('registries:\n  - host: "other.test"\n'))
    c.on_pod(failing_pod())
    c.drain()
    assert world.recorder.reasons() == ["RegistryNotAllowed"]
    assert world.fetches == []
    assert not (world.root / "etc/containerd/certs.d").exists()


def test_a_thousand_failing_pods_cause_one_fetch_and_one_install(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    for i in range(1000):
        c.on_pod(failing_pod(f"web-{i}"))
    c.drain()
    assert len(world.fetches) == 1
    assert world.recorder.reasons("Node").count("CATrusted") == 1


def test_dry_run_reports_and_changes_nothing(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW + "dryRun: true\n"))
    c.on_pod(failing_pod())
    c.drain()
    assert "CATrustDryRun" in world.recorder.reasons()
    assert not (world.root / "etc/containerd/certs.d").exists()


def test_a_pin_mismatch_is_reported_as_a_failure_and_nothing_is_written(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(
        policy_obj(
            f'registries:\n  - host: "registry.test:5443"\n    pins: ["sha256:{"AB" * 32}"]\n'
        )
    )
    c.on_pod(failing_pod())
    c.drain()
    assert world.recorder.reasons() == ["UntrustedRegistryDetected", "CATrustFailed"]
    assert "pin" in world.recorder.events[-1][3]
    assert not (world.root / "etc/containerd/certs.d").exists()


def test_a_broken_policy_keeps_the_last_good_one_and_warns(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    c.on_policy(policy_obj("registries: [ {host: 'a'}\n"))
    assert world.recorder.reasons() == ["PolicyInvalid"]
    c.on_pod(failing_pod())
    c.drain()
    assert "CATrusted" in world.recorder.reasons()


def test_a_deleted_policy_configmap_keeps_the_last_good_policy(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    c.on_policy(None)
    assert world.recorder.reasons() == ["PolicyInvalid"]
    assert c.policy.decide(HostPort("registry.test", 5443)).allowed


def test_a_registry_removed_from_the_policy_has_its_ca_removed(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    c.on_pod(failing_pod())
    c.drain()
    c.on_policy(policy_obj("registries: []\n"))
    c.drain()
    assert "CARemoved" in world.recorder.reasons()
    assert c.engine.entries() == {}
    assert world.cluster.annotations[-1] == []


def test_declared_ca_pem_is_installed_without_any_failure_or_fetch(world: World) -> None:
    c = world.controller
    pem = world.chain[-1].pem.decode()
    indented = "".join("      " + line + "\n" for line in pem.splitlines())
    c.on_node(node_obj())
    c.on_policy(policy_obj(f'registries:\n  - host: "harbor.test:443"\n    caPEM: |\n{indented}'))
    c.drain()
    assert world.fetches == []
    assert "CATrusted" in world.recorder.reasons()
    assert "harbor.test:443" in c.engine.entries()


def test_backoff_status_without_text_is_resolved_from_the_pods_events(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    world.cluster.events_by_uid["uid-web-1"] = [
        {
            "reason": "Failed",
            "type": "Warning",
            "message": f'Failed to pull image "{IMAGE}": {X509}',
            "involvedObject": {"kind": "Pod", "uid": "uid-web-1"},
            "lastTimestamp": "2026-11-27T10:00:00Z",
        },
    ]
    c.on_pod(failing_pod(message=f'Back-off pulling image "{IMAGE}"', reason="ImagePullBackOff"))
    c.drain()
    assert world.cluster.lookups == 1
    assert "CATrusted" in world.recorder.reasons()


def test_hostname_mismatch_is_diagnosed_counted_and_never_remediated(world: World) -> None:
    metrics = CountingMetrics()
    c = Controller(NODE, world.controller.engine, world.recorder, world.cluster, metrics=metrics)
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    msg = (
        'Head "https://registry.test:5443/v2/": tls: failed to verify certificate: '
        "x509: certificate is valid for other.test, not registry.test"
    )
    c.on_pod(failing_pod(message=msg))
    c.drain()
    assert world.recorder.reasons() == ["RegistryCertificateInvalid"]
    assert world.recorder.reasons("Pod") == ["RegistryCertificateInvalid"]
    said = world.recorder.events[0][3]
    assert said == (
        f"Pulling {IMAGE} from registry registry.test:5443 failed: the certificate of "
        "registry.test:5443 is valid for other.test, not registry.test; trusting a CA cannot "
        "fix this: the registry's owner must serve a certificate for that name, or the image "
        "must use a name the certificate has; nothing was installed"
    )
    assert metrics.diagnoses == ["name-mismatch"]
    assert world.fetches == []


def test_reconcile_recreates_a_deleted_anchor_and_warns_before_expiry(world: World) -> None:
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    c.on_pod(failing_pod())
    c.drain()
    entry = c.engine.entries()["registry.test:5443"]
    (world.root / entry.files[0].lstrip("/")).unlink()
    c.flights.forget("registry.test:5443")
    from datetime import timedelta

    c.clock = lambda: world.chain[-1].not_after - timedelta(days=10)
    c.reconcile()
    assert (world.root / entry.files[0].lstrip("/")).exists()
    assert "CAExpiringSoon" in world.recorder.reasons()


def test_a_runtime_that_fails_to_restart_is_retried_after_a_back_off(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",))
    chain = tuple(cert_from_der(c.public_bytes(Encoding.DER)) for c in ca.chain)

    class Flaky(Manager):
        def __init__(self) -> None:
            super().__init__()
            self.fail_next = True

        def restart(self, runtime: str, **_: object) -> float:
            from agent.core.errors import RuntimeRestartError

            if self.fail_next:
                self.fail_next = False
                raise RuntimeRestartError("containerd did not answer within 60s", kind="not-ready")
            return super().restart(runtime)

    manager = Flaky()
    engine = Engine(
        HostFS(str(root)),
        RecordingRunner(root),
        runtimes=("containerd",),
        manager=manager,  # type: ignore[arg-type]
        fetch=lambda _t: chain,
        verify=lambda target, cafile: None,
    )
    recorder = Recorder()
    c = Controller(node_name=NODE, engine=engine, recorder=recorder, cluster=Cluster())
    c.flights.base = 0.05  # the back-off, shortened for the test
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW.replace("registries", "scope: system\nregistries")))
    c.on_pod(failing_pod())
    c.drain()
    assert "ContainerRuntimeRestartRefused" in recorder.reasons()
    assert (
        "retried"
        in next(m for _, _, r, m in recorder.events if r == "ContainerRuntimeRestartRefused")
    )
    import time as _time

    deadline = _time.monotonic() + 5
    while not manager.restarts and _time.monotonic() < deadline:
        _time.sleep(0.05)
        c.drain()
    assert manager.restarts == ["containerd"]
    assert "ContainerRuntimeRestarted" in recorder.reasons()
    assert engine.entries()["registry.test:5443"].restarted == ("containerd",)


# --- caFrom: CAs read from ConfigMaps / ClusterTrustBundles (agent.cluster.casources) -----

CA_FROM = (
    'registries:\n  - host: "harbor.test:443"\n'
    "    caFrom: {configMap: {name: corp-ca, key: ca.crt}}\n"
)


def test_a_ca_from_the_cluster_is_installed_rotated_and_removed_with_its_source(
    world: World,
) -> None:
    from agent.core.policy import CASource

    source = CASource("configMap", name="corp-ca", key="ca.crt")
    first, second = pki.make_ca("Corp Root 2026"), pki.make_ca("Corp Root 2027")
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(CA_FROM))
    c.drain()
    assert c.engine.entries() == {}  # the source has not been listed yet

    c.on_ca_sources({source: first.pem.decode()})
    c.drain()
    assert c.engine.entries()["harbor.test:443"].sha256 == first.sha256

    c.on_ca_sources({source: second.pem.decode()})  # the bundle changed: a rotation
    c.drain()
    assert c.engine.entries()["harbor.test:443"].sha256 == second.sha256
    assert world.recorder.reasons().count("CATrusted") == 2

    c.on_ca_sources({source: None})  # listed, and gone
    c.drain()
    assert c.engine.entries() == {}
    removed = [m for _, _, r, m in world.recorder.events if r == "CARemoved"]
    assert len(removed) == 1
    assert "its CA source (ConfigMap corp-ca key ca.crt) is gone" in removed[0]
    assert world.fetches == []  # declared: never fetched


def test_a_source_that_is_not_listed_yet_never_takes_its_ca_away(world: World) -> None:
    from agent.core.policy import CASource

    source = CASource("configMap", name="corp-ca", key="ca.crt")
    ca = pki.make_ca("Corp Root")
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(policy_obj(CA_FROM))
    c.on_ca_sources({source: ca.pem.decode()})
    c.drain()
    c.on_ca_sources({})  # e.g. its watch is relisting after a restart
    c.reconcile()
    assert c.engine.entries()["harbor.test:443"].sha256 == ca.sha256
    assert "CARemoved" not in world.recorder.reasons()


def test_pins_pick_the_registry_s_ca_out_of_a_shared_bundle(world: World) -> None:
    from agent.core.policy import CASource

    wanted, other = pki.make_ca("Registry Root"), pki.make_ca("Public Root")
    source = CASource("clusterTrustBundle", name="corp")
    c = world.controller
    c.on_node(node_obj())
    c.on_policy(
        policy_obj(
            f'registries:\n  - host: "harbor.test:443"\n    pins: ["{wanted.sha256}"]\n'
            "    caFrom: {clusterTrustBundle: {name: corp}}\n"
        )
    )
    c.on_ca_sources({source: other.pem.decode() + wanted.pem.decode()})
    c.drain()
    assert c.engine.entries()["harbor.test:443"].sha256 == wanted.sha256


# --- a step that raises: visible, counted, retried with back-off, never dropped ------------


@dataclass
class CountingMetrics:
    work_failures: list[str] = field(default_factory=list)
    remediations: list[str] = field(default_factory=list)
    diagnoses: list[str] = field(default_factory=list)

    def record_remediation(self, result: str, duration_seconds: float) -> None:
        self.remediations.append(result)

    def record_runtime_restart(self, runtime: str, result: str) -> None:
        pass

    def set_trusted(self, not_after: Mapping[str, Any]) -> None:
        pass

    def record_work_failure(self, kind: str) -> None:
        self.work_failures.append(kind)

    def record_diagnosis(self, kind: str) -> None:
        self.diagnoses.append(kind)


def test_a_remediation_that_raises_is_reported_counted_and_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = CountingMetrics()
    c = Controller(NODE, world.controller.engine, world.recorder, world.cluster, metrics=metrics)
    c.flights.base = 0.05  # the back-off, shortened for the test
    real_install = c.engine.install
    second = threading.Event()
    calls: list[int] = []

    def install_breaking_once(req: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ModuleNotFoundError("No module named 'grpc'")
        second.set()
        return real_install(req)

    monkeypatch.setattr(c.engine, "install", install_breaking_once)
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    c.on_pod(failing_pod())
    c.drain()
    failed = [m for k, _, r, m in world.recorder.events if r == "CATrustFailed" and k == "Pod"]
    assert len(failed) == 1
    assert "ModuleNotFoundError: No module named 'grpc'" in failed[0] and "retrying" in failed[0]
    assert metrics.work_failures == ["failure"] and metrics.remediations[0] == "failed"

    stop = threading.Event()
    worker = threading.Thread(target=c.work, args=(stop,), daemon=True)
    worker.start()
    try:
        assert second.wait(10), "the failed item was never retried"
    finally:
        c.stop()
        worker.join(10)
    assert world.recorder.reasons("Node")[-1] == "CATrusted"


def test_a_retry_is_dropped_once_the_pod_no_longer_fails(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = world.controller
    c.flights.base = 0.05
    calls: list[int] = []

    def install_breaking(req: Any) -> Any:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(c.engine, "install", install_breaking)
    c.on_node(node_obj())
    c.on_policy(policy_obj(ALLOW))
    pod = failing_pod()
    c.on_pod(pod)
    c.drain()
    c.on_pod_deleted(pod)
    from agent.cluster.controller.interfaces import PodRef, Work
    from agent.core.detect import pull_failures_from_pod

    failure = next(p.failure for p in pull_failures_from_pod(pod) if p.failure is not None)
    c.process(Work("retry", PodRef("shop", "web-1", "uid-web-1"), failure))
    assert calls == [1]  # the deleted pod's retry reads its Events (none) and stops there
    assert world.cluster.lookups == 1
