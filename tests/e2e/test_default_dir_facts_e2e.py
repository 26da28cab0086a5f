"""Behind a TLS-inspecting proxy: what containerd's `certs.d/_default/` does, measured.

The corporate case, built in the lab (lab/tls/intercept.py): containerd runs with
`HTTPS_PROXY` pointing at a CONNECT proxy that re-signs every connection with its own CA and
answers every name from lab servers in a network namespace, so nothing leaves the machine:

    public-registry.test, ghcr.io      -> the lab registry (distribution)
    registry-1.docker.io (docker.io/library/…) -> a front that demands a token from auth.docker.io
                                          and redirects blob GETs to
                                          production.cloudflare.docker.com (both lab servers)

Each case writes a certs.d tree (no restart: containerd reads certs.d on every pull) and pulls
through the CRI, as kubelet does, on containerd 1.6.20, 2.1.9 (the transfer service: its
default) and 2.1.9 with `use_local_image_pull = true`. The outcome is pinned: "ok", or the
host:port whose TLS failed. These are the facts the product's placement of an interception
CA is built on (docs/interception.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.core.detect import parse_pull_error
from agent.core.diagnosis import diagnose
from agent.core.hostport import HostPort
from agent.core.trust import cert_from_der
from agent.node.chain import fetch_chain
from lab.isolation.netns import NetnsHost
from lab.isolation.nodens import NodeNamespace
from lab.isolation.sandbox import Sandbox
from lab.registry.push import push_tiny_image
from lab.registry.redirects import Served, own_ca, run_server
from lab.runtimes.containerd2 import VERSION, Containerd2, available
from lab.tls.intercept import InterceptingProxy, Upstream, intercepting_proxy
from lab.tls.pki import make_ca, write_pem
from tests.e2e.conftest import LabRegistry
from tests.e2e.test_containerd_configs_e2e import CERTS_D, V1_TABLE, V2_TABLE

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PUBLIC = "public-registry.test/lab/tiny:v1"  # .test: a pull that bypassed the proxy goes nowhere
GHCR = "ghcr.io/lab/tiny:v1"
HUB = "docker.io/library/tiny:v1"  # containerd sends it to registry-1.docker.io
HUB_HOSTS = ("registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com")
# ports of the Docker-Hub-like servers inside the lab's network namespace
FRONT_PORT, AUTH_PORT, CDN_PORT = 6450, 6451, 6452
PROXY_CA_NODE_PATH = "/etc/containerd/proxy-ca.pem"  # for hosts.toml `ca = [...]`
RUNTIMES = ("1.6.20", VERSION, f"{VERSION}-local")


@dataclass(frozen=True)
class ProxyLab:
    proxy: InterceptingProxy
    served: tuple[Served, ...]  # front, auth, cdn


@pytest.fixture(scope="module")
def proxy_lab(
    sandbox: Sandbox,
    lab_netns: NetnsHost,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyLab]:
    yield from hub_like_lab(lab_netns, netns_registry, tmp_path_factory.mktemp("intercept"))


def hub_like_lab(ns: NetnsHost, registry: LabRegistry, work: Path) -> Iterator[ProxyLab]:
    """The proxy and the three Docker-Hub-like servers behind it (shared by the modules)."""
    # an official-image name, as on Docker Hub (the registry is shared: one more repository)
    push_tiny_image(
        registry.host,
        registry.port,
        registry.pki.paths.root,
        repository="library/tiny",
        connect_to=registry.registry.address,
    )
    to_registry = (
        "--upstream", registry.target,
        "--upstream-address", registry.registry.address,
        "--upstream-ca", str(registry.pki.paths.root),
    )  # fmt: skip
    auth_tls = own_ca(work / "auth", "auth.docker.io")
    cdn_tls = own_ca(work / "cdn", "production.cloudflare.docker.com")
    front_tls = own_ca(work / "front", "registry-1.docker.io")
    common = {"netns": ns.name, "address": ns.ns_ip, "workdir": work}
    with (
        run_server("auth", "auth.docker.io", port=AUTH_PORT, tls=auth_tls, **common) as auth,
        run_server(
            "cdn", "production.cloudflare.docker.com", port=CDN_PORT, tls=cdn_tls,
            options=to_registry, **common,
        ) as cdn,
        run_server(
            "front", "registry-1.docker.io", port=FRONT_PORT, tls=front_tls,
            options=(
                *to_registry,
                "--realm", "https://auth.docker.io/token",
                "--cdn", "https://production.cloudflare.docker.com",
            ),
            **common,
        ) as front,
    ):  # fmt: skip
        lab_registry = Upstream(
            registry.registry.address, registry.port, registry.host, registry.pki.paths.root
        )
        routes = {
            "public-registry.test:443": lab_registry,
            "ghcr.io:443": lab_registry,
            "registry-1.docker.io:443": Upstream(
                ns.ns_ip, FRONT_PORT, front.name, front_tls.anchor
            ),
            "auth.docker.io:443": Upstream(ns.ns_ip, AUTH_PORT, auth.name, auth_tls.anchor),
            "production.cloudflare.docker.com:443": Upstream(
                ns.ns_ip, CDN_PORT, cdn.name, cdn_tls.anchor
            ),
        }
        with intercepting_proxy(work / "proxy", routes) as proxy:
            yield ProxyLab(proxy, (front, auth, cdn))


def start_behind(proxy: InterceptingProxy, runtime: str, base: Path) -> Containerd2:
    """containerd `runtime` ("1.6.20", "2.1.9", "2.1.9-local") with HTTPS_PROXY set, as a
    systemd drop-in would, and a single-directory config_path."""
    version, _, mode = runtime.partition("-")
    if version == VERSION and not available():
        pytest.fail(f"containerd {VERSION} is missing: scripts/bootstrap unpacks it")
    daemon = Containerd2(
        NodeNamespace(base / "node"), base / "daemon", version, env={"HTTPS_PROXY": proxy.url}
    )
    daemon.node.prepare()
    table = V2_TABLE if version.startswith("2.") else V1_TABLE
    local = "[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n"
    daemon.write_config(
        daemon.base_config()
        + (local if mode == "local" else "")
        + f'{table}\n  config_path = "{CERTS_D}"\n'
    )
    daemon.start()
    return daemon


@pytest.fixture(scope="module", params=RUNTIMES)
def containerd(
    request: pytest.FixtureRequest, proxy_lab: ProxyLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd2]:
    runtime = str(request.param)
    daemon = start_behind(proxy_lab.proxy, runtime, tmp_path_factory.mktemp(f"node-{runtime}"))
    write_pem(daemon.node.real(PROXY_CA_NODE_PATH), proxy_lab.proxy.ca)
    try:
        yield daemon
    finally:
        daemon.stop()


def outcome(daemon: Containerd2, image: str) -> str:
    """ "ok", or "x509@host:port" of the connection whose certificate was refused."""
    with daemon.cri() as cri:
        result = cri.pull(image)
        if result.ok:
            cri.remove(image)
            return "ok"
    failure = parse_pull_error(result.error)
    assert failure is not None and failure.failing is not None, result.error
    assert failure.kind == "unknown-authority", result.error
    return f"x509@{failure.failing}"


# What each certs.d tree holds. PROXY = the proxy's CA, OTHER = an unrelated private CA (what
# the agent would have placed for a registry before), both as file contents.
PROXY, OTHER = "PROXY", "OTHER"
HOSTS_CA = f'ca = ["{PROXY_CA_NODE_PATH}"]\n'
FOREIGN = (
    'server = "https://public-registry.test"\n\n'
    '[host."https://public-registry.test"]\n  capabilities = ["pull", "resolve"]\n'
)
TREES: dict[str, dict[str, str | None]] = {
    "nothing": {},
    "_default/ca.crt": {"_default/ca.crt": PROXY},
    "_default/any-name.crt": {"_default/ca-trust-agent-proxy.crt": PROXY},
    "_default/ca.pem": {"_default/ca.pem": PROXY},
    "_default/hosts.toml ca": {"_default/hosts.toml": HOSTS_CA},
    "_default + own dir holding our file": {
        "_default/ca.crt": PROXY,
        "public-registry.test/ca-trust-agent-other_443.crt": OTHER,
    },
    "_default + empty own dir": {"_default/ca.crt": PROXY, "public-registry.test/": None},
    "_default + foreign hosts.toml": {
        "_default/ca.crt": PROXY,
        "public-registry.test/hosts.toml": FOREIGN,
    },
    "own dir with the proxy CA": {"public-registry.test/ca-trust-agent-proxy.crt": PROXY},
}
# The Docker-Hub-like pull: the image's registry is docker.io, its connections go to
# registry-1.docker.io, auth.docker.io (token) and production.cloudflare.docker.com (blobs).
HUB_TREES: dict[str, dict[str, str | None]] = {
    "nothing": {},
    "_default/ca.crt": {"_default/ca.crt": PROXY},
    "docker.io/ only": {"docker.io/ca-trust-agent-proxy.crt": PROXY},
    "_default + empty token and CDN dirs": {
        "_default/ca.crt": PROXY,
        "auth.docker.io/": None,
        "production.cloudflare.docker.com/": None,
    },
    "every connected host's dir, no docker.io/": {
        f"{h}/ca-trust-agent-proxy.crt": PROXY for h in HUB_HOSTS
    },
    "_default + empty docker.io/": {"_default/ca.crt": PROXY, "docker.io/": None},
}

OK = "ok"
PUBLIC_X509 = "x509@public-registry.test:443"
HUB_X509 = "x509@registry-1.docker.io:443"
# Measured; identical for every runtime unless a runtime is named.
EXPECTED: dict[str, str | dict[str, str]] = {
    "nothing": PUBLIC_X509,
    "_default/ca.crt": OK,
    "_default/any-name.crt": OK,
    "_default/ca.pem": PUBLIC_X509,
    # 1.6.20 ignores a hosts.toml without a [host] table; 2.1.9 honours its top-level `ca`
    "_default/hosts.toml ca": {"1.6.20": PUBLIC_X509, VERSION: OK, f"{VERSION}-local": OK},
    "_default + own dir holding our file": PUBLIC_X509,
    "_default + empty own dir": PUBLIC_X509,
    "_default + foreign hosts.toml": PUBLIC_X509,
    "own dir with the proxy CA": OK,
}
HUB_EXPECTED: dict[str, str | dict[str, str]] = {
    "nothing": HUB_X509,
    "_default/ca.crt": OK,
    "docker.io/ only": OK,
    "_default + empty token and CDN dirs": OK,
    "every connected host's dir, no docker.io/": HUB_X509,
    "_default + empty docker.io/": HUB_X509,
}


def plant(daemon: Containerd2, tree: dict[str, str | None], other_ca: bytes) -> None:
    certs_d = daemon.certs_d
    shutil.rmtree(certs_d, ignore_errors=True)
    certs_d.mkdir(parents=True)
    contents = {PROXY: daemon.node.real(PROXY_CA_NODE_PATH).read_bytes(), OTHER: other_ca}
    for relative, content in tree.items():
        path = certs_d / relative
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents.get(content, content.encode()))


@pytest.fixture(scope="module")
def other_ca() -> bytes:
    return make_ca("Some Registry's Private CA").pem


def expected_for(table: dict[str, str | dict[str, str]], case: str, runtime: str) -> str:
    value = table[case]
    return value if isinstance(value, str) else value[runtime]


@pytest.mark.parametrize("case", list(TREES))
def test_default_dir_for_a_registry_behind_the_proxy(
    containerd: Containerd2, proxy_lab: ProxyLab, other_ca: bytes, case: str
) -> None:
    runtime = runtime_of(containerd)
    plant(containerd, TREES[case], other_ca)
    try:
        assert outcome(containerd, PUBLIC) == expected_for(EXPECTED, case, runtime)
    finally:
        shutil.rmtree(containerd.certs_d, ignore_errors=True)


@pytest.mark.parametrize("case", list(HUB_TREES))
def test_default_dir_for_the_token_and_cdn_hosts_of_a_docker_hub_pull(
    containerd: Containerd2, proxy_lab: ProxyLab, other_ca: bytes, case: str
) -> None:
    runtime = runtime_of(containerd)
    plant(containerd, HUB_TREES[case], other_ca)
    try:
        assert outcome(containerd, HUB) == expected_for(HUB_EXPECTED, case, runtime)
    finally:
        shutil.rmtree(containerd.certs_d, ignore_errors=True)


def test_a_ghcr_pull_goes_through_the_proxy_and_only_through_it(
    containerd: Containerd2, proxy_lab: ProxyLab, other_ca: bytes
) -> None:
    """The runtime never resolves the public name itself: every connection is a CONNECT to
    the proxy, which answers ghcr.io from the lab registry."""
    before = len(proxy_lab.proxy.tunnels)
    plant(containerd, {"_default/ca.crt": PROXY}, other_ca)
    try:
        assert outcome(containerd, GHCR) == OK
    finally:
        shutil.rmtree(containerd.certs_d, ignore_errors=True)
    tunnels = proxy_lab.proxy.tunnels[before:]
    assert tunnels and {t.target for t in tunnels} == {"ghcr.io:443"}
    assert all(t.accepted for t in tunnels)


def runtime_of(daemon: Containerd2) -> str:
    local = "use_local_image_pull = true" in daemon.config_file.read_text()
    return f"{daemon.version}-local" if local else daemon.version


def test_the_agent_fetching_through_the_proxy_sees_its_leaf_alone(proxy_lab: ProxyLab) -> None:
    """What the agent's fetch shows behind this proxy, as behind most corporate ones: a leaf
    for the public name, issued by the proxy's CA, which is never sent. Unknown, that shape is
    a missing intermediate; with the proxy's CA declared, it is the expected interception."""
    proxy = proxy_lab.proxy
    chain = fetch_chain(HostPort("ghcr.io", 443), proxy=proxy.url).certs
    assert len(chain) == 1
    assert chain[0].issuer == proxy.ca.subject and chain[0].san_dns == ("ghcr.io",)
    failure = parse_pull_error(
        'Head "https://ghcr.io/v2/lab/tiny/manifests/v1": x509: certificate signed by unknown '
        "authority"
    )
    assert failure is not None
    assert diagnose(failure, chain, declared=(cert_from_der(proxy.ca.der),)) is None
    undeclared = diagnose(failure, chain)
    assert undeclared is not None and undeclared.kind == "missing-intermediate"


def test_a_docker_hub_pull_connects_to_the_token_and_cdn_hosts_through_the_proxy(
    containerd: Containerd2, proxy_lab: ProxyLab, other_ca: bytes
) -> None:
    """The Hub-like cases above are about three hosts, not one: the pull really took a token
    from auth.docker.io and its blobs from production.cloudflare.docker.com, each through a
    CONNECT whose TLS the runtime accepted with `_default`'s CA."""
    before = len(proxy_lab.proxy.tunnels)
    _front, auth, cdn = proxy_lab.served
    cdn_before = len(cdn.requests())
    plant(containerd, {"_default/ca.crt": PROXY}, other_ca)
    try:
        assert outcome(containerd, HUB) == OK
    finally:
        shutil.rmtree(containerd.certs_d, ignore_errors=True)
    accepted = {t.target for t in proxy_lab.proxy.tunnels[before:] if t.accepted}
    assert accepted == {f"{h}:443" for h in HUB_HOSTS}
    assert any("/registry-v2/library/tiny/blobs/" in r for r in cdn.requests()[cdn_before:])
    assert any(r.startswith("GET /token") for r in auth.requests())
