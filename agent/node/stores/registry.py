"""Per-registry trust directories of the container runtimes.

containerd (with `config_path`), docker and CRI-O all load `*.crt` files from
`<certs_dir>/<registry reference>/` on every pull: the CA is trusted for that registry only
and no restart is needed, which is why this scope is preferred.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.errors import StoreError
from agent.core.hostport import HostPort
from agent.core.placement import Placement, file_name
from agent.node.host import HostFS


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
    from agent.node.runtimes.registry import REGISTRY

    found = REGISTRY.get(runtime)
    if found is None:
        raise StoreError(
            f"registry scope is not available for unknown runtime {runtime!r}", kind="unavailable"
        )
    return RegistryStore(runtime, found.certs_dir(fs, major))
