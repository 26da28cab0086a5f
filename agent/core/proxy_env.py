"""A runtime's proxy, as the runtime itself decides it: systemd units in, Go's rules out.

Behind an explicit proxy containerd and dockerd never connect to a registry themselves: Go's
`http.ProxyFromEnvironment` sends `CONNECT host:port` to the proxy named by `HTTPS_PROXY`
unless `NO_PROXY` exempts the host. On a node those variables come from the service's
systemd unit and its drop-ins (`/etc/systemd/system/containerd.service.d/http-proxy.conf`:
`Environment="HTTPS_PROXY=http://proxy:3128" "NO_PROXY=10.0.0.0/8,.corp"`), so the agent,
to see the chain the runtime is shown, must read the same files and apply the same rules.

Two pure parts:
- `service_environment(units)`: the environment `Environment=` lines give, in systemd's order
  (the unit, then drop-ins sorted by file name, later assignments overriding earlier ones, an
  empty `Environment=` clearing the list), with systemd's word splitting (quotes anywhere in
  a word, C escapes, `%%`); `EnvironmentFile=` paths are listed for the caller to read
  (`parse_environment_file`), whose values override `Environment=` as in systemd;
- `choose_proxy(env, target)`: Go's golang.org/x/net/http/httpproxy: `HTTPS_PROXY` before
  `https_proxy` (the first non-empty), no fallback to `HTTP_PROXY` for https, a URL without
  scheme taken as http://, localhost and loopback never proxied, and `NO_PROXY` entries as Go
  matches them: `*`, domain suffixes (`corp`, `.corp`, `*.corp`), IPs, CIDRs, each with an
  optional port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.core.hostport import HostPort

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "s": " ", "a": "\a"}
_ENV_NAME_FIRST = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ENV_NAME = _ENV_NAME_FIRST | set("0123456789")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@dataclass(frozen=True)
class ServiceEnvironment:
    env: tuple[tuple[str, str], ...]  # final assignments, in first-set order
    sources: tuple[tuple[str, str], ...]  # variable -> the file whose line set it last
    environment_files: tuple[str, ...]  # EnvironmentFile= paths ("-" prefix: optional)
    ignored: tuple[str, ...]  # assignments systemd would reject, quoted for the report

    def as_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class ProxyChoice:
    proxy: str | None  # the proxy URL the runtime uses for the target; None: direct
    variable: str | None  # which variable named it (HTTPS_PROXY, https_proxy, ...)
    bypass: str | None  # the NO_PROXY entry (or rule) that made the connection direct

    def describe(self) -> str:
        if self.proxy is not None:
            return f"through the proxy {self.proxy} ({self.variable})"
        if self.bypass is not None:
            return f"direct ({self.bypass})"
        return "direct (no proxy configured)"


# -- systemd ----------------------------------------------------------------------------------
def split_words(value: str) -> list[str]:
    """systemd's extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE) over a whole value:
    whitespace separates words, quotes may open anywhere in a word, backslash escapes."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote: str | None = None
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            word.append(_ESCAPES.get(value[i + 1], value[i + 1]))
            in_word = True
            i += 2
            continue
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                word.append(ch)
        elif ch in "\"'":
            quote = ch
            in_word = True
        elif ch in " \t\n":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(word))
    return words


def _valid_name(name: str) -> bool:
    return bool(name) and name[0] in _ENV_NAME_FIRST and all(c in _ENV_NAME for c in name)


def _service_lines(text: str) -> list[tuple[str, str]]:
    """(key, value) of the [Service] section, continuation lines joined."""
    out: list[tuple[str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def service_environment(units: Sequence[tuple[str, str]]) -> ServiceEnvironment:
    """The environment from (path, text) unit files, already in systemd's order."""
    env: dict[str, str] = {}
    sources: dict[str, str] = {}
    files: list[str] = []
    ignored: list[str] = []
    for path, text in units:
        for key, value in _service_lines(text):
            if key == "Environment":
                if not value:  # an empty assignment resets the list
                    env.clear()
                    sources.clear()
                    continue
                for word in split_words(value.replace("%%", "%")):
                    name, eq, val = word.partition("=")
                    if not eq or not _valid_name(name):
                        ignored.append(f"{path}: {word!r}")
                        continue
                    env[name] = val
                    sources[name] = path
            elif key == "EnvironmentFile":
                if not value:
                    files.clear()
                else:
                    files.extend(split_words(value))
    return ServiceEnvironment(
        tuple(env.items()), tuple(sources.items()), tuple(files), tuple(ignored)
    )


def parse_environment_file(text: str) -> dict[str, str]:
    """An EnvironmentFile: `KEY=VALUE` lines, `#`/`;` comments, optional quotes, `export`."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        line = line.removeprefix("export ").strip()
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not _valid_name(name):
            continue
        words = split_words(value.strip())
        env[name] = " ".join(words) if words else ""
    return env


# -- Go's httpproxy ---------------------------------------------------------------------------
def _first(env: Mapping[str, str], *names: str) -> tuple[str | None, str]:
    for name in names:
        value = env.get(name, "")
        if value:
            return name, value
    return None, ""


def _proxy_url(value: str) -> str:
    return value if "://" in value else f"http://{value}"


def _split_entry(entry: str) -> tuple[str, str]:
    """An entry's host and port, as net.SplitHostPort accepts them; no port: ""."""
    if entry.startswith("["):
        close = entry.find("]")
        if close > 0 and entry[close + 1 : close + 2] == ":":
            return entry[1:close], entry[close + 2 :]
        return entry.strip("[]"), ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def no_proxy_match(no_proxy: str, target: HostPort) -> str | None:
    """The NO_PROXY entry exempting `target` (Go's matching), or None."""
    host = target.host.lower().strip("[]")
    port = str(target.port)
    ip = _as_ip(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return entry
        try:
            net = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
        except ValueError:
            net = None
        if net is not None:
            if ip is not None and ip in net:
                return entry
            continue
        phost, pport = _split_entry(entry)
        pip = _as_ip(phost)
        if pip is not None:
            if ip is not None and ip == pip and pport in ("", port):
                return entry
            continue
        if phost.startswith("*."):
            phost = phost[1:]
        exact = not phost.startswith(".")
        suffix = phost if not exact else "." + phost
        if (host.endswith(suffix) or (exact and host == phost)) and pport in ("", port):
            return entry
    return None


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def choose_proxy(env: Mapping[str, str], target: HostPort, *, scheme: str = "https") -> ProxyChoice:
    """The proxy Go's ProxyFromEnvironment picks for `scheme://target`, from `env`."""
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    variable, value = _first(env, *names)
    if variable is None:
        return ProxyChoice(None, None, None)
    host = target.host.lower().strip("[]")
    ip = _as_ip(host)
    if host == "localhost" or (ip is not None and ip.is_loopback):
        return ProxyChoice(None, None, "loopback is never proxied")
    no_variable, no_proxy = _first(env, "NO_PROXY", "no_proxy")
    entry = no_proxy_match(no_proxy, target)
    if entry is not None:
        return ProxyChoice(None, None, f"{no_variable} entry {entry!r}")
    return ProxyChoice(_proxy_url(value), variable, None)
