"""Where one trust file goes and what it holds: the value a store computes and the engine writes.

Pure: the names are decided here (deterministic, injective per endpoint) so the planner,
the ledger checks and the stores agree on them without touching the node.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

FILE_PREFIX = "ca-trust-agent-"
_UNSAFE = re.compile(r"[^a-z0-9._-]")


@dataclass(frozen=True)
class Placement:
    store: str  # "system" | "containerd" | "docker" | "crio"
    scope: str  # "system" | "registry"
    directory: str  # host path of the dir holding our file
    file: str  # host path of our file (always named ca-trust-agent-*)
    content: bytes  # exact bytes to write (deterministic PEM bundle)
    refresh: tuple[str, ...] | None  # argv to run after writing or removing (system scope)
    needs_restart: bool  # runtimes must restart to see it (system scope)
    verify_cafile: str  # host path a client trusts afterwards
    # argv to run after removing our file (the ledger keeps it for undo); default: refresh
    refresh_after_remove: tuple[str, ...] | None = None

    @property
    def undo_refresh(self) -> tuple[str, ...] | None:
        return self.refresh_after_remove or self.refresh


def safe(text: str) -> str:
    """A file-name-safe form of an endpoint key: `registry.test:5443` -> `registry.test_5443`."""
    return _UNSAFE.sub("_", text.lower())


def file_name(endpoint_key: str) -> str:
    """`ca-trust-agent-<host>_<port>.crt`; distinct endpoints never share a name.

    DNS names and IPv4 addresses only hold [a-z0-9._-], so `host_port` is unambiguous
    (the port is the last `_digits`). An IPv6 literal's brackets and colons would map to
    `_` and could then equal a host name of underscores, so IPv6 gets the exploded address
    behind `ipv6+`, a character no host name has.
    """
    host, _, port = endpoint_key.rpartition(":")
    if host.startswith("["):
        exploded = ipaddress.IPv6Address(host.strip("[]")).exploded.replace(":", ".")
        return f"{FILE_PREFIX}ipv6+{exploded}_{port}.crt"
    return f"{FILE_PREFIX}{safe(endpoint_key)}.crt"
