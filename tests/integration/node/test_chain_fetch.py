"""agent.node.chain against real TLS servers on loopback, with real generated PKI.

Each test starts the server it needs (lab.tls.servers) and stops it on exit. Fetching never
verifies; the analysis of what was fetched is agent.core.trust's, exercised here end to end.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.errors import ApplyError, FetchError, TrustError
from agent.core.hostport import HostPort
from agent.core.trust import analyze
from agent.node.chain import (
    FetchedChain,
    fetch_chain,
    no_proxy_matches,
    parse_proxy_url,
    proxy_from_env,
    verify_handshake,
)
from lab.tls.pki import PKI, expired, make_ca, make_pki, not_yet_valid
from lab.tls.servers import (
    AlertServer,
    ConnectProxy,
    GarbageServer,
    PlainHTTPServer,
    SilentServer,
    TLSServer,
    ipv6_loopback_available,
)

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Names a loopback server can really be reached by: localhost, 127.0.0.1, ::1."""
    return make_pki(
        tmp_path_factory.mktemp("pki"),
        names=("localhost", "registry.test"),
        ips=("127.0.0.1", "::1"),
    )


@pytest.fixture
def server(pki: PKI) -> Iterator[TLSServer]:
    with TLSServer(pki.chain, pki.leaf) as srv:
        yield srv


def fetch_error(target: HostPort, kind: str, **kw: object) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch_chain(target, **kw)  # type: ignore[arg-type]
    assert caught.value.kind == kind, caught.value.message
    return caught.value


def local(port: int) -> HostPort:
    return HostPort("127.0.0.1", port)


# --- fetching good chains ------------------------------------------------------------


def test_fetches_leaf_and_intermediate_as_sent(pki: PKI, server: TLSServer) -> None:
    fetched = fetch_chain(local(server.port))
    assert [c.sha256 for c in fetched.certs] == [pki.leaf.sha256, pki.intermediate.sha256]  # type: ignore[union-attr]
    assert fetched.peer == f"127.0.0.1:{server.port}"
    assert fetched.via_proxy is None
    assert fetched.tls_version.startswith("TLSv1.")
    result = analyze(fetched.certs, fetched.target, now=NOW)
    assert (result.reason, result.anchor.sha256) == ("topmost CA", pki.intermediate.sha256)  # type: ignore[union-attr]


def test_server_sending_its_root_gives_the_root_as_anchor(pki: PKI) -> None:
    with TLSServer(pki.fullchain, pki.leaf) as srv:
        fetched = fetch_chain(local(srv.port))
    assert len(fetched.certs) == 3
    result = analyze(fetched.certs, fetched.target, now=NOW)
    assert (result.reason, result.anchor.sha256) == ("root sent", pki.root.sha256)


def test_self_signed_server(tmp_path: Path) -> None:
    p = make_pki(tmp_path, names=("localhost",), ips=("127.0.0.1",), self_signed_leaf=True)
    with TLSServer([p.leaf], p.leaf) as srv:
        fetched = fetch_chain(local(srv.port))
    result = analyze(fetched.certs, fetched.target, now=NOW)
    assert (result.reason, result.anchor.sha256) == ("self-signed leaf", p.leaf.sha256)


def test_tls_1_2_server(pki: PKI) -> None:
    with TLSServer(pki.chain, pki.leaf, max_version=ssl.TLSVersion.TLSv1_2) as srv:
        fetched = fetch_chain(local(srv.port))
    assert fetched.tls_version == "TLSv1.2" and len(fetched.certs) == 2


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_registry_demanding_a_client_certificate_still_shows_its_chain(
    pki: PKI, version: ssl.TLSVersion
) -> None:
    """mTLS registries abort the handshake without a client certificate, after having
    presented their chain: the chain is still fetched."""
    with TLSServer(pki.chain, pki.leaf, max_version=version, client_ca=pki.root) as srv:
        fetched = fetch_chain(local(srv.port))
    assert fetched.certs[0].sha256 == pki.leaf.sha256


def test_sni_is_the_host_name_and_absent_for_an_ip(server: TLSServer) -> None:
    fetch_chain(HostPort("localhost", server.port))
    fetch_chain(local(server.port))
    fetch_chain(local(server.port), sni="registry.test")
    assert server.server_names == ["localhost", None, "registry.test"]


