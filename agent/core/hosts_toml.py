"""Adding our CA to a containerd `hosts.toml` someone else manages (policy `hostsToml: append`).

A hosts.toml that containerd obeys makes it ignore the `*.crt` files beside it, so on nodes
whose certs.d is managed that way (mirrors, Spegel, hand-written configs) the CA must be named
in the file itself. The edit is the smallest one that does it: one line, `ca = ["<our file>"]`,
in the table of the host whose chain we trust (the top level when that host is the file's
`server`, or the registry itself when no server is named). The original bytes are kept in the
ledger, and `remove` puts them back byte for byte. Anything this cannot do exactly — a table
that already names a CA, a host the file does not mention — is refused with the reason.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from agent.core.errors import InputError, StoreError
from agent.core.hostport import HostPort, parse_hostport

MARK = "# added by ca-trust-agent; `ca-trust-agent remove` restores the original file"


def _url_host(url: str) -> HostPort | None:
    """`https://host:port/v2` (or `host:port`) -> HostPort; None when it names no host."""
    scheme, sep, rest = url.partition("://")
    authority = (rest if sep else scheme).split("/", 1)[0]
    try:
        return parse_hostport(authority) if authority else None
    except InputError:  # a value we cannot read names no host
        return None


def _same(a: HostPort | None, b: HostPort) -> bool:
    return a is not None and a.host == b.host and a.port == b.port


def _target(doc: Mapping[str, Any], endpoint: HostPort, registry: HostPort) -> str | None:
    """The TOML header of the table to edit ("" = top level), or None when not named."""
    hosts = doc.get("host")
    if isinstance(hosts, Mapping):
        for url in hosts:
            if _same(_url_host(str(url)), endpoint):
                return f'[host."{url}"]'
    server = doc.get("server")
    if isinstance(server, str):
        return "" if _same(_url_host(server), endpoint) else None
    return "" if _same(registry, endpoint) else None


def _table(doc: Mapping[str, Any], header: str) -> Mapping[str, Any]:
    if not header:
        return doc
    url = header[len('[host."') : -len('"]')]
    table = doc["host"][url]
    return table if isinstance(table, Mapping) else {}


def append_ca(original: bytes, endpoint: HostPort, registry: HostPort, ca_path: str) -> bytes:
    """`original` with `ca = ["ca_path"]` added for `endpoint`; StoreError("conflict") when
    that cannot be done exactly."""
    where = f"hosts.toml for {registry.reference}"
    try:
        text = original.decode("utf-8")
        doc = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StoreError(f"{where} is not valid TOML: {exc}", kind="conflict") from exc
    header = _target(doc, endpoint, registry)
    if header is None:
        raise StoreError(
            f"{where} does not name {endpoint.key} (neither as server nor as a [host] table); "
            "ca-trust-agent will not guess where its CA belongs",
            kind="conflict",
        )
    if "ca" in _table(doc, header):
        raise StoreError(
            f"{where} already names a CA for {endpoint.key} ({_table(doc, header)['ca']!r}); "
            f"add {ca_path} to that list yourself",
            kind="conflict",
        )
    line = f'ca = ["{ca_path}"]  {MARK}\n'
    edited = _insert(text, header, line, where)
    if _without_ca(tomllib.loads(edited), header) != doc:
        raise StoreError(f"could not add our CA to {where} exactly", kind="conflict")
    return edited.encode("utf-8")


def _without_ca(doc: dict[str, Any], header: str) -> dict[str, Any] | None:
    """The parsed edit minus our one key: must equal the original, else the edit was wrong."""
    table = _table(doc, header)
    if table.get("ca") is None or not isinstance(table, dict):
        return None
    del table["ca"]
    return doc


def _is_header(raw: str, header: str) -> bool:
    text = raw.strip()
    if not text.startswith("[") or text.startswith("[["):
        return False
    try:  # a header line alone parses as its (empty) table: compare tables, not spellings
        return tomllib.loads(text) == tomllib.loads(header)
    except tomllib.TOMLDecodeError:
        return False


def _insert(text: str, header: str, line: str, where: str) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if header:
        found = [i for i, raw in enumerate(lines) if _is_header(raw, header)]
        if len(found) != 1:
            raise StoreError(f"cannot find the {header} line in {where}", kind="conflict")
        at = found[0] + 1
    else:  # top level: before the first table header
        at = next((i for i, raw in enumerate(lines) if raw.lstrip().startswith("[")), len(lines))
    return "".join([*lines[:at], line, *lines[at:]])
