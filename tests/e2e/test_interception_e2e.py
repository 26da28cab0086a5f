"""Behind a TLS-inspecting proxy, end to end: the declared proxy CA makes public-looking
pulls work on a real containerd (1.6.20 and 2.1.9, through the CRI), with no restart.

containerd runs with `HTTPS_PROXY` pointing at the lab's intercepting proxy
(lab/tls/intercept.py), set as a systemd drop-in on the node would (the agent reads the
drop-in under the host root). The proxy re-signs every connection with its own CA and
answers every name from the lab registry in a network namespace, so nothing leaves the
machine:

    ghcr.io:443               the lab registry, re-signed by the proxy's CA
    public-registry.test:443  the same; listed in `interception.except`
    quay.io:443               the same, but presented with a leaf of another CA
    registry-1.docker.io:443, auth.docker.io:443, production.cloudflare.docker.com:443
                              docker.io/library/tiny:v1 as on Docker Hub (token, CDN redirect)

The agent runs in-process against the fake API server (as tests/e2e/test_daemon_e2e.py),
on a host root shared with that containerd (the layout of test_image_daemonset_e2e.py).
Run this file alone with:

    unshare --mount --propagation private -- \\
        .venv/bin/python -m pytest -q -s tests/e2e/test_interception_e2e.py
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS
from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import node, pod, policy, wait_until
from lab.isolation.netns import NetnsHost
from lab.isolation.nodens import HostRoot
from lab.isolation.sandbox import Sandbox
from lab.runtimes.containerd2 import VERSION, Containerd2, available
from lab.tls.intercept import InterceptingProxy, Upstream
from lab.tls.pki import expired, make_ca, make_leaf
from tests.e2e.conftest import LabRegistry, cri_pull, timing
from tests.e2e.test_default_dir_facts_e2e import HUB, hub_like_lab
from tests.e2e.test_image_daemonset_e2e import REGISTRY_TABLE, describe

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NS = "ca-trust-agent"
NODE = "proxied-node"
X509_UNKNOWN = "x509: certificate signed by unknown authority"
CERTS_D = "/etc/containerd/certs.d"
GHCR = "ghcr.io/lab/tiny:v1"
EXCEPTED = "public-registry.test/lab/tiny:v1"
OTHER_CA_IMAGE = "quay.io/lab/tiny:v1"
EXPIRED_IMAGE = "expired.example/lab/tiny:v1"
OTHER = make_ca("Someone Else Re-signing CA")


@pytest.fixture(scope="module")
def proxy(
    sandbox: Sandbox,
    lab_netns: NetnsHost,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InterceptingProxy]:
    """The proxy of the _default facts (Docker-Hub-like token and CDN hosts included), with
    quay.io added: answered from the same registry, but with another CA's leaf."""
    registry = netns_registry
    work = tmp_path_factory.mktemp("intercept-e2e")
    for lab in hub_like_lab(lab_netns, registry, work):
        upstream = Upstream(
            registry.registry.address, registry.port, registry.host, registry.pki.paths.root
        )
        lab.proxy.routes["quay.io:443"] = upstream
        lab.proxy.presents["quay.io:443"] = (make_leaf(OTHER, names=("quay.io",)),)
        # the proxy's own leaf for this name has expired: no CA can fix that
        lab.proxy.routes["expired.example:443"] = upstream
        lab.proxy.presents["expired.example:443"] = (
            make_leaf(lab.proxy.ca, names=("expired.example",), window=expired()),
        )
        yield lab.proxy