def test_ip_san_verifies_for_the_ip_target(server: TLSServer) -> None:
    fetched = fetch_chain(local(server.port))
    analyze(fetched.certs, fetched.target, now=NOW)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no ::1 loopback")
def test_ipv6_loopback(pki: PKI) -> None:
    with TLSServer(pki.chain, pki.leaf, host="::1") as srv:
        fetched = fetch_chain(HostPort("::1", srv.port))
        assert fetched.peer == f"[::1]:{srv.port}"
        analyze(fetched.certs, fetched.target, now=NOW)
        verify_handshake(HostPort("::1", srv.port), str(pki.paths.root))


def test_wrong_host_name_is_found_after_fetching(server: TLSServer) -> None:
    fetched = fetch_chain(local(server.port), sni="other.test")
    with pytest.raises(TrustError) as caught:
        analyze(fetched.certs, HostPort("other.test", server.port), now=NOW)
    assert caught.value.kind == "hostname-mismatch"


BROKEN: dict[str, tuple[dict[str, object], str]] = {
    # case: (make_pki options, expected TrustError kind)
    "expired-anchor": ({"root_window": expired()}, "expired"),
    "not-yet-valid-leaf": ({"leaf_window": not_yet_valid()}, "not-yet-valid"),
    "non-ca-intermediate": ({"intermediate_is_ca": False}, "not-a-ca"),
    "no-san": ({"san": False}, "no-san"),
    "wrong-name": ({"names": ("other.test",), "ips": ()}, "hostname-mismatch"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_servers_are_fetched_then_refused_with_the_precise_kind(
    case: str, tmp_path: Path
) -> None:
    options, kind = BROKEN[case]
    kw: dict[str, object] = {"names": ("localhost",), "ips": ("127.0.0.1",), **options}
    p = make_pki(tmp_path, **kw)  # type: ignore[arg-type]
    with TLSServer(p.fullchain, p.leaf) as srv:
        fetched = fetch_chain(local(srv.port))
    with pytest.raises(TrustError) as caught:
        analyze(fetched.certs, fetched.target, now=NOW)
    assert caught.value.kind == kind, caught.value.message


def test_server_sending_a_foreign_intermediate_does_not_link(pki: PKI, tmp_path: Path) -> None:
    other = make_pki(tmp_path)
    with TLSServer([pki.leaf.cert, other.intermediate.cert], pki.leaf) as srv:  # type: ignore[union-attr]
        fetched = fetch_chain(local(srv.port))
    with pytest.raises(TrustError) as caught:
        analyze(fetched.certs, fetched.target, now=NOW)
    assert caught.value.kind == "chain-does-not-link"


def test_server_sending_only_its_leaf_cannot_be_anchored(pki: PKI) -> None:
    with TLSServer([pki.leaf], pki.leaf) as srv:
        fetched = fetch_chain(local(srv.port))
    with pytest.raises(TrustError) as caught:
        analyze(fetched.certs, fetched.target, now=NOW)
    assert caught.value.kind == "leaf-not-self-signed"


def test_pins_against_a_live_server(pki: PKI, server: TLSServer) -> None:
    fetched = fetch_chain(local(server.port))
    good = pki.intermediate.sha256  # type: ignore[union-attr]
    assert analyze(fetched.certs, fetched.target, now=NOW, pins=[good]).anchor.sha256 == good
    with pytest.raises(TrustError) as caught:
        analyze(fetched.certs, fetched.target, now=NOW, pins=[pki.root.sha256])
    assert caught.value.kind == "pin-mismatch"


# --- fetch failures ------------------------------------------------------------------


def _closed_port() -> int:
    """A port nothing listens on: bind, read the number, close."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_port_is_unreachable() -> None:
    err = fetch_error(local(_closed_port()), "unreachable", retries=0)
    assert "connection refused" in err.message


def test_refused_port_is_retried_then_still_unreachable() -> None:
    fetch_error(local(_closed_port()), "unreachable", retries=2, timeout=5)


def test_a_server_that_comes_up_during_the_retries_is_reached(pki: PKI) -> None:
    """Refused connections are retried with backoff inside the deadline."""
    port = _closed_port()
    started: list[TLSServer] = []
    timer = threading.Timer(
        0.02, lambda: started.append(TLSServer(pki.chain, pki.leaf, port=port).start())
    )
    timer.start()
    try:
        fetched = fetch_chain(local(port), retries=10, timeout=8)
    finally:
        timer.join()
        for srv in started:
            srv.stop()
    assert fetched.certs[0].sha256 == pki.leaf.sha256


def test_a_name_that_does_not_resolve() -> None:
    err = fetch_error(HostPort("no-such-registry.invalid"), "resolve", timeout=5)
    assert "no-such-registry.invalid" in err.message


def test_a_resolver_that_hangs_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """libc's resolver cannot be interrupted; the fetch stops waiting for it."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: str, *args: object, **kw: object) -> object:
        if host == "slow.test":
            release.wait(10)
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        err = fetch_error(HostPort("slow.test"), "timeout", timeout=0.5)
    finally:
        release.set()
    assert "resolving slow.test" in err.message


def test_silent_server_times_out_at_the_deadline() -> None:
    with SilentServer() as srv:
        err = fetch_error(local(srv.port), "timeout", timeout=1)
    assert "1 s" in err.message and srv.accepted == 1  # accepted once: timeouts are not retried


def test_garbage_is_not_tls() -> None:
    with GarbageServer() as srv:
        fetch_error(local(srv.port), "not-tls", timeout=5)


def test_plain_http_is_not_tls_and_says_so() -> None:
    with PlainHTTPServer() as srv:
        err = fetch_error(local(srv.port), "not-tls", timeout=5)
    assert "plain HTTP" in err.message and "400 Bad Request" in err.message


def test_tls_alert_is_reported_as_such() -> None:
    with AlertServer() as srv:
        err = fetch_error(local(srv.port), "tls-alert", timeout=5)
    assert "handshake failure" in err.message


def test_more_than_sixteen_certificates_is_too_large(pki: PKI) -> None:
    padding = [make_ca(f"Padding CA {i}").cert for i in range(16)]
    with TLSServer([pki.leaf.cert, *padding], pki.leaf) as srv:
        err = fetch_error(local(srv.port), "too-large", timeout=5)
    assert "17 certificates" in err.message


# --- proxies -------------------------------------------------------------------------


def test_chain_is_fetched_through_a_connect_proxy(pki: PKI, server: TLSServer) -> None:
    with ConnectProxy() as proxy:
        fetched = fetch_chain(local(server.port), proxy=f"http://{proxy.hostport}")
    assert proxy.targets == [f"127.0.0.1:{server.port}"]
    assert fetched.via_proxy == f"http://{proxy.hostport}"
    assert fetched.peer == proxy.hostport
    assert fetched.certs[0].sha256 == pki.leaf.sha256


def test_https_proxy_from_the_environment(
    server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy.hostport}")
        fetched = fetch_chain(HostPort("localhost", server.port))
    assert proxy.targets == [f"localhost:{server.port}"]
    assert fetched.via_proxy is not None


def test_a_name_only_the_proxy_can_resolve(pki: PKI, server: TLSServer) -> None:
    """Behind a corporate proxy the node may not resolve the registry at all."""
    target = HostPort("registry.test", server.port)
    with ConnectProxy(hosts={"registry.test": "127.0.0.1"}) as proxy:
        fetched = fetch_chain(target, proxy=proxy.hostport)
        verify_handshake(target, str(pki.paths.root), proxy=proxy.hostport)
    assert proxy.targets == [f"registry.test:{server.port}"] * 2
    assert server.server_names == ["registry.test"] * 2
    assert analyze(fetched.certs, target, now=NOW).reason == "topmost CA"


def test_no_proxy_bypasses_the_proxy(server: TLSServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with ConnectProxy() as proxy:
        monkeypatch.setenv("https_proxy", f"http://{proxy.hostport}")
        monkeypatch.setenv("no_proxy", ".example.com,127.0.0.0/8")
        fetched = fetch_chain(local(server.port))
    assert proxy.targets == []
    assert fetched.via_proxy is None


def test_explicit_no_proxy_argument_wins_over_the_environment(
    server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")
    assert fetch_chain(local(server.port), proxy=None).via_proxy is None


def test_proxy_refusing_connect_is_a_proxy_error(server: TLSServer) -> None:
    with ConnectProxy(status=403) as proxy:
        err = fetch_error(local(server.port), "proxy", proxy=f"http://{proxy.hostport}")
    assert "403" in err.message


def test_unreachable_proxy_is_a_proxy_error(server: TLSServer) -> None:
    fetch_error(local(server.port), "proxy", proxy=f"http://127.0.0.1:{_closed_port()}")


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("", "registry.test", 443, False),
        ("*", "registry.test", 443, True),
        ("registry.test", "registry.test", 443, True),
        ("example.com", "registry.example.com", 443, True),
        (".example.com", "registry.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        ("registry.test:5000", "registry.test", 5000, True),
        ("registry.test:5000", "registry.test", 443, False),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("127.0.0.1", "127.0.0.1", 8443, True),
        ("[::1]:5000", "::1", 5000, True),
        ("::1", "::1", 5000, True),
        ("  a.test , registry.test ", "registry.test", 443, True),
    ],
)
def test_no_proxy_is_parsed_like_curl(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    assert no_proxy_matches(no_proxy, HostPort(host, port)) is bypass


@settings(max_examples=300, deadline=None)
@given(no_proxy=st.text(max_size=80))
def test_any_no_proxy_text_gives_an_answer(no_proxy: str) -> None:
    """A node's NO_PROXY can hold anything; parsing it must never crash a fetch."""
    for target in (HostPort("registry.test", 5000), HostPort("10.1.2.3"), HostPort("::1")):
        assert isinstance(no_proxy_matches(no_proxy, target), bool)


def test_proxy_env_prefers_lower_case_and_respects_no_proxy() -> None:
    target = HostPort("registry.test")
    env = {"https_proxy": "http://low:3128", "HTTPS_PROXY": "http://up:3128"}
    assert proxy_from_env(target, env) == "http://low:3128"
    assert proxy_from_env(target, {**env, "NO_PROXY": "registry.test"}) is None
    assert proxy_from_env(target, {}) is None


def test_proxy_urls() -> None:
    p = parse_proxy_url("http://user:p%40ss@proxy.corp:3128")
    assert (p.host, p.port, p.url) == ("proxy.corp", 3128, "http://proxy.corp:3128")
    assert p.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert parse_proxy_url("proxy.corp").port == 1080
    with pytest.raises(FetchError):
        parse_proxy_url("socks5://proxy.corp:1080")


# --- verify_handshake -----------------------------------------------------------------


def test_verify_with_the_intermediate_alone_as_anchor(pki: PKI, server: TLSServer) -> None:
    verify_handshake(local(server.port), str(pki.paths.intermediate))
    verify_handshake(HostPort("localhost", server.port), str(pki.paths.intermediate))


def test_verify_with_the_root(pki: PKI, server: TLSServer) -> None:
    verify_handshake(local(server.port), str(pki.paths.root))


def test_verify_with_a_wrong_ca_fails(server: TLSServer, tmp_path: Path) -> None:
    other = make_pki(tmp_path)
    with pytest.raises(ApplyError) as caught:
        verify_handshake(local(server.port), str(other.paths.root))
    assert caught.value.kind == "verify-failed"
    assert "unable to get local issuer certificate" in caught.value.message


def test_verify_checks_the_host_name(pki: PKI, server: TLSServer) -> None:
    with pytest.raises(ApplyError, match=r"other\.test") as caught:
        verify_handshake(local(server.port), str(pki.paths.root), sni="other.test")
    assert caught.value.kind == "verify-failed"


def test_verify_ignores_ssl_cert_file(
    pki: PKI, server: TLSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variables a node does not have must not make a wrong CA pass."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.paths.root))
    monkeypatch.setenv("SSL_CERT_DIR", os.fspath(pki.paths.root.parent))
    other = make_pki(tmp_path)
    with pytest.raises(ApplyError):
        verify_handshake(local(server.port), str(other.paths.root))


def test_verify_missing_ca_file_fails_clearly(server: TLSServer, tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match="cannot load the CA file"):
        verify_handshake(local(server.port), str(tmp_path / "missing.pem"))


def test_verify_unreachable_server_fails(pki: PKI) -> None:
    with pytest.raises(ApplyError) as caught:
        verify_handshake(local(_closed_port()), str(pki.paths.root), timeout=2)
    assert caught.value.kind == "verify-failed"


def test_verify_through_a_proxy(pki: PKI, server: TLSServer) -> None:
    with ConnectProxy() as proxy:
        verify_handshake(local(server.port), str(pki.paths.root), proxy=proxy.hostport)
    assert proxy.targets == [f"127.0.0.1:{server.port}"]


def test_fetched_chain_is_a_value(server: TLSServer) -> None:
    fetched = fetch_chain(local(server.port))
    assert isinstance(fetched, FetchedChain)
    with pytest.raises(AttributeError):
        fetched.peer = "x"  # type: ignore[misc]
