"""Network side of trust: fetch the chain a registry presents, and re-check it afterwards.

`fetch_chain` performs a TLS handshake with verification OFF (the whole point is to see a
chain nobody trusts yet) and returns the certificates exactly as sent. It is careful
about the ways a registry endpoint misbehaves in practice:

- one overall deadline for resolve + connect + proxy + handshake, enforced on a
  non-blocking socket, so a server that accepts and never speaks ends on time;
- the handshake runs over memory BIOs: we see the raw bytes, which lets an HTTP server
  or garbage be named as such and caps what a hostile server can make us read;
- HTTPS_PROXY / NO_PROXY are honoured with an HTTP CONNECT tunnel, NO_PROXY parsed the
  way curl does;
- only "could not connect" (refused, unreachable) is retried, with jitter; a timeout, an
  alert or a non-TLS answer will not change on retry and is reported at once.

`verify_handshake` is the proof after installation: a fresh handshake with the stdlib
`ssl` trusting ONLY the given CA file (never the default paths, so SSL_CERT_FILE cannot
help), partial chains allowed, host name checked.

This module is on the `ca-trust-agent fetch` path, whose whole-process time is measured
against `openssl s_client`: keep top-level imports light (tenacity and ssl are imported
only when needed, kubernetes never).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import errno
import ipaddress
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from agent.core.errors import ApplyError, FetchError
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo, cert_from_der

if TYPE_CHECKING:
    from cryptography import x509

MAX_CERTS = 16
MAX_HANDSHAKE_BYTES = 1 << 20
_MAX_PROXY_RESPONSE = 16384
_RECV = 65536


class Unset(enum.Enum):
    """Marker for "not given": None is a meaningful value (no SNI, no proxy)."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True)
class FetchedChain:
    target: HostPort
    certs: tuple[CertInfo, ...]  # as sent, leaf first
    peer: str  # "ip:port" actually connected (or the proxy)
    tls_version: str
    via_proxy: str | None


@dataclass(frozen=True)
class ProxyURL:
    url: str  # as configured, for messages (credentials removed)
    host: str
    port: int
    authorization: str | None  # "Basic ..." when the URL carries user:password


# --- deadline ------------------------------------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def left_or_timeout(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise FetchError(f"{what}: no answer within {self.seconds:g} s", kind="timeout")
        return left


# --- proxy configuration (pure) ------------------------------------------------------


