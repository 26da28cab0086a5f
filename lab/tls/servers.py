"""Loopback servers for the fetch/verify paths: a real TLS server and hostile imitations.

Every server binds 127.0.0.1 or ::1 on an ephemeral port, serves each connection in its
own thread and is a context manager that closes the listener and every open connection
on exit, so a test that fails half-way leaves no thread or socket behind.

- `TLSServer`: presents exactly the chain it is given (leaf only, leaf + intermediate,
  + root, a broken order...) and answers any request with a tiny HTTP response. It records
  the SNI each client sent.
- `SilentServer`: accepts and never speaks, so a TLS handshake never finishes.
- `GarbageServer`: answers with bytes that are not TLS.
- `PlainHTTPServer`: answers the ClientHello like an HTTP server (400 Bad Request).
- `AlertServer`: answers the ClientHello with a fatal TLS alert (handshake_failure).
- `ConnectProxy`: an HTTP CONNECT proxy that records each CONNECT target.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lab.tls.pki import Issued, PrivateKey

_IO_TIMEOUT = 5.0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def ipv6_loopback_available() -> bool:
    """True when ::1 can be bound (some containers run without IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _recv_until(conn: socket.socket, marker: bytes, limit: int = 65536) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class LoopbackServer:
    """Accept loop on a loopback address; subclasses implement `handle(conn)`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"lab servers listen on loopback only, not {host}")
        self.host = host
        self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self.accepted = 0

    # -- addresses -------------------------------------------------------------------
    @property
    def bracketed(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def hostport(self) -> str:
        """`127.0.0.1:PORT` or `[::1]:PORT`, as the CLI takes it."""
        return f"{self.bracketed}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Self:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            # shutdown wakes a handler blocked in recv; close alone would not
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(_IO_TIMEOUT)
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            # a long-lived lab server (the demo) must not accumulate finished threads
            self._threads = [*(x for x in self._threads if x.is_alive()), t]
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass  # clients hang up mid-handshake on purpose (fetch never sends a request)
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


def _cert_pem(cert: x509.Certificate | Issued) -> bytes:
    if isinstance(cert, Issued):
        return cert.pem
    return cert.public_bytes(serialization.Encoding.PEM)


class TLSServer(LoopbackServer):
    """Presents `chain` (leaf first, sent exactly as given) with `key` (the leaf's)."""

    def __init__(
        self,
        chain: Sequence[x509.Certificate | Issued],
        key: PrivateKey | Issued,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        body: bytes = b"ok\n",
        max_version: ssl.TLSVersion | None = None,
        client_ca: Issued | None = None,
    ) -> None:
        """`max_version` caps the protocol (e.g. TLSv1_2); `client_ca` makes the server
        demand a client certificate issued by it (a registry with mutual TLS)."""
        super().__init__(host, port)
        if isinstance(key, Issued):
            key = key.key
        self.body = body
        self.server_names: list[str | None] = []
        self.handshakes = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="lab-tls-")
        certfile = Path(self._tmp.name) / "chain.pem"
        keyfile = Path(self._tmp.name) / "key.pem"
        certfile.write_bytes(b"".join(_cert_pem(c) for c in chain))
        keyfile.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # The extra certificates in the file are sent as they are: the server has no
        # trust store to build a chain from, so what the test gives is what goes out.
        ctx.load_cert_chain(str(certfile), str(keyfile))
        ctx.sni_callback = self._on_sni
        if max_version is not None:
            ctx.maximum_version = max_version
        if client_ca is not None:
            ctx.load_verify_locations(cadata=client_ca.pem.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx = ctx

    def _on_sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        with self._lock:
            self.server_names.append(name)

    def stop(self) -> None:
        super().stop()
        self._tmp.cleanup()

    def handle(self, conn: socket.socket) -> None:
        with self._ctx.wrap_socket(conn, server_side=True) as tls:
            with self._lock:
                self.handshakes += 1
            request = _recv_until(tls, b"\r\n\r\n")
            if not request:
                return
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(self.body)).encode() + b"\r\n\r\n" + self.body
            )


class SilentServer(LoopbackServer):
    """Accepts TCP and never answers: the TLS handshake can only end by a deadline."""

    def handle(self, conn: socket.socket) -> None:
        self._stop.wait()


class GarbageServer(LoopbackServer):
    """Answers whatever arrives with bytes no TLS stack can parse."""

    GARBAGE = b"\x00\xff\x13garbage, not a TLS record\r\n" * 8

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(self.GARBAGE)
        self._stop.wait(1.0)


class PlainHTTPServer(LoopbackServer):
    """An HTTP (not HTTPS) server: the ClientHello gets a 400 and the connection closes."""

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)
        body = b"Client sent an HTTP request to an HTTP server\n"
        conn.sendall(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )


class AlertServer(LoopbackServer):
    """Answers the ClientHello with a fatal alert, like a server with no usable cipher."""

    # record type 21 (alert), TLS 1.2 record version, length 2, level fatal(2),
    # description handshake_failure(40)
    ALERT = b"\x15\x03\x03\x00\x02\x02\x28"

    def handle(self, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(self.ALERT)
        self._stop.wait(1.0)


class ConnectProxy(LoopbackServer):
    """An HTTP CONNECT proxy for loopback targets; `targets` records each request target.

    `status` other than 200 refuses every CONNECT with that status (proxy error paths).
    `hosts` maps names to addresses for the proxy alone, as a corporate proxy resolves
    names the node cannot. Targets must be loopback: a test can never tunnel off the
    machine.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        status: int = 200,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.status = status
        self.hosts = dict(hosts or {})
        self.targets: list[str] = []

    def _loopback_address(self, name: str) -> str | None:
        """Where to connect for `name`: the `hosts` override (so a test can use names
        like registry.test that only the proxy resolves), else DNS; loopback only."""
        name = self.hosts.get(name, name)
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except OSError:
            return None
        addrs = [str(info[4][0]) for info in infos]
        if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
            return None
        return addrs[0]

    def handle(self, conn: socket.socket) -> None:
        head = _recv_until(conn, b"\r\n\r\n", limit=16384)
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or parts[0] != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        target = parts[1]
        with self._lock:
            self.targets.append(target)
        if self.status != 200:
            conn.sendall(f"HTTP/1.1 {self.status} Refused\r\nContent-Length: 0\r\n\r\n".encode())
            return
        name, _, port = target.rpartition(":")
        host = self._loopback_address(name.strip("[]"))
        if host is None:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((host, int(port)), timeout=_IO_TIMEOUT)
        except (OSError, ValueError):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            with self._lock:
                self._conns.add(upstream)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(conn, upstream)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(b, a), daemon=True)
        back.start()
        pump(a, b)
        back.join(timeout=_IO_TIMEOUT)
        with self._lock:
            self._conns.discard(b)
