"""Fetching a registry's chain the way the runtime connects to it: through the runtime's
proxy (its systemd environment, agent.node.runtime_proxy), else the agent's own.

Behind a TLS-inspecting proxy the runtime's connection goes through `CONNECT` and is shown
the proxy's re-signed chain; a direct connection from the agent would see another chain (or
none, where only the proxy reaches out). So the chain that decides an interception install,
and the handshake that verifies it, take the runtime's route, and the Event says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from agent.core.hostport import HostPort
from agent.core.proxy_env import PROXY_VARIABLES, choose_proxy
from agent.core.runtime_kinds import BY_NAME
from agent.node.host import HostFS
from agent.node.runtime_proxy import RuntimeProxy, runtime_proxy

if TYPE_CHECKING:
    from agent.core.trust import CertInfo

# (target, proxy URL or None for direct, timeout) -> the chain as sent, leaf first
ChainFetcher = Callable[[HostPort, str | None, float], Sequence["CertInfo"]]


def runtime_route(
    fs: HostFS, runtimes: Sequence[str], target: HostPort, env: Mapping[str, str]
) -> RuntimeProxy:
    """How the node's runtime reaches `target`: its unit's proxy settings, falling back to
    `env` (the agent's environment) when the unit sets none or no runtime is known."""
    runtime = next((rt for rt in runtimes if rt in BY_NAME), None)
    if runtime is not None:
        return runtime_proxy(fs, runtime, target, fallback=env)
    own = {k: v for k, v in env.items() if k in PROXY_VARIABLES}
    source = "agent environment" if any(own.values()) else "none"
    return RuntimeProxy("the runtime", target, choose_proxy(own, target), source, ())


def fetch_through(target: HostPort, proxy: str | None, timeout: float) -> tuple[CertInfo, ...]:
    """The chain `target` presents, through `proxy` (None: a direct connection)."""
    from agent.node.chain import fetch_chain

    return fetch_chain(target, proxy=proxy, timeout=timeout).certs
