"""The seed's own case, end to end: a pull that fails x509 on a host the image never names.

The vendor document's example pulls from a registry whose blob GET is redirected to a CDN
(production.cloudflare.docker.com) presenting a CA the node lacks; Docker Hub likewise sends
clients to auth.docker.io for a token. Built here with lab/registry/redirects.py on
network-namespace addresses (containerd 2.x never verifies TLS for loopback registries):

    front-cdn.test  (the registry's private CA)  -- blob GET --> 307 --> cdn.test  (own CA)
    front-auth.test (the registry's private CA)  -- 401 Bearer realm --> auth.test (own CA)

Each front proxies everything else to the real distribution registry (registry-ns.test).
On real containerd 1.6.20 and 2.1.9, through the CRI: with the front trusted, the pull fails
on the other host only; the detector names that host as the failing one and the front as the
image's registry; `install <host> --registry <front> --image REF` (what the daemon does for
that failure) puts the other host's anchor into the *front's* certs.d directory, and the
next CRI pull works. Measured on both versions: containerd consults the certs.d directory of
the image's registry for every connection of a pull (redirected blob fetches and token
requests included) and never the directory named after the other host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.core.detect import parse_pull_error
from agent.core.hostport import parse_hostport
from lab.isolation.netns import NetnsHost
from lab.isolation.nodens import NodeNamespace
from lab.isolation.sandbox import Sandbox
from lab.registry.redirects import Served, issued_by, own_ca, run_server
from lab.runtimes.containerd2 import VERSION, Containerd2, available
from tests.e2e.conftest import CliResult, LabRegistry
from tests.e2e.test_containerd_configs_e2e import (
    CERTS_D,
    V1_TABLE,
    V2_TABLE,
    X509,
    Node,
    assert_trust_means_a_working_pull,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# Ports inside the lab's network namespace, beside the registry's 5443.
FRONT_CDN, CDN = ("front-cdn.test", 6443), ("cdn.test", 7443)
FRONT_AUTH, AUTH = ("front-auth.test", 6444), ("auth.test", 8443)


@dataclass(frozen=True)
class Redirecting:
    """A front and the other host it sends clients to, and the front as a Node's registry."""

    front: Served
    other: Served
    registry: LabRegistry  # host/port/image of the front; the pki is the registry's own


def _redirecting(
    sandbox: Sandbox,
    ns: NetnsHost,
    upstream: LabRegistry,
    work: Path,
    front_at: tuple[str, int],
    other_at: tuple[str, int],
    other_role: str,
) -> Iterator[Redirecting]:
    """Start the other host, then the front that sends clients to it; names in /etc/hosts
    before any containerd starts (Go re-reads the hosts file at most every 5 s)."""
    for name, _ in (front_at, other_at):
        sandbox.add_host(name, ns.ns_ip)
    to_registry = (
        "--upstream", upstream.target,
        "--upstream-address", upstream.registry.address,
        "--upstream-ca", str(upstream.pki.paths.root),
    )  # fmt: skip
    other_name, other_port = other_at
    with run_server(
        other_role,
        other_name,
        netns=ns.name,
        address=ns.ns_ip,
        port=other_port,
        tls=own_ca(work / other_name, other_name),
        workdir=work,
        options=to_registry,
    ) as other:
        sends = ("--cdn", other.url) if other_role == "cdn" else ("--realm", f"{other.url}/token")
        with run_server(
            "front",
            front_at[0],
            netns=ns.name,
            address=ns.ns_ip,
            port=front_at[1],
            tls=issued_by(work / front_at[0], front_at[0], upstream.pki),
            workdir=work,
            options=(*to_registry, *sends),
        ) as front:
            image = upstream.image.replace(upstream.target, front.target, 1)
            yield Redirecting(
                front,
                other,
                LabRegistry(front.name, front.port, image, upstream.pki, upstream.registry),
            )


@pytest.fixture(scope="module")
def via_cdn(
    sandbox: Sandbox,
    lab_netns: NetnsHost,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Redirecting]:
    work = tmp_path_factory.mktemp("redirect-cdn")
    yield from _redirecting(sandbox, lab_netns, netns_registry, work, FRONT_CDN, CDN, "cdn")


@pytest.fixture(scope="module")
def via_auth(
    sandbox: Sandbox,
    lab_netns: NetnsHost,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Redirecting]:
    work = tmp_path_factory.mktemp("redirect-auth")
    yield from _redirecting(sandbox, lab_netns, netns_registry, work, FRONT_AUTH, AUTH, "auth")


@pytest.fixture(scope="module", params=["1.6.20", VERSION])
def containerd(
    request: pytest.FixtureRequest,
    via_cdn: Redirecting,
    via_auth: Redirecting,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Containerd2]:
    version = str(request.param)
    if version == VERSION and not available():
        pytest.fail(f"containerd {VERSION} is missing: scripts/bootstrap unpacks it")
    base = tmp_path_factory.mktemp(f"redirect-node-{version}")
    daemon = Containerd2(NodeNamespace(base / "node"), base / "daemon", version)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@contextlib.contextmanager