@pytest.fixture(scope="module", params=["1.6.20", VERSION])
def containerd(
    request: pytest.FixtureRequest,
    proxy: InterceptingProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Containerd2]:
    version = str(request.param)
    if version == VERSION and not available():
        pytest.fail(f"containerd {VERSION} is missing: scripts/bootstrap unpacks it")
    base = tmp_path_factory.mktemp(f"proxied-node-{version}")
    root = HostRoot(base / "host")
    daemon = Containerd2(root, base / "daemon", version, env={"HTTPS_PROXY": proxy.url})
    root.prepare()
    (root.base / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    # what the node's operator wrote for containerd: the agent reads it, read-only
    dropins = root.base / "etc/systemd/system/containerd.service.d"
    dropins.mkdir(parents=True)
    (dropins / "http-proxy.conf").write_text(
        f'[Service]\nEnvironment="HTTPS_PROXY={proxy.url}" "NO_PROXY=localhost,127.0.0.1"\n'
    )
    table = REGISTRY_TABLE[daemon.config_version]
    daemon.write_config(f'{daemon.base_config()}{table}\n  config_path = "{CERTS_D}"\n')
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@dataclass
class Cluster:
    api: FakeApiServer
    daemon: Containerd2
    pods: int = 0

    def fails(self, image: str) -> str:
        """Pull as kubelet does; the failure lands in a pod's status, as kubelet puts it."""
        failed = cri_pull(self.daemon, image)
        assert X509_UNKNOWN in failed.error, failed
        self.pods += 1
        waiting = {"reason": "ErrImagePull", "message": failed.error}
        self.api.put_object(pod(f"web-{self.pods}", NODE, image, waiting))
        return failed.error

    def event(self, reason: str, about: str, timeout: float = 30) -> str:
        def found() -> list[dict[str, Any]]:
            return [
                e
                for e in self.api.objects("events")
                if e.get("reason") == reason and about in str(e.get("message"))
            ]

        try:
            return str(wait_until(found, timeout=timeout)[0]["message"])
        except AssertionError:
            raise AssertionError(
                f"no {reason} about {about}:\n{describe(self.api.objects('events'))}"
            ) from None

    def certs_d(self, host: str) -> list[str]:
        folder = self.daemon.node.real(f"{CERTS_D}/{host}")
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def pid_of(daemon: Containerd2) -> str:
    return Path(daemon.spec.pidfile).read_text().strip()


def declared(proxy: InterceptingProxy, *, everything: bool = False) -> str:
    pem = textwrap.indent(proxy.ca.pem.decode(), "    ")
    excepted = "" if everything else "  except: [public-registry.test]\n"
    return f"interception:\n  caPEM: |\n{pem}{excepted}"


@pytest.mark.timeout(300)
def test_the_declared_proxy_ca_fixes_covered_pulls_without_a_restart_and_only_those(
    containerd: Containerd2, proxy: InterceptingProxy
) -> None:
    with FakeApiServer() as api:
        api.put_object(node(NODE, runtime=f"containerd://{containerd.version}"))
        api.put_object(policy(declared(proxy), NS))
        cluster = Cluster(api, containerd)
        config = Configuration()
        config.host = api.url
        client = KubeClient(config, retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05))
        engine = Engine(HostFS(str(containerd.node.base)), DirectRunner())
        agent = Agent(client, NODE, NS, engine, reconcile_seconds=3600)
        agent.start()
        try:
            wait_until(lambda: agent.ready().ready)
            pid = pid_of(containerd)
            began = time.monotonic()
            cluster.fails(GHCR)
            trusted = cluster.event("CATrusted", "ghcr.io:443")
            timing("interception: failing pod to CATrusted", time.monotonic() - began)
            print(f"[event] CATrusted: {trusted}")
            assert proxy.ca.subject in trusted
            assert f"verified: containerd pulled {GHCR}" in trusted
            assert (
                f"the chain was fetched as containerd connects to ghcr.io:443 through the "
                f"proxy {proxy.url} (HTTPS_PROXY) (from systemd)"
            ) in trusted
            assert cluster.certs_d("ghcr.io") == ["ca-trust-agent-ghcr.io_443.crt"]
            pulled = cri_pull(containerd, GHCR)
            assert pulled.ok, pulled.error
            assert pid_of(containerd) == pid  # registry scope: no restart

            # Docker Hub's way: the image's registry is docker.io, the manifest comes from
            # registry-1.docker.io, the token from auth.docker.io, the blobs through a
            # redirect to production.cloudflare.docker.com; one CA file in certs.d/docker.io/
            cluster.fails(HUB)
            hub = cluster.event("CATrusted", "registry-1.docker.io:443")
            print(f"[event] CATrusted: {hub}")
            assert cluster.certs_d("docker.io") == ["ca-trust-agent-registry-1.docker.io_443.crt"]
            pulled = cri_pull(containerd, HUB)
            assert pulled.ok, pulled.error

            # a registry in `except` is left to `registries` (which lists none)
            cluster.fails(EXCEPTED)
            print(f"[event] {cluster.event('RegistryNotAllowed', 'public-registry.test')}")
            assert cluster.certs_d("public-registry.test") == []

            # a covered host whose chain ends at another CA is refused, saying what it showed
            cluster.fails(OTHER_CA_IMAGE)
            refused = cluster.event("InterceptedChainRefused", "quay.io:443")
            print(f"[event] InterceptedChainRefused: {refused}")
            assert "issued by CN=Someone Else Re-signing CA" in refused
            assert cluster.certs_d("quay.io") == []

            # a defect no CA fixes: diagnosed, counted, nothing installed
            failed = cri_pull(containerd, EXPIRED_IMAGE)
            assert "x509: certificate has expired or is not yet valid" in failed.error
            cluster.pods += 1
            waiting = {"reason": "ErrImagePull", "message": failed.error}
            api.put_object(pod(f"web-{cluster.pods}", NODE, EXPIRED_IMAGE, waiting))
            invalid = cluster.event("RegistryCertificateInvalid", "expired.example:443")
            print(f"[event] RegistryCertificateInvalid: {invalid}")
            assert "expired on " in invalid and "the registry's owner must renew it" in invalid
            assert cluster.certs_d("expired.example") == []

            # the operator removes the declaration: what it installed goes, the x509 is back
            api.put_object(policy("registries: []\n", NS))
            removed = cluster.event("CARemoved", "ghcr.io:443")
            print(f"[event] CARemoved: {removed}")
            assert cluster.certs_d("ghcr.io") == []
            assert X509_UNKNOWN in cri_pull(containerd, GHCR).error

            # covering every registry: the CA is in certs.d/_default/ (and in the
            # directories registries already have) before any pull fails
            api.put_object(policy(declared(proxy, everything=True), NS))
            placed = cluster.event("CATrusted", "(_default)")
            print(f"[event] CATrusted: {placed}")
            assert cluster.certs_d("_default") == ["ca-trust-agent-_default_443.crt"]
            for image in (EXCEPTED, GHCR):  # neither failed under this policy
                pulled = cri_pull(containerd, image)
                assert pulled.ok, pulled.error
            assert X509_UNKNOWN in cri_pull(containerd, OTHER_CA_IMAGE).error  # not the CA
            api.put_object(policy("registries: []\n", NS))
            cluster.event("CARemoved", "_default:443")
            assert X509_UNKNOWN in cri_pull(containerd, EXCEPTED).error
            assert pid_of(containerd) == pid
        finally:
            agent.stop()
            agent.join()


def test_the_proxy_route_is_what_the_agent_reads_from_the_node(
    containerd: Containerd2, proxy: InterceptingProxy
) -> None:
    """The drop-in, read the way systemd applies it, names the proxy containerd really uses."""
    from agent.core.hostport import parse_hostport
    from agent.node.interception import runtime_route

    fs = HostFS(str(containerd.node.base))
    route = runtime_route(fs, ("containerd",), parse_hostport("ghcr.io"), {})
    assert (route.choice.proxy, route.source) == (proxy.url, "systemd")
    direct = runtime_route(fs, ("containerd",), parse_hostport("127.0.0.1:5000"), {})
    assert direct.choice.proxy is None
    assert Path(route.files[-1]).name == "http-proxy.conf"