def parse_proxy_url(text: str) -> ProxyURL:
    """`http://[user:pass@]host[:port]`; a bare `host:port` means http. Port default 1080
    (curl's). HTTPS proxies (TLS to the proxy itself) are not supported."""
    raw = text.strip()
    parts = urlsplit(raw if "://" in raw else "http://" + raw)
    if parts.scheme not in ("http", ""):
        raise FetchError(
            f"proxy {text!r}: only http:// proxies (HTTP CONNECT) are supported", kind="proxy"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise FetchError(f"proxy {text!r}: {exc}", kind="proxy") from exc
    if not host:
        raise FetchError(f"proxy {text!r} has no host", kind="proxy")
    auth = None
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(cred.encode()).decode()
    shown = f"http://{'[' + host + ']' if ':' in host else host}:{port or 1080}"
    return ProxyURL(shown, host, port or 1080, auth)


def _no_proxy_entry_matches(entry: str, target: HostPort) -> bool:
    port: int | None = None
    host = entry
    if host.startswith("["):  # [v6] or [v6]:port
        end = host.find("]")
        rest = host[end + 1 :]
        host = host[1:end]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif host.count(":") == 1:
        name, _, p = host.partition(":")
        if p.isdigit():
            host, port = name, int(p)
    if port is not None and port != target.port:
        return False
    host = host.lower().lstrip("*").lstrip(".").rstrip(".")
    if target.is_ip:
        try:
            return ipaddress.ip_address(target.host) in ipaddress.ip_network(host, strict=False)
        except ValueError:
            return False
    return target.host == host or target.host.endswith("." + host)


def no_proxy_matches(no_proxy: str, target: HostPort) -> bool:
    """curl's NO_PROXY: comma-separated names (suffix match, leading dot optional),
    IPs or CIDRs, optional `:port`; `*` alone bypasses the proxy for every host."""
    entries = [e.strip() for e in no_proxy.replace(" ", ",").split(",") if e.strip()]
    if "*" in entries:
        return True
    return any(_no_proxy_entry_matches(e, target) for e in entries)


def proxy_from_env(target: HostPort, env: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL for `target` from https_proxy/HTTPS_PROXY unless NO_PROXY excludes it
    (lower-case names first, as curl reads them)."""
    env = os.environ if env is None else env
    proxy = env.get("https_proxy") or env.get("HTTPS_PROXY")
    if not proxy:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    return None if no_proxy_matches(no_proxy, target) else proxy


# --- sockets -------------------------------------------------------------------------


def _fmt_addr(addr: tuple[object, ...]) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_AddrInfo = Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]]


def _resolve(host: str, port: int, deadline: _Deadline) -> _AddrInfo:
    """getaddrinfo within the deadline: it blocks in libc (a dead DNS server holds it for
    many seconds), so a name is resolved in a daemon thread we stop waiting for."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    outcome: list[_AddrInfo | OSError] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(deadline.left_or_timeout(f"resolving {host}"))
    if not outcome:
        raise FetchError(
            f"resolving {host}: no answer within {deadline.seconds:g} s", kind="timeout"
        )
    result = outcome[0]
    if isinstance(result, OSError):
        reason = result.strerror if isinstance(result, socket.gaierror) else str(result)
        raise FetchError(f"cannot resolve {host}: {reason}", kind="resolve") from result
    return result


def _connect(host: str, port: int, deadline: _Deadline) -> tuple[socket.socket, str]:
    """Non-blocking connect to each resolved address in order, sharing the deadline."""
    infos = _resolve(host, port, deadline)
    failures: list[str] = []
    timed_out = False
    for i, (family, kind, proto, _, addr) in enumerate(infos):
        # later addresses keep a fair share of the time: a black-holed first address
        # (typically IPv6) must not eat the whole deadline
        budget = deadline.left_or_timeout(f"connecting to {host}:{port}") / (len(infos) - i)
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # e.g. an IPv6 address on a host without IPv6
            failures.append(f"{_fmt_addr(addr)} {exc.strerror}")
            continue
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            _, ready, _ = select.select([], [sock], [], budget)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ready else -1
        if err == 0:
            return sock, _fmt_addr(addr)
        sock.close()
        if err == -1:
            timed_out = True
            failures.append(f"{_fmt_addr(addr)} timed out")
        else:
            failures.append(f"{_fmt_addr(addr)} {os.strerror(err).lower()}")
    detail = "; ".join(failures) or "no address"
    if timed_out and deadline.remaining() <= 0:
        raise FetchError(
            f"connecting to {host}:{port} timed out after {deadline.seconds:g} s ({detail})",
            kind="timeout",
        )
    raise FetchError(f"cannot connect to {host}:{port}: {detail}", kind="unreachable")


def _send_all(sock: socket.socket, data: bytes, deadline: _Deadline, what: str) -> None:
    view = memoryview(data)
    while view:
        _, ready, _ = select.select([], [sock], [], deadline.left_or_timeout(what))
        if not ready:
            continue
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise FetchError(f"{what}: connection lost ({exc.strerror})", kind="not-tls") from exc
        view = view[sent:]


def _recv(sock: socket.socket, deadline: _Deadline, what: str) -> bytes:
    while True:
        ready, _, _ = select.select([sock], [], [], deadline.left_or_timeout(what))
        if not ready:
            continue
        try:
            return sock.recv(_RECV)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return b""  # reported like a close: the caller knows what it was waiting for
        except OSError as exc:
            raise FetchError(f"{what}: connection lost ({exc.strerror})", kind="not-tls") from exc


def _tunnel(
    proxy: ProxyURL, target: HostPort, deadline: _Deadline
) -> tuple[socket.socket, str, bytes]:
    """Connect through an HTTP CONNECT proxy; returns the socket, the proxy address and
    any bytes the proxy forwarded after its response (normally none)."""
    try:
        sock, peer = _connect(proxy.host, proxy.port, deadline)
    except FetchError as exc:
        if exc.kind == "timeout":
            raise
        raise FetchError(f"proxy {proxy.url}: {exc}", kind="proxy") from exc
    try:
        request = f"CONNECT {target.key} HTTP/1.1\r\nHost: {target.key}\r\n"
        if proxy.authorization:
            request += f"Proxy-Authorization: {proxy.authorization}\r\n"
        what = f"CONNECT {target.key} via proxy {proxy.url}"
        _send_all(sock, (request + "\r\n").encode(), deadline, what)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = _recv(sock, deadline, what)
            if not chunk:
                raise FetchError(f"{what}: the proxy closed the connection", kind="proxy")
            response += chunk
            if len(response) > _MAX_PROXY_RESPONSE:
                raise FetchError(f"{what}: oversized proxy response", kind="proxy")
        head, _, rest = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or fields[1] != "200":
            raise FetchError(f"{what}: the proxy answered {status!r}", kind="proxy")
    except BaseException:
        sock.close()
        raise
    return sock, peer, rest


# --- TLS handshake -------------------------------------------------------------------


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


def _open(
    target: HostPort, proxy: ProxyURL | None, deadline: _Deadline
) -> tuple[socket.socket, str, bytes]:
    if proxy is None:
        sock, peer = _connect(target.host, target.port, deadline)
        return sock, peer, b""
    return _tunnel(proxy, target, deadline)


def _fetch_once(
    target: HostPort, sni: str | None, proxy: ProxyURL | None, deadline: _Deadline
) -> FetchedChain:
    sock, peer, early = _open(target, proxy, deadline)
    if proxy:
        where = f"{target.key} (via proxy {proxy.url})"
    else:
        where = target.key if peer == target.key else f"{target.key} ({peer})"
    with sock:
        certs, version = _handshake(sock, sni, deadline, where, early)
    if not certs:
        raise FetchError(f"{where} completed the handshake without a certificate", "empty-chain")
    if len(certs) > MAX_CERTS:
        raise FetchError(
            f"{where} sent {len(certs)} certificates; at most {MAX_CERTS} are accepted",
            kind="too-large",
        )
    infos = tuple(cert_from_der(c.public_bytes(Encoding.DER)) for c in certs)
    return FetchedChain(target, infos, peer, version, proxy.url if proxy else None)


def _resolve_proxy(target: HostPort, proxy: str | Unset | None) -> ProxyURL | None:
    url = proxy_from_env(target) if proxy is UNSET else proxy
    return parse_proxy_url(url) if url else None


def _retry_unreachable(
    attempt: Callable[[], FetchedChain], retries: int, deadline: _Deadline
) -> FetchedChain:
    """Retry an attempt that could not connect, with jittered backoff, within the deadline.

    tenacity is imported here, on the failure path only, to keep `fetch` fast.
    """
    import tenacity  # lazy: only the retry path pays for it

    def unreachable(exc: BaseException) -> bool:
        return isinstance(exc, FetchError) and exc.kind == "unreachable"

    time.sleep(max(0.0, min(random.uniform(0.05, 0.2), deadline.remaining())))
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(unreachable),
        stop=tenacity.stop_after_attempt(retries)
        | tenacity.stop_before_delay(max(deadline.remaining(), 0.0)),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=1.0),
        reraise=True,
    )
    return retrying(attempt)


