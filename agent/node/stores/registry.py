"""Per-registry trust directories of the container runtimes.

containerd (with `config_path`), docker and CRI-O all load `*.crt` files from
`<certs_dir>/<registry reference>/` on every pull: the CA is trusted for that registry only
and no restart is needed, which is why this scope is preferred.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.errors import StoreError
from agent.core.hostport import HostPort
from agent.node.host import HostFS, split_host_path
from agent.node.stores import Placement, file_name

DOCKER_CERTS_DIR = "/etc/docker/certs.d"
CRIO_CERTS_DIR = "/etc/containers/certs.d"


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


def registry_store(fs: HostFS, runtime: str, *, major: int | None = None) -> RegistryStore:
    """The per-registry store of `runtime`; StoreError("unavailable") when it has none.

    `major` is containerd's major version when known (Node object or CRI Version): a
    config_path list is read differently by 1.x and 2.x."""
    if runtime == "docker":
        return RegistryStore("docker", DOCKER_CERTS_DIR)
    if runtime == "crio":
        return RegistryStore("crio", CRIO_CERTS_DIR)
    if runtime != "containerd":
        raise StoreError(
            f"registry scope is not available for unknown runtime {runtime!r}", kind="unavailable"
        )
    from agent.node.runtimes.containerd import registry_dirs

    dirs = registry_dirs(fs, major)
    if dirs.directory is None:
        hint = (
            '; set config_path (e.g. config_path = "/etc/containerd/certs.d") under '
            '[plugins."io.containerd.grpc.v1.cri".registry] (containerd 1.x) or '
            "[plugins.'io.containerd.cri.v1.images'.registry] (2.x) and restart containerd "
            "once, or use system scope"
            if not dirs.config_path and "registries.yaml" not in dirs.reason
            else ""
        )
        raise StoreError(
            f"registry scope is not available for containerd: {dirs.reason}{hint}",
            kind="unavailable",
        )
    path = dirs.directory
    try:
        split_host_path(path)
    except StoreError as exc:
        raise StoreError(
            f"containerd config_path {path!r} ({dirs.reason}) is not usable: {exc}",
            kind="unavailable",
        ) from exc
    return RegistryStore("containerd", path.rstrip("/") or "/")
