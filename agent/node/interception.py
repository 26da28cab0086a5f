"""Fetching a registry's chain the way the runtime connects to it: through the runtime's
proxy (its systemd environment, agent.node.runtime_proxy), else the agent's own.

Behind a TLS-inspecting proxy the runtime's connection goes through `CONNECT` and is shown
the proxy's re-signed chain; a direct connection from the agent would see another chain (or
none, where only the proxy reaches out). So the chain that decides an interception install,
and the handshake that verifies it, take the runtime's route, and the Event says which.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
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


DEFAULT_DIR = HostPort("_default")  # containerd's certs.d/_default/: hosts without a directory


def standing_targets(
    fs: HostFS,
    runtimes: Sequence[str],
    covered: Callable[[HostPort], bool],
    *,
    everything: bool,
    managed: Collection[str],
) -> tuple[HostPort, ...]:
    """Where containerd needs the proxy CA before any pull fails (docs/interception.md):

    - `certs.d/_default/`, read for every registry without a directory of its own (and for
      the token and CDN hosts of their pulls), only when the CA covers `everything` (no
      `hosts`, no `except`): otherwise `_default` would give it to hosts it must not cover;
    - every existing per-registry directory of a covered registry (ours, empty, a mirror's):
      a registry with a directory never reads `_default`. Directories of endpoints the ledger
      already manages (`managed` keys) keep their own entry.

    Only on a node whose every runtime is containerd with registry scope available; on
    docker and CRI-O (no default directory) a covered registry gets the CA when it fails.
    """
    if not runtimes or any(rt != "containerd" for rt in runtimes):
        return ()
    from agent.core.errors import InputError, StoreError
    from agent.core.hostport import parse_hostport
    from agent.node.runtimes.registry import runtime

    try:
        root = runtime("containerd").certs_dir(fs, None)
    except StoreError:
        return ()  # no registry scope: nothing is placed ahead of a failure
    targets = [DEFAULT_DIR] if everything else []
    for name in fs.listdir(root):
        if name == DEFAULT_DIR.host or not fs.is_dir(f"{root}/{name}"):
            continue
        try:
            endpoint = parse_hostport(name)
        except InputError:
            continue  # not a registry's directory
        if covered(endpoint) and endpoint.key not in managed:
            targets.append(endpoint)
    return tuple(targets)
