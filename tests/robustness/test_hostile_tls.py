"""Hostile TLS servers on loopback: every fetch ends by its deadline, with a named error and
bounded memory, and nothing is written to the node.

Each server is met three ways: `agent.node.chain.fetch_chain` in this process, `ca-trust-agent
fetch --timeout 2` and `ca-trust-agent install --timeout 2` as real processes (their peak RSS
read with os.wait4). The deadline is a correctness property of the agent — a DaemonSet
whose fetch hangs stops remediating — so the wall time is checked, loosely: well inside
twice the deadline, interpreter start included. Numbers are printed for the record.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.core.errors import FetchError
from agent.core.hostport import parse_hostport
from agent.node.chain import fetch_chain
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import (
    AlertServer,
    GarbageServer,
    LoopbackServer,
    PlainHTTPServer,
    SilentServer,
    TLSServer,
)

pytestmark = pytest.mark.integration

TIMEOUT = 2.0
WALL_BOUND = 2 * TIMEOUT  # "ends well before twice the deadline", process start included
RSS_BOUND_KB = 150 * 1024  # generous: the CLI alone peaks near 40 MB


# --- hostile servers ----------------------------------------------------------------------


class TrickleServer(LoopbackServer):
    """Reads the ClientHello, then sends a plausible TLS record one byte every 0.5 s."""

    HEADER = b"\x16\x03\x03\x40\x00\x02\x00\x3f\xfc\x03\x03"

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)
        sent = 0
        while not self._stop.wait(0.5):
            byte = self.HEADER[sent : sent + 1] or b"\x00"
            conn.sendall(byte)
            sent += 1


class VerifyTrickleServer(TLSServer):
    """An honest TLS server for the first handshake (the fetch), a trickle for every later
    one (the post-install verification): a registry that turns hostile half-way."""

    def handle(self, conn: socket.socket) -> None:
        with self._lock:
            first = self.handshakes == 0
            self.handshakes += 1
        if first:
            super().handle(conn)
            return
        conn.recv(4096)
        # A valid record header announcing 16 KiB, then the body one byte at a time.
        sent = 0
        while not self._stop.wait(0.5):
            conn.sendall(TrickleServer.HEADER[sent : sent + 1] or b"\x00")
            sent += 1


class EndlessHeaderProxy(LoopbackServer):
    """An HTTP proxy that answers CONNECT with a status line and headers that never end."""

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                conn.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")


class RefusingProxy(LoopbackServer):
    """An HTTP proxy that refuses every CONNECT."""

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def long_chain(n: int) -> tuple[list[x509.Certificate], pki.Issued]:
    """A real chain of `n` certificates: root, n-2 intermediates, leaf; leaf first."""
    issuer = pki.make_ca("Long Root")
    cas = [issuer]
    for i in range(n - 2):
        issuer = pki.make_ca(f"Long Intermediate {i}", issuer=issuer)
        cas.append(issuer)
    leaf = pki.make_leaf(issuer, names=("registry.test",), ips=("127.0.0.1",))
    return [leaf.cert, *(c.cert for c in reversed(cas))], leaf


def huge_leaf(size: int) -> pki.Issued:
    """A self-signed leaf carrying `size` bytes in a private, non-critical extension."""
    key = pki.new_key()
    now = pki.utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("huge"))
        .issuer_name(_name("huge"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - pki.DAY)
        .not_valid_after(now + 30 * pki.DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x04" + b"\x00" * size
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return pki.Issued(cert, key)


def looping_chain() -> tuple[list[x509.Certificate], pki.Issued]:
    """A issued by B, B issued by A (each signed by the other's key), leaf issued by A."""
    key_a, key_b = pki.new_key(), pki.new_key()
    now = pki.utcnow()

    def ca(
        subject: str, issuer: str, public: pki.PrivateKey, signer: pki.PrivateKey
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(public.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - pki.DAY)
            .not_valid_after(now + 365 * pki.DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .sign(signer, hashes.SHA256())
        )

    cert_a = ca("Loop A", "Loop B", key_a, key_b)
    cert_b = ca("Loop B", "Loop A", key_b, key_a)
    leaf = pki.make_leaf(pki.Issued(cert_a, key_a), names=("registry.test",), ips=("127.0.0.1",))
    return [leaf.cert, cert_a, cert_b], leaf


# --- running the CLI with its peak memory ---------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    out: dict[str, object]
    seconds: float
    max_rss_kb: int

    @property
    def kind(self) -> str:
        error = self.out.get("error")
        return str(error.get("kind")) if isinstance(error, dict) else ""


# Linux carries a process's peak RSS across exec(), so a child forked from this (large)
# pytest process would report at least our size. A small launcher forks the CLI from a
# fresh interpreter instead and hands back the CLI's own ru_maxrss from os.wait4.
LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = 0
with open(sys.argv[1], "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "rss": usage.ru_maxrss}, fh)
"""


def run_cli(*args: str) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "rusage.json")
        start = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                LAUNCHER,
                report,
                sys.executable,
                "-m",
                "agent",
                *args,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        seconds = time.monotonic() - start
        with open(report, encoding="utf-8") as fh:
            usage = json.load(fh)
    data = json.loads(out.stdout) if out.stdout.strip() else {}
    return Run(usage["code"], data, seconds, usage["rss"])


def in_process_fetch(hostport: str, proxy: str | None = None) -> tuple[str, float]:
    start = time.monotonic()
    try:
        fetch_chain(parse_hostport(hostport), timeout=TIMEOUT, proxy=proxy)
    except FetchError as exc:
        return exc.kind, time.monotonic() - start
    return "fetched", time.monotonic() - start


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    node_root(root)
    return root


PRESET_TREE = ["etc", "etc/containerd", "etc/containerd/config.toml", "etc/os-release"]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- the servers, and what each must end with --------------------------------------------

ServerMaker = Callable[[], LoopbackServer]


def _tls(chain_and_key: Callable[[], tuple[list[x509.Certificate], pki.Issued]]) -> ServerMaker:
    def make() -> LoopbackServer:
        chain, key = chain_and_key()
        return TLSServer(chain, key)

    return make


def _huge() -> tuple[list[x509.Certificate], pki.Issued]:
    leaf = huge_leaf(5 << 20)
    return [leaf.cert], leaf


HOSTILE: dict[str, tuple[ServerMaker, set[str], set[str]]] = {
    # name: (server, fetch_chain kinds, CLI exit-kinds accepted)
    "handshake-never-finishes": (SilentServer, {"timeout"}, {"timeout"}),
    "one-byte-per-half-second": (TrickleServer, {"timeout"}, {"timeout"}),
    "garbage": (GarbageServer, {"not-tls"}, {"not-tls"}),
    "plain-http": (PlainHTTPServer, {"not-tls"}, {"not-tls"}),
    "tls-alert": (AlertServer, {"tls-alert"}, {"tls-alert"}),
    "chain-of-100-certificates": (_tls(lambda: long_chain(100)), {"too-large"}, {"too-large"}),
    "5-MiB-certificate": (_tls(_huge), {"too-large"}, {"too-large"}),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_server_ends_by_the_deadline_with_a_named_error(
    name: str, host_root: Path
) -> None:
    make, fetch_kinds, cli_kinds = HOSTILE[name]
    with make() as server:
        kind, seconds = in_process_fetch(server.hostport)
        fetched = run_cli("fetch", server.hostport, "--timeout", str(TIMEOUT))
        installed = run_cli(
            "install",
            server.hostport,
            "--timeout",
            str(TIMEOUT),
            "--host-root",
            str(host_root),
            "--runtime",
            "containerd",
            "--runner",
            "direct",
        )
    print(
        f"{name}: fetch_chain {kind} in {seconds:.2f}s; CLI fetch exit {fetched.code} "
        f"{fetched.kind} in {fetched.seconds:.2f}s, {fetched.max_rss_kb // 1024} MB; CLI install "
        f"exit {installed.code} {installed.kind} in {installed.seconds:.2f}s, "
        f"{installed.max_rss_kb // 1024} MB"
    )
    assert kind in fetch_kinds
    assert seconds < WALL_BOUND
    for run in (fetched, installed):
        assert run.code == FetchError.exit_code, run
        assert run.kind in cli_kinds, run
        assert run.seconds < WALL_BOUND, run
        assert run.max_rss_kb < RSS_BOUND_KB, run
    assert tree(host_root) == PRESET_TREE, "a failed fetch wrote to the node"


def test_a_chain_that_loops_ends_with_a_verdict(host_root: Path) -> None:
    """A issued by B issued by A: path building must terminate. Anchoring the topmost CA
    sent (B) gives a valid path leaf <- A <- B, so trusting B is a sound verdict; what
    matters is that it is reached at once and that it verifies afterwards."""
    with _tls(looping_chain)() as server:
        kind, seconds = in_process_fetch(server.hostport)
        fetched = run_cli("fetch", server.hostport, "--timeout", str(TIMEOUT))
        installed = run_cli(
            "install",
            server.hostport,
            "--timeout",
            str(TIMEOUT),
            "--host-root",
            str(host_root),
            "--runtime",
            "containerd",
            "--runner",
            "direct",
        )
    print(
        f"loop: fetch_chain {kind} in {seconds:.2f}s; CLI fetch exit {fetched.code} in "
        f"{fetched.seconds:.2f}s; CLI install exit {installed.code} {installed.out.get('status')}"
        f" in {installed.seconds:.2f}s, {installed.max_rss_kb // 1024} MB"
    )
    assert kind == "fetched" and seconds < WALL_BOUND
    assert fetched.code in (0, 4) and fetched.seconds < WALL_BOUND
    assert installed.seconds < WALL_BOUND and installed.max_rss_kb < RSS_BOUND_KB
    if installed.code == 0:
        assert installed.out["verified"] is True
        anchor = installed.out["anchor"]
        assert isinstance(anchor, dict) and "Loop" in str(anchor["subject"])
    else:
        assert installed.code == 4 and installed.kind, installed


PROXIES: dict[str, tuple[type[LoopbackServer], str]] = {
    # name: (proxy server, kind); the proxy is the hostile party, the registry is fine
    "proxy-never-answers": (SilentServer, "timeout"),
    "proxy-headers-never-end": (EndlessHeaderProxy, "proxy"),
    "proxy-refuses": (RefusingProxy, "proxy"),
    "proxy-speaks-garbage": (GarbageServer, "proxy"),
}


@pytest.mark.parametrize("name", list(PROXIES))
def test_a_hostile_proxy_ends_by_the_deadline_with_a_named_error(name: str, tmp_path: Path) -> None:
    proxy_cls, expected = PROXIES[name]
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    with TLSServer(ca.chain, ca.leaf) as registry, proxy_cls() as proxy:
        url = f"http://{proxy.hostport}"
        kind, seconds = in_process_fetch(registry.hostport, proxy=url)
        run = run_cli("fetch", registry.hostport, "--timeout", str(TIMEOUT), "--proxy", url)
    print(
        f"{name}: fetch_chain {kind} in {seconds:.2f}s; CLI fetch exit {run.code} {run.kind} "
        f"in {run.seconds:.2f}s, {run.max_rss_kb // 1024} MB"
    )
    assert kind == expected and seconds < WALL_BOUND
    assert run.code == FetchError.exit_code and run.kind == expected, run
    assert run.seconds < WALL_BOUND and run.max_rss_kb < RSS_BOUND_KB, run


def test_install_honours_the_deadline_when_the_server_turns_hostile_for_verification(
    tmp_path: Path, host_root: Path
) -> None:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    with VerifyTrickleServer(ca.chain, ca.leaf) as server:
        run = run_cli(
            "install",
            server.hostport,
            "--timeout",
            str(TIMEOUT),
            "--scope",
            "registry",
            "--host-root",
            str(host_root),
            "--runtime",
            "containerd",
            "--runner",
            "direct",
        )
    print(f"verify trickle: exit {run.code} {run.kind} in {run.seconds:.2f}s")
    assert run.code == 7 and run.kind == "verify-failed", run  # rolled back
    assert not [p for p in tree(host_root) if "ca-trust-agent-" in p], tree(host_root)
    assert run.seconds < WALL_BOUND, run
