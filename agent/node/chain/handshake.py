"""The TLS handshake with verification OFF, over memory BIOs: we see the raw bytes, which
lets an HTTP server or garbage be named as such and caps what a hostile server can make
us read.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

from OpenSSL import SSL

from agent.core.errors import FetchError
from agent.node.chain.sockets import _RECV, _Deadline, _recv, _send_all

if TYPE_CHECKING:
    from cryptography import x509

MAX_HANDSHAKE_BYTES = 1 << 20


def _reasons(exc: SSL.Error) -> str:
    args = exc.args[0] if exc.args else ""
    if isinstance(args, list):
        return "; ".join(str(item[2]) for item in args if len(item) > 2) or str(exc)
    return str(args or exc)


def _classify(exc: SSL.Error, first: bytes, where: str) -> FetchError:
    reason = _reasons(exc)
    if first[:1] == b"\x15" or "alert" in reason:
        return FetchError(f"{where} refused the TLS handshake: {reason}", kind="tls-alert")
    if "excessive message size" in reason:
        return FetchError(f"{where} sent an oversized certificate chain", kind="too-large")
    if first[:1] == b"\x16":
        # it speaks TLS but we could not agree (protocol version, ciphers)
        return FetchError(f"TLS handshake with {where} failed: {reason}", kind="tls-alert")
    return FetchError(_not_tls_message(where, first, reason), kind="not-tls")


def _not_tls_message(where: str, first: bytes, reason: str) -> str:
    if first.startswith(b"HTTP/"):
        line = first.split(b"\r\n", 1)[0].decode("latin-1")
        return f"{where} speaks plain HTTP, not TLS (it answered {line!r}); is this the HTTPS port?"
    if not first:
        return f"{where} closed the connection during the TLS handshake ({reason})"
    return f"{where} did not answer with TLS ({reason}); first bytes {first[:16]!r}"


def _flush(conn: SSL.Connection, sock: socket.socket, deadline: _Deadline, what: str) -> None:
    while True:
        try:
            out = conn.bio_read(_RECV)
        except SSL.WantReadError:
            return
        if not out:
            return
        _send_all(sock, out, deadline, what)


def _handshake(
    sock: socket.socket, sni: str | None, deadline: _Deadline, where: str, early: bytes
) -> tuple[list[x509.Certificate], str]:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    if sni:
        conn.set_tlsext_host_name(sni.encode("ascii"))
    what = f"TLS handshake with {where}"
    first = early[:64]
    received = len(early)
    pending = early
    while True:
        if pending:
            conn.bio_write(pending)
            pending = b""
        try:
            conn.do_handshake()
            break
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            # A registry that requires client certificates (mTLS) aborts after it showed
            # its chain (TLS 1.2); the chain is what we came for, so keep it.
            shown = conn.get_peer_cert_chain(as_cryptography=True)
            if shown:
                return list(shown), str(conn.get_protocol_version_name())
            raise _classify(exc, first, where) from exc
        _flush(conn, sock, deadline, what)
        pending = _recv(sock, deadline, what)
        if not pending:
            raise FetchError(_not_tls_message(where, first, "connection closed"), kind="not-tls")
        if len(first) < 64:
            first = (first + pending)[:64]
        received += len(pending)
        if received > MAX_HANDSHAKE_BYTES:
            raise FetchError(
                f"{where} sent more than {MAX_HANDSHAKE_BYTES} bytes during the handshake",
                kind="too-large",
            )
    # Send our Finished so the server completes politely; the chain is ours either way.
    with contextlib.suppress(FetchError):
        _flush(conn, sock, deadline, what)
    certs = conn.get_peer_cert_chain(as_cryptography=True) or []
    version = str(conn.get_protocol_version_name())
    return list(certs), version
