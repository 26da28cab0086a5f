"""CRI-O: its API socket, moved by `[crio.api].listen` in crio.conf."""

from __future__ import annotations

import contextlib
import tomllib

from agent.core.containerd_config import dig
from agent.core.errors import StoreError
from agent.node.host import HostFS
from agent.node.runtimes.sockets import DEFAULT_SOCKETS, first_existing, strip_unix

CRIO_CONFIG = "/etc/crio/crio.conf"


def crio_socket(fs: HostFS) -> str:
    listen = None
    # A broken crio.conf cannot move the socket either: fall back to the default.
    with contextlib.suppress(
        StoreError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError
    ):
        data = fs.read_bytes(CRIO_CONFIG)
        if data is not None:
            listen = dig(tomllib.loads(data.decode("utf-8")), ("crio", "api", "listen"))
    if isinstance(listen, str) and listen.strip():
        return strip_unix(listen.strip())
    return first_existing(fs, DEFAULT_SOCKETS["crio"])
