"""Registry endpoints as validated values.

A host name reaches us from error messages, Events and the CLI, and later becomes a
directory name under certs.d. Everything is checked here, once, so nothing downstream can
be tricked into a path traversal or a NUL byte in a path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from agent.core.errors import InputError

DEFAULT_PORT = 443

# RFC 1123 labels, plus "_" which some internal registries use in practice.
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True, order=True)
class HostPort:
    """A TLS endpoint: lower-case DNS name or IP literal (no brackets) and a port."""

    host: str
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        _check_host(self.host)
        if not 1 <= self.port <= 65535:
            raise InputError(f"port {self.port} is out of range 1-65535", kind="bad-port")

    @property
    def is_ip(self) -> bool:
        return _ip(self.host) is not None

    @property
    def is_ipv6(self) -> bool:
        ip = _ip(self.host)
        return ip is not None and ip.version == 6

    @property
    def sni(self) -> str | None:
        """The TLS server name: none for an IP literal (RFC 6066 forbids it)."""
        return None if self.is_ip else self.host

    @property
    def bracketed(self) -> str:
        return f"[{self.host}]" if self.is_ipv6 else self.host

    @property
    def key(self) -> str:
        """Canonical `host:port`, always with the port (ledger, annotations, metrics)."""
        return f"{self.bracketed}:{self.port}"

    @property
    def reference(self) -> str:
        """The host as an image reference writes it: the port only when not 443.

        containerd and docker look up `certs.d/<this>`, so it names registry-scope dirs.
        """
        return self.bracketed if self.port == DEFAULT_PORT else self.key

    def __str__(self) -> str:
        return self.key


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_host(host: str) -> None:
    if not isinstance(host, str) or not host:
        raise InputError("empty host name", kind="bad-host")
    if _ip(host) is not None:
        if "%" in host:
            raise InputError(f"scoped IPv6 address {host!r} is not supported", kind="bad-host")
        return
    if len(host) > 253:
        raise InputError("host name longer than 253 characters", kind="bad-host")
    if host != host.lower():
        raise InputError(f"host name {host!r} must be lower case", kind="bad-host")
    for label in host.split("."):
        if not _LABEL.match(label):
            raise InputError(
                f"invalid host name {host!r}: label {label!r} is not letters, digits, '-' or '_'",
                kind="bad-host",
            )


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> HostPort:
    """Parse `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal.

    Names are lower-cased and a trailing dot dropped; anything that is not a plain DNS
    name or IP literal (scheme, path, user info, NUL, unicode) is an InputError.
    """
    raw = text.strip()
    if not raw or any(ord(c) < 0x21 or ord(c) > 0x7E for c in raw):
        raise InputError(f"invalid registry address {text!r}: empty or non-ASCII", kind="bad-host")
    if "/" in raw or "@" in raw or "\\" in raw:
        raise InputError(
            f"invalid registry address {text!r}: give host[:port], not a URL or path",
            kind="bad-host",
        )
    host, port_text = _split(raw, text)
    host = host.lower()
    ip = _ip(host)
    if ip is not None:
        host = str(ip)  # one spelling per address: "::0001" and "::1" are the same registry
    elif host.endswith("."):
        host = host[:-1]
    if port_text is None:
        port = default_port
    elif port_text.isdigit() and len(port_text) <= 5:
        port = int(port_text)
    else:
        raise InputError(f"invalid port {port_text!r} in {text!r}", kind="bad-port")
    return HostPort(host, port)


def _split(raw: str, text: str) -> tuple[str, str | None]:
    """`host[:port]`, `[v6][:port]` or a bare IPv6 literal -> (host, port text or None)."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise InputError(f"invalid registry address {text!r}: unclosed '['", kind="bad-host")
        host, rest = raw[1:end], raw[end + 1 :]
        if _ip(host) is None or ":" not in host:
            raise InputError(f"{host!r} in brackets is not an IPv6 address", kind="bad-host")
        if rest and not rest.startswith(":"):
            raise InputError(f"invalid registry address {text!r}", kind="bad-host")
        return host, (rest[1:] if rest else None)
    if raw.count(":") > 1:  # bare IPv6 literal
        if _ip(raw) is None:
            raise InputError(f"invalid registry address {text!r}", kind="bad-host")
        return raw, None
    if ":" in raw:
        host, port_text = raw.split(":", 1)
        return host, port_text
    return raw, None