def fetch_chain(
    target: HostPort,
    *,
    sni: str | Unset | None = UNSET,
    timeout: float = 10.0,
    proxy: str | Unset | None = UNSET,
    retries: int = 2,
) -> FetchedChain:
    """The certificates `target` presents, leaf first, exactly as sent.

    sni: name to send (default: the target's host name; none for an IP). proxy: URL of
    an HTTP CONNECT proxy, None for direct, default from HTTPS_PROXY/NO_PROXY.
    `timeout` bounds the whole operation including retries. FetchError kinds: resolve,
    unreachable, timeout, not-tls, tls-alert (the server speaks TLS but refused or
    could not agree), empty-chain, too-large, proxy.
    """
    deadline = _Deadline(timeout)
    server_name = target.sni if sni is UNSET else sni
    proxy_url = _resolve_proxy(target, proxy)

    def attempt() -> FetchedChain:
        return _fetch_once(target, server_name, proxy_url, deadline)

    try:
        return attempt()
    except FetchError as exc:
        if exc.kind != "unreachable" or retries <= 0 or deadline.remaining() <= 0:
            raise
    return _retry_unreachable(attempt, retries, deadline)


def verify_handshake(
    target: HostPort,
    cafile: str,
    *,
    sni: str | Unset | None = UNSET,
    timeout: float = 10.0,
    proxy: str | Unset | None = UNSET,
) -> None:
    """A fresh handshake that must succeed trusting ONLY `cafile`, or ApplyError.

    The host name checked is `sni` when given, else the target's host (an IP literal is
    checked against IP SANs). Partial chains are allowed: an intermediate alone is a
    valid anchor, as it is for containerd, docker and curl.
    """
    import ssl  # lazy: the fetch path never needs it

    name = sni if isinstance(sni, str) else target.host
    what = f"TLS verification of {target.key} with {cafile}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # unlike create_default_context: no defaults
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ApplyError(f"{what} failed: cannot load the CA file: {exc}", "verify-failed") from exc
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    deadline = _Deadline(timeout)
    try:
        sock, _, _ = _open(target, _resolve_proxy(target, proxy), deadline)
    except FetchError as exc:
        raise ApplyError(f"{what} failed: {exc}", kind="verify-failed") from exc
    try:
        sock.setblocking(True)
        sock.settimeout(max(deadline.remaining(), 0.001))
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            tls.version()
    except ssl.SSLCertVerificationError as exc:
        raise ApplyError(
            f"{what} failed: {exc.verify_message} (for {name})", kind="verify-failed"
        ) from exc
    except (OSError, ssl.SSLError) as exc:
        raise ApplyError(f"{what} failed: {exc}", kind="verify-failed") from exc
    finally:
        sock.close()
