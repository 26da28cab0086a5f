"""Per-registry trust directories of the container runtimes.

containerd (with `config_path`), docker and CRI-O all load `*.crt` files from
`<certs_dir>/<registry reference>/` on every pull: the CA is trusted for that registry only
and no restart is needed, which is why this scope is preferred.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from agent.core.errors import StoreError
from agent.core.hostport import HostPort
from agent.node.host import HostFS, split_host_path
from agent.node.stores import Placement, file_name

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
DOCKER_CERTS_DIR = "/etc/docker/certs.d"
CRIO_CERTS_DIR = "/etc/containers/certs.d"

# Where each containerd generation keeps the CRI registry settings, newest first.
_CONTAINERD_REGISTRY_TABLES = (
    ("plugins", "io.containerd.cri.v1.images", "registry"),  # 2.x (config version 3)
    ("plugins", "io.containerd.grpc.v1.cri", "registry"),  # 1.x (config version 2)
    ("plugins", "cri", "registry"),  # 1.x (config version 1)
)


def load_containerd_config(fs: HostFS) -> dict[str, Any] | None:
    """containerd's config.toml as a dict; None when the file does not exist."""
    data = fs.read_bytes(CONTAINERD_CONFIG)
    if data is None:
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a hostile "a = [[[[..." nests deeper than the parser can follow.
        raise StoreError(
            f"cannot parse {CONTAINERD_CONFIG} under {fs.root}: {exc}", kind="unavailable"
        ) from exc


def dig(table: Any, keys: tuple[str, ...]) -> Any:
    """table[k1][k2]... or None when a level is missing or not a table."""
    for key in keys:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    return table


def containerd_config_path(config: dict[str, Any] | None) -> str | None:
    """The first directory of the CRI registry `config_path`, or None when unset."""
    for keys in _CONTAINERD_REGISTRY_TABLES:
        value = dig(config, (*keys, "config_path"))
        if isinstance(value, str) and value.strip():
            return value.split(":")[0].strip()
    return None


@dataclass(frozen=True)
class RegistryStore:
    runtime: str
    certs_dir: str

    def placement(
        self, endpoint: HostPort, pem: bytes, registry: HostPort | None = None
    ) -> Placement:
        """`endpoint` is the host whose chain we trust (maybe a token or CDN host); the file
        goes in the directory of `registry`, the image's registry (default: endpoint)."""
        reg = registry if registry is not None else endpoint
        directory = f"{self.certs_dir}/{reg.reference}"
        file = f"{directory}/{file_name(endpoint.key)}"
        return Placement(
            store=self.runtime,
            scope="registry",
            directory=directory,
            file=file,
            content=pem,
            refresh=None,
            needs_restart=False,
            verify_cafile=file,
        )


def registry_store(fs: HostFS, runtime: str) -> RegistryStore:
    """The per-registry store of `runtime`; StoreError("unavailable") when it has none."""
    if runtime == "docker":
        return RegistryStore("docker", DOCKER_CERTS_DIR)
    if runtime == "crio":
        return RegistryStore("crio", CRIO_CERTS_DIR)
    if runtime != "containerd":
        raise StoreError(
            f"registry scope is not available for unknown runtime {runtime!r}", kind="unavailable"
        )
    path = containerd_config_path(load_containerd_config(fs))
    if path is None:
        raise StoreError(
            "registry scope is not available for containerd: set config_path "
            '(e.g. config_path = "/etc/containerd/certs.d") under '
            '[plugins."io.containerd.grpc.v1.cri".registry] (containerd 1.x) or '
            '[plugins."io.containerd.cri.v1.images".registry] (2.x) in '
            f"{CONTAINERD_CONFIG} and restart containerd once, or use system scope",
            kind="unavailable",
        )
    try:
        split_host_path(path)
    except StoreError as exc:
        raise StoreError(
            f"containerd config_path {path!r} in {CONTAINERD_CONFIG} is not usable: {exc}",
            kind="unavailable",
        ) from exc
    return RegistryStore("containerd", path.rstrip("/") or "/")
