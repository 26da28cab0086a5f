"""This node as the agent sees it, and the one thing it writes on it: the status annotation.

`node_info(obj)` is pure: a Node JSON dict -> NodeInfo (opt-in, runtime). The agent does
nothing on a node unless `ca-trust-agent.io/remediate` is exactly "enabled" ("true", "yes"
and "Enabled" are not: an opt-in that privileged must be spelled out).

`TrustedRegistriesAnnotation` keeps `ca-trust-agent.io/trusted-registries` equal to what the
ledger holds (sorted, comma-separated host:port), with a JSON merge patch that touches no
other annotation, removes the key (null) when nothing is trusted, and is skipped when the
value has not changed since the last write.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.cluster.client import KubeClient, resource_path
from agent.node.runtimes import runtime_from_version

JSON = dict[str, Any]

OPT_IN_ANNOTATION = "ca-trust-agent.io/remediate"
OPT_IN_VALUE = "enabled"
TRUSTED_REGISTRIES_ANNOTATION = "ca-trust-agent.io/trusted-registries"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    uid: str
    opted_in: bool
    runtime: str | None  # "containerd" | "docker" | "crio" | None (not one we manage)
    annotations: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    @property
    def trusted_registries(self) -> tuple[str, ...]:
        """What the annotation says now (as last written by us, or by someone else)."""
        return parse_trusted_registries(self.annotations.get(TRUSTED_REGISTRIES_ANNOTATION))


def node_info(obj: JSON) -> NodeInfo:
    meta = obj.get("metadata") or {}
    raw = meta.get("annotations") or {}
    annotations = {str(k): str(v) for k, v in raw.items() if v is not None}
    version = ((obj.get("status") or {}).get("nodeInfo") or {}).get("containerRuntimeVersion")
    return NodeInfo(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        opted_in=annotations.get(OPT_IN_ANNOTATION) == OPT_IN_VALUE,
        runtime=runtime_from_version(version) if isinstance(version, str) else None,
        annotations=MappingProxyType(annotations),
    )


def trusted_registries_value(hostports: Iterable[str]) -> str | None:
    """The annotation's value: unique, sorted, comma-joined; None (remove it) when empty."""
    keys = sorted({h.strip() for h in hostports if h.strip()})
    return ",".join(keys) if keys else None


def parse_trusted_registries(value: str | None) -> tuple[str, ...]:
    return tuple(sorted({p.strip() for p in (value or "").split(",") if p.strip()}))


class _Unknown(enum.Enum):
    VALUE = "unknown"  # not read yet: different from None (no annotation)


class TrustedRegistriesAnnotation:
    """Writes the annotation on one node, remembering the last value written.

    `current` seeds that memory from the Node as read (NodeInfo.annotations) so that an agent
    restart does not patch an annotation that is already right. Without it the first call
    always patches (a merge patch with the same value is a no-op on the server anyway)."""

    def __init__(self, client: KubeClient, node_name: str, *,
                 current: str | _Unknown | None = _Unknown.VALUE) -> None:
        self._client = client
        self.node_name = node_name
        self._last: str | _Unknown | None = current
        self._lock = threading.Lock()

    def update(self, hostports: Iterable[str]) -> bool:
        """Patch when the value differs from the last one written; True when it patched.
        An ApiError propagates and leaves the memory unchanged, so the next call retries."""
        value = trusted_registries_value(hostports)
        with self._lock:
            if value == self._last:
                return False
            patch = {"metadata": {"annotations": {TRUSTED_REGISTRIES_ANNOTATION: value}}}
            self._client.patch_merge(resource_path("v1", "nodes", name=self.node_name), patch)
            self._last = value
            return True


def set_trusted_registries(client: KubeClient, node_name: str,
                           hostports: Iterable[str]) -> bool:
    """One-shot form (CLI `install`/`remove` on a node): reads the Node and patches only when
    the annotation differs. The daemon keeps a TrustedRegistriesAnnotation instead, which
    remembers the last value and needs no read."""
    obj = client.get(resource_path("v1", "nodes", name=node_name))
    current = node_info(obj).annotations.get(TRUSTED_REGISTRIES_ANNOTATION)
    return TrustedRegistriesAnnotation(client, node_name, current=current).update(hostports)
