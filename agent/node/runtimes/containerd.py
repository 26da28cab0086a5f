"""containerd: its API socket, moved by `[grpc].address` in its config."""

from __future__ import annotations

from agent.core.errors import StoreError
from agent.node.host import HostFS
from agent.node.runtimes.sockets import DEFAULT_SOCKETS, strip_unix
from agent.node.stores.registry import load_containerd_config


def containerd_socket(fs: HostFS) -> str:
    try:
        config = load_containerd_config(fs)
    except StoreError:
        config = None  # a broken config cannot move the socket; the default is the best guess
    grpc = config.get("grpc") if config else None
    address = grpc.get("address") if isinstance(grpc, dict) else None
    if isinstance(address, str) and address.strip():
        return strip_unix(address.strip())
    return DEFAULT_SOCKETS["containerd"][0]
