"""The HTTPS proxy: which one applies (HTTPS_PROXY / NO_PROXY, parsed the way curl does)
and the HTTP CONNECT tunnel through it.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from agent.core.errors import FetchError
from agent.core.hostport import HostPort
from agent.node.chain.sockets import _connect, _Deadline, _recv, _send_all

_MAX_PROXY_RESPONSE = 16384


@dataclass(frozen=True)
class ProxyURL:
    url: str  # as configured, for messages (credentials removed)
    host: str
    port: int
    authorization: str | None  # "Basic ..." when the URL carries user:password


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


# --- CONNECT tunnel ------------------------------------------------------------------


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
