"""policy `interception` in the daemon's controller: a covered registry behind a
TLS-inspecting proxy gets the declared proxy CA, checked on the chain fetched through the
runtime's proxy, and loses it when the declaration goes; anything else is refused.

The engine is the real one on a host-root tree; the chain the proxy presents is a stand-in
for the fetch (tests/e2e/test_interception_e2e.py does it with real containerd and a real
intercepting proxy).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cluster.controller import Controller
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo, cert_from_der
from agent.node.engine import Engine
from agent.node.host import HostFS
from lab.fakes.hostroot import node_root
from lab.tls.pki import Issued, make_ca, make_leaf
from tests.unit.cluster.test_controller import (
    NODE,
    Cluster,
    Manager,
    Recorder,
    _NoRunner,
    failing_pod,
    node_obj,
    policy_obj,
)

PROXY = make_ca("Corp Inspecting Proxy CA")
OTHER = make_ca("Someone Else CA")
IMAGE = "ghcr.io/lab/tiny:v1"
X509 = (
    f'failed to pull and unpack image "{IMAGE}": failed to resolve reference "{IMAGE}": '
    'failed to do request: Head "https://ghcr.io/v2/lab/tiny/manifests/v1": '
    "tls: failed to verify certificate: x509: certificate signed by unknown authority"
)
PROXY_DROPIN = '[Service]\nEnvironment="HTTPS_PROXY=http://proxy.corp.example:3128"\n'


def declared(*, extra: str = "  hosts: [ghcr.io, quay.io]\n") -> str:
    """The proxy CA, by default for two registries (so nothing is placed in _default)."""
    pem = textwrap.indent(PROXY.pem.decode(), "    ")
    return f"interception:\n  caPEM: |\n{pem}{extra}"


@dataclass
class Proxy:
    """What the (stand-in) proxy presents, and the fetches made through it."""

    presents: dict[str, Issued] = field(default_factory=dict)
    fetches: list[tuple[str, str | None]] = field(default_factory=list)

    def chain(self, target: HostPort) -> tuple[CertInfo, ...]:
        leaf = self.presents.get(target.host) or make_leaf(PROXY, names=(target.host,))
        return (cert_from_der(leaf.der),)

    def fetch(self, target: HostPort, proxy: str | None, timeout: float) -> Sequence[CertInfo]:
        self.fetches.append((target.key, proxy))
        return self.chain(target)


@dataclass
class World:
    root: Path
    controller: Controller
    recorder: Recorder
    proxy: Proxy
    cluster: Cluster

    def pull_fails(self, message: str = X509, image: str = IMAGE) -> None:
        pod = failing_pod(message=message)
        pod["spec"]["containers"][0]["image"] = image
        pod["status"]["containerStatuses"][0]["image"] = image
        self.controller.on_pod(pod)
        self.controller.drain()

    def certs_d(self, host: str) -> list[str]:
        folder = self.root / "etc/containerd/certs.d" / host
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def said(self, reason: str) -> str:
        return next(m for k, _, r, m in self.recorder.events if r == reason and k == "Node")


@pytest.fixture
def world(tmp_path: Path) -> World:
    root = tmp_path / "host"
    node_root(root)
    dropins = root / "etc/systemd/system/containerd.service.d"
    dropins.mkdir(parents=True)
    (dropins / "http-proxy.conf").write_text(PROXY_DROPIN)
    proxy = Proxy()
    engine = Engine(
        HostFS(str(root)),
        _NoRunner(),
        runtimes=("containerd",),
        manager=Manager(),  # type: ignore[arg-type]
        fetch=proxy.chain,  # the engine's own fetch sees the same proxy
        verify=lambda target, cafile: None,
    )
    recorder, cluster = Recorder(), Cluster()
    controller = Controller(
        node_name=NODE,
        engine=engine,
        recorder=recorder,
        cluster=cluster,
        chain_fetcher=proxy.fetch,
        proxy_env={},
    )
    controller.on_node(node_obj())
    return World(root, controller, recorder, proxy, cluster)


def test_a_covered_registry_gets_the_declared_proxy_ca_fetched_through_the_runtime_proxy(
    world: World,
) -> None:
    world.controller.on_policy(policy_obj(declared()))
    world.pull_fails()
    assert world.recorder.reasons() == ["UntrustedRegistryDetected", "CATrusted"]
    assert world.proxy.fetches == [("ghcr.io:443", "http://proxy.corp.example:3128")]
    entry = world.controller.engine.entries()["ghcr.io:443"]
    assert (entry.source, entry.sha256) == ("interception", PROXY.sha256)
    assert world.certs_d("ghcr.io") == ["ca-trust-agent-ghcr.io_443.crt"]
    trusted = world.said("CATrusted")
    assert PROXY.sha256 in trusted
    assert (
        "the chain was fetched as containerd connects to ghcr.io:443 through the proxy "
        "http://proxy.corp.example:3128 (HTTPS_PROXY) (from systemd)"
    ) in trusted


def test_removing_the_declaration_removes_the_proxy_ca(world: World) -> None:
    world.controller.on_policy(policy_obj(declared()))
    world.pull_fails()
    world.controller.on_policy(policy_obj("registries: []\n"))
    world.controller.drain()
    assert world.controller.engine.entries() == {}
    assert world.certs_d("ghcr.io") == []
    assert "policy.yaml no longer declares an interception CA" in world.said("CARemoved")


def test_excepting_a_registry_later_removes_its_proxy_ca_only(world: World) -> None:
    world.controller.on_policy(policy_obj(declared()))
    world.pull_fails()
    excepted = "  hosts: [ghcr.io, quay.io]\n  except: [ghcr.io]\n"
    world.controller.on_policy(policy_obj(declared(extra=excepted)))
    world.controller.drain()
    assert world.controller.engine.entries() == {}
    assert "ghcr.io:443 is no longer covered by policy.yaml interception" in world.said(
        "CARemoved"
    )


def test_an_excepted_registry_is_left_to_the_registries_policy(world: World) -> None:
    world.controller.on_policy(policy_obj(declared(extra="  except: [ghcr.io]\n")))
    world.controller.drain()
    world.recorder.events.clear()
    world.pull_fails()
    assert world.recorder.reasons() == ["RegistryNotAllowed"]
    assert world.proxy.fetches == [] and world.certs_d("ghcr.io") == []


def test_a_chain_from_another_ca_on_a_covered_host_is_refused_saying_what_was_shown(
    world: World,
) -> None:
    world.proxy.presents["ghcr.io"] = make_leaf(OTHER, names=("ghcr.io",))
    world.controller.on_policy(policy_obj(declared()))
    world.pull_fails()
    assert world.recorder.reasons() == ["UntrustedRegistryDetected", "InterceptedChainRefused"]
    assert world.recorder.reasons("Pod") == world.recorder.reasons()
    refused = world.said("InterceptedChainRefused")
    assert "issued by CN=Someone Else CA" in refused
    assert "does not end at the declared interception CA CN=Corp Inspecting Proxy CA" in refused
    assert "through the proxy http://proxy.corp.example:3128" in refused
    assert world.controller.engine.entries() == {} and world.certs_d("ghcr.io") == []


def test_a_defect_no_ca_fixes_is_diagnosed_on_a_covered_host_too(world: World) -> None:
    world.controller.on_policy(policy_obj(declared()))
    expired = X509.replace(
        "certificate signed by unknown authority",
        "certificate has expired or is not yet valid: current time 2026-12-07T10:00:00Z is "
        "after 2026-11-30T00:00:00Z",
    )
    world.pull_fails(message=expired)
    assert world.recorder.reasons() == ["RegistryCertificateInvalid"]
    assert "expired on 2026-11-30" in world.said("RegistryCertificateInvalid")
    assert world.proxy.fetches == []


# --- containerd: placed before any pull fails ----------------------------------------------

FOREIGN_HOSTS_TOML = (
    'server = "https://mirror.corp.example"\n\n'
    '[host."https://mirror.corp.example"]\n  capabilities = ["pull", "resolve"]\n'
)


def test_covering_every_registry_places_the_ca_in_default_and_in_each_existing_directory(
    world: World,
) -> None:
    certs_d = world.root / "etc/containerd/certs.d"
    (certs_d / "docker.io").mkdir(parents=True)  # an empty directory: ignores _default
    (certs_d / "quay.io").mkdir()
    (certs_d / "quay.io/hosts.toml").write_text(FOREIGN_HOSTS_TOML)  # a mirror's
    (certs_d / "registry.corp.example:5000").mkdir()
    world.controller.on_policy(policy_obj(declared(extra="")))
    world.controller.drain()
    entries = world.controller.engine.entries()
    assert sorted(entries) == ["_default:443", "docker.io:443", "registry.corp.example:5000"]
    assert {e.source for e in entries.values()} == {"interception"}
    assert world.certs_d("_default") == ["ca-trust-agent-_default_443.crt"]
    assert world.certs_d("docker.io") == ["ca-trust-agent-docker.io_443.crt"]
    # a mirror's hosts.toml makes containerd ignore *.crt there: that registry is named
    failed = world.said("CATrustFailed")
    assert "quay.io" in failed and "hosts.toml" in failed
    assert world.certs_d("quay.io") == ["hosts.toml"]
    assert world.proxy.fetches == []  # declared: nothing fetched
    # the Node annotation names registries; certs.d/_default is not one
    assert world.cluster.annotations[-1] == ["docker.io:443", "registry.corp.example:5000"]


def test_default_is_removed_once_the_ca_no_longer_covers_every_registry(world: World) -> None:
    world.controller.on_policy(policy_obj(declared(extra="")))
    world.controller.drain()
    assert "_default:443" in world.controller.engine.entries()
    world.controller.on_policy(policy_obj(declared(extra="  except: [ghcr.io]\n")))
    world.controller.drain()
    assert "_default:443" not in world.controller.engine.entries()
    assert world.certs_d("_default") == []
    assert "no longer covers every registry" in world.said("CARemoved")


def test_hosts_toml_append_adds_the_proxy_ca_to_a_mirror_s_hosts_toml(world: World) -> None:
    certs_d = world.root / "etc/containerd/certs.d"
    (certs_d / "quay.io").mkdir(parents=True)
    (certs_d / "quay.io/hosts.toml").write_text(
        'server = "https://quay.io"\n\n[host."https://quay.io"]\n  capabilities = ["pull"]\n'
    )
    world.controller.on_policy(policy_obj("hostsToml: append\n" + declared(extra="")))
    world.controller.drain()
    assert "quay.io:443" in world.controller.engine.entries()
    toml = (certs_d / "quay.io/hosts.toml").read_text()
    assert "ca-trust-agent-quay.io_443.crt" in toml
    world.controller.on_policy(policy_obj("registries: []\n"))
    world.controller.drain()
    assert world.controller.engine.entries() == {}
    assert "ca-trust-agent" not in (certs_d / "quay.io/hosts.toml").read_text()


def test_without_a_declaration_a_lone_proxy_leaf_is_diagnosed_not_installed(
    world: World,
) -> None:
    world.controller.on_policy(policy_obj("registries:\n  - host: ghcr.io\n"))
    world.pull_fails()
    assert world.recorder.reasons() == ["UntrustedRegistryDetected", "RegistryCertificateInvalid"]
    said = world.said("RegistryCertificateInvalid")
    assert said.startswith(f"Pulling {IMAGE} from registry ghcr.io:443 failed: the server sent")
    assert "issued by CN=Corp Inspecting Proxy CA" in said
    assert "declare the proxy's CA as policy interception" in said
    assert world.controller.engine.entries() == {}


def test_a_proxy_ca_read_from_a_configmap_is_used_once_listed_and_follows_it(
    world: World,
) -> None:
    from agent.core.policy import CASource

    source = CASource("configMap", name="proxy-ca", key="ca.crt")
    text = "interception:\n  caFrom: {configMap: {name: proxy-ca, key: ca.crt}}\n"
    world.controller.on_policy(policy_obj(text + "  hosts: [ghcr.io]\n"))
    world.controller.on_ca_sources({source: PROXY.pem.decode()})
    world.pull_fails()
    assert world.controller.engine.entries()["ghcr.io:443"].sha256 == PROXY.sha256
    world.controller.on_ca_sources({source: OTHER.pem.decode()})  # the proxy's CA changed
    world.controller.drain()
    assert world.controller.engine.entries() == {}
    assert "the declared interception CA (ConfigMap proxy-ca key ca.crt) changed" in world.said(
        "CARemoved"
    )