def node_through(daemon: Containerd2, setup: Redirecting) -> Iterator[Node]:
    """A node pulling through `setup`'s front, with a single config_path (registry scope);
    afterwards everything the agent holds is removed through the agent."""
    node = Node(daemon, setup.registry)
    table = V2_TABLE if daemon.version.startswith("2.") else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n')
    try:
        yield node
    finally:
        removed = node.agent("remove", setup.other.target)
        assert removed.returncode == 0, removed.explain()
        node.clean()
        assert node.certs_d_files() == []


@pytest.fixture
def cdn_node(containerd: Containerd2, via_cdn: Redirecting) -> Iterator[Node]:
    with node_through(containerd, via_cdn) as node:
        yield node


@pytest.fixture
def auth_node(containerd: Containerd2, via_auth: Redirecting) -> Iterator[Node]:
    with node_through(containerd, via_auth) as node:
        yield node


def trust_the_front(node: Node, front: Served) -> CliResult:
    """The first failure names the front (its manifest request): the agent fixes that one
    in registry scope, and the runtime's verdict is about the front's TLS only."""
    first = node.pull().error
    assert X509 in first and f"https://{front.target}/v2/" in first, first
    result = node.install()
    assert result.returncode == 0, result.explain()
    assert "registry scope" in result.stdout, result.explain()
    # the runtime's pull got past the front and failed on the other host: no verdict about
    # the front's CA (never a rollback), so the TLS handshake is what verified it
    assert "Check: verified by a TLS handshake trusting only the new CA" in result.stdout
    assert "TLS fails on another host" in result.stdout, result.explain()
    return result


def failure_on(node: Node, other: Served) -> str:
    """The CRI pull now fails on the other host alone; the detector says so."""
    error = node.pull().error
    assert X509 in error and f"https://{other.target}/" in error, error
    failure = parse_pull_error(error)
    assert failure is not None and failure.remediable, error
    assert failure.failing == parse_hostport(other.target)
    assert failure.registry == parse_hostport(node.registry.target)
    assert failure.image == node.image
    return error


def install_as_the_daemon_does(node: Node, error: str) -> CliResult:
    failure = parse_pull_error(error)
    assert failure is not None and failure.failing and failure.registry and failure.image
    return node.agent(
        "install", failure.failing.key,
        "--registry", failure.registry.key,
        "--image", failure.image,
        "--timeout", "30",
    )  # fmt: skip


def test_a_blob_redirected_to_a_cdn_is_trusted_in_the_image_registry_s_certs_d(
    cdn_node: Node, via_cdn: Redirecting
) -> None:
    cdn = via_cdn.other
    trust_the_front(cdn_node, via_cdn.front)
    error = failure_on(cdn_node, cdn)
    assert "/registry-v2/lab/tiny/blobs/sha256:" in error  # the 307's Location

    before = len(cdn.requests())
    result = install_as_the_daemon_does(cdn_node, error)

    assert result.returncode == 0, result.explain()
    front_dir = via_cdn.front.target
    assert f"{front_dir}/ca-trust-agent-{cdn.name}_{cdn.port}.crt" in cdn_node.certs_d_files()
    assert not any(f.startswith(f"{cdn.target}/") for f in cdn_node.certs_d_files())
    assert f"Check: verified: containerd pulled {cdn_node.image}" in result.stdout
    # the runtime's verification pull got its blobs from the CDN, past the CDN's TLS
    blobs = [r for r in cdn.requests()[before:] if r.startswith("GET /registry-v2/")]
    assert blobs and all(r.endswith("-> 200") for r in blobs), cdn.requests()
    assert_trust_means_a_working_pull(cdn_node, result)


@pytest.mark.parametrize("via", ["via_cdn", "via_auth"])
def test_containerd_never_reads_the_other_host_s_own_certs_d_directory(
    containerd: Containerd2, via: str, request: pytest.FixtureRequest
) -> None:
    """The measured fact behind --registry: certs.d/<cdn-or-auth-host:port>/ is not consulted
    for a redirected blob fetch nor for a token request (containerd builds one TLS
    configuration per image registry, from that registry's directory)."""
    setup: Redirecting = request.getfixturevalue(via)
    with node_through(containerd, setup) as node:
        trust_the_front(node, setup.front)
        own_dir = node.daemon.certs_d / setup.other.target
        own_dir.mkdir()
        (own_dir / "ca.crt").write_bytes(setup.other.anchor.read_bytes())

        failure_on(node, setup.other)  # still x509 on that host, with its CA beside

        (own_dir / "ca.crt").unlink()
        own_dir.rmdir()


def test_a_token_realm_on_another_host_is_trusted_in_the_image_registry_s_certs_d(
    auth_node: Node, via_auth: Redirecting
) -> None:
    auth = via_auth.other
    trust_the_front(auth_node, via_auth.front)
    error = failure_on(auth_node, auth)
    assert "failed to fetch anonymous token" in error

    before = len(auth.requests())
    result = install_as_the_daemon_does(auth_node, error)

    assert result.returncode == 0, result.explain()
    front_dir = via_auth.front.target
    assert f"{front_dir}/ca-trust-agent-{auth.name}_{auth.port}.crt" in auth_node.certs_d_files()
    assert f"Check: verified: containerd pulled {auth_node.image}" in result.stdout
    # the runtime's verification pull got its token from the auth host, past its TLS
    tokens = [r for r in auth.requests()[before:] if r.startswith("GET /token")]
    assert tokens and all(r.endswith("-> 200") for r in tokens), auth.requests()
    assert_trust_means_a_working_pull(auth_node, result)
