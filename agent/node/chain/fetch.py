"""The two operations: `fetch_chain` (connect, directly or through the proxy, and take
the chain as sent, retrying only "could not connect") and `verify_handshake` (the proof
after installation, with the stdlib `ssl` trusting only the given CA file).
"""

from __future__ import annotations

import enum
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding

from agent.core.errors import ApplyError, FetchError
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo, cert_from_der
from agent.node.chain.handshake import _handshake
from agent.node.chain.proxy import ProxyURL, _tunnel, parse_proxy_url, proxy_from_env
from agent.node.chain.sockets import _connect, _Deadline

MAX_CERTS = 16


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
