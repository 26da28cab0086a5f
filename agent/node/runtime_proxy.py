"""The proxy a runtime on this node uses for a registry: its systemd units, read-only.

containerd and dockerd take `HTTPS_PROXY` / `NO_PROXY` from their service environment, which
on a node is set in the unit or, usually, a drop-in such as
`/etc/systemd/system/containerd.service.d/http-proxy.conf`. This module finds those files the
way systemd does (a unit file from the first directory that has it; drop-ins from every
directory, a file name in a higher-priority directory masking the same name lower down, all
applied in file-name order), reads `EnvironmentFile=`s they name, and asks the pure rules
(agent.core.proxy_env) which proxy the runtime uses for a target. Nothing is written.

The agent's own environment is only a fallback, used when the unit sets none of the proxy
variables: the runtime, not the agent's pod, is who connects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.errors import StoreError
from agent.core.hostport import HostPort
from agent.core.proxy_env import (
    PROXY_VARIABLES,
    ProxyChoice,
    ServiceEnvironment,
    choose_proxy,
    parse_environment_file,
    service_environment,
)
from agent.core.runtime_kinds import BY_NAME
from agent.node.host import HostFS

# systemd's system unit search path, highest priority first
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
_UNIT_LIMIT = 256 * 1024


@dataclass(frozen=True)
class RuntimeProxy:
    runtime: str
    target: HostPort
    choice: ProxyChoice
    source: str  # "systemd" (the unit's environment), "agent environment" or "none"
    files: tuple[str, ...]  # the unit files read, in the order applied
    note: str = ""  # e.g. an EnvironmentFile that could not be read

    def describe(self) -> str:
        where = f" (from {self.source})" if self.source != "none" else ""
        return f"{self.runtime} connects to {self.target} {self.choice.describe()}{where}"


def unit_files(fs: HostFS, service: str) -> tuple[str, ...]:
    """The unit and its drop-ins, host paths in the order systemd applies them."""
    main = next((f"{d}/{service}" for d in UNIT_DIRS if _is_file(fs, f"{d}/{service}")), None)
    dropins: dict[str, str] = {}
    for directory in reversed(UNIT_DIRS):  # higher priority last: it masks the same name
        folder = f"{directory}/{service}.d"
        for name in fs.listdir(folder):
            if fnmatch.fnmatch(name, "*.conf") and _is_file(fs, f"{folder}/{name}"):
                dropins[name] = f"{folder}/{name}"
    ordered = [dropins[name] for name in sorted(dropins)]
    return tuple([main, *ordered] if main else ordered)


def _is_file(fs: HostFS, path: str) -> bool:
    return fs.exists(path) and not fs.is_dir(path)


def _read(fs: HostFS, path: str) -> str | None:
    try:
        data = fs.read_bytes(path, limit=_UNIT_LIMIT)
    except StoreError:
        return None
    return None if data is None else data.decode("utf-8", errors="replace")


def runtime_environment(fs: HostFS, runtime: str) -> tuple[dict[str, str], tuple[str, ...], str]:
    """(environment, files applied, note) of the runtime's service on the node."""
    files = unit_files(fs, f"{BY_NAME[runtime].systemd_unit}.service")
    units = [(path, text) for path in files if (text := _read(fs, path)) is not None]
    parsed: ServiceEnvironment = service_environment(units)
    env = parsed.as_dict()
    notes: list[str] = []
    for spec in parsed.environment_files:
        optional = spec.startswith("-")
        path = spec.removeprefix("-")
        text = _read(fs, path) if path.startswith("/") else None
        if text is None:
            if not optional:
                notes.append(f"EnvironmentFile {path} could not be read")
            continue
        env.update(parse_environment_file(text))  # systemd: these override Environment=
    return env, files, "; ".join(notes)


def runtime_proxy(
    fs: HostFS,
    runtime: str,
    target: HostPort,
    *,
    scheme: str = "https",
    fallback: Mapping[str, str] | None = None,
) -> RuntimeProxy:
    """How `runtime` connects to `target`: through which proxy, or directly and why."""
    env, files, note = runtime_environment(fs, runtime)
    source = "systemd"
    if not any(env.get(name) for name in PROXY_VARIABLES):
        env = {k: v for k, v in (fallback or {}).items() if k in PROXY_VARIABLES}
        source = "agent environment" if any(env.values()) else "none"
    return RuntimeProxy(
        runtime, target, choose_proxy(env, target, scheme=scheme), source, files, note
    )
