"""A real OCI registry (Debian's docker-registry, distribution 2.8) serving TLS.

It presents `chain` (leaf then intermediate, as an operator's private CA issues it) and
stores blobs under a temp dir. It listens on 127.0.0.1 or, for dockerd (which treats
loopback registries as insecure and never shows an x509 error for them), on an address
inside a network namespace of the lab's own (`netns`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.procs import Daemon, running, tcp_ready


@dataclass(frozen=True)
class Registry:
    address: str  # the IP it listens on
    port: int
    workdir: Path
    daemon: Daemon

    @property
    def pid(self) -> int:
        return self.daemon.pid


def render_config(address: str, port: int, chain: Path, key: Path, storage: Path) -> str:
    """The registry's config.yml (JSON is valid YAML, and needs no YAML writer)."""
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": f"{address}:{port}",
            "tls": {"certificate": str(chain), "key": str(key)},
        },
    }
    return json.dumps(config, indent=2) + "\n"


@contextlib.contextmanager
def run_registry(
    workdir: str | Path,
    *,
    chain: Path,
    key: Path,
    address: str = "127.0.0.1",
    port: int,
    netns: str | None = None,
    timeout: float = 20.0,
) -> Iterator[Registry]:
    """Start docker-registry with TLS; stopped (by PID) on exit whatever happened."""
    work = Path(workdir)
    (work / "storage").mkdir(parents=True, exist_ok=True)
    config = work / "config.yml"
    config.write_text(render_config(address, port, chain, key, work / "storage"))
    argv = ["docker-registry", "serve", str(config)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]  # ip execs: the PID stays the registry's
    with running(
        "docker-registry",
        argv,
        log=work / "registry.log",
        ready=tcp_ready(address, port),
        timeout=timeout,
    ) as daemon:
        yield Registry(address, port, work, daemon)
