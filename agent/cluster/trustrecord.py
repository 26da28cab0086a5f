"""The cluster-wide record of the anchors nodes fetched: one ConfigMap in the agent's
namespace (`ca-trust-agent-trust-record`), one data key per registry.

Why one ConfigMap and not a Lease per registry:
- one object is one watch and one GET for every agent and for `ca-trust-agent status`; a
  Lease per registry needs a list+watch of every Lease in the namespace (the restart slots
  live there too);
- RBAC can name it for `update` (`resourceNames`); reads go through the list/watch the
  policy needs anyway. The first write is a `create`, which RBAC cannot narrow to a name:
  it is granted in the agent's own namespace only, where the policy ConfigMap's `update`
  stays ungranted (an agent can never approve an anchor);
- a Lease's spec has no field for the facts (they would go into annotations anyway).
The price is contention: every node updates the same object. Updates are conditional on the
resourceVersion the node read (HTTP PUT; a 409 re-reads and decides again), and a node
writes only when its sighting or an acceptance changes the record, so a registry costs each
node one write when it first fetches the anchor. Size: about 150 bytes per node and 300 per
anchor; with the bounds in agent.core.firsttrust a ConfigMap's 1 MiB holds thousands of
nodes for a handful of registries.

The record is read from the watch's cache (no GET on the hot path); the GET happens only
after a conflict or before the first watch event.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent.cluster.client import JSON, ApiError, KubeClient, resource_path
from agent.core.errors import AgentError
from agent.core.firsttrust import (
    RECORD_NAME,
    RegistryRecord,
    Verdict,
    parse_record,
    record_key,
    records,
    render_record,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # conditional updates lost to other nodes before giving up


class RecordUnavailable(AgentError):
    """The record could not be read or written: nothing is installed meanwhile."""


class TrustRecord:
    """Read (from the watch cache) and conditionally update the record."""

    def __init__(self, client: KubeClient, namespace: str, name: str = RECORD_NAME) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self._obj: JSON | None = None
        self._known = False  # the watch (or a read) told us whether the object exists
        self._lock = threading.Lock()
        self.writes = 0  # API writes made (creates and updates), for the operator's numbers
        self.conflicts = 0  # 409s lost to another node's write

    @property
    def path(self) -> str:
        return resource_path("v1", "configmaps", self.namespace, self.name)

    def watch_path(self) -> tuple[str, str]:
        """What the daemon watches: the collection path and a name field selector."""
        return resource_path("v1", "configmaps", self.namespace), f"metadata.name={self.name}"

    # ------------------------------------------------------------------ reading

    def on_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A watch event for the record's ConfigMap (the daemon's watcher)."""
        with self._lock:
            self._obj = None if kind == "DELETED" else copy.deepcopy(dict(obj))
            self._known = True

    def get(self, registry: str) -> RegistryRecord:
        data = self._data(self._cached_or_read())
        return parse_record(registry, data.get(record_key(registry)))

    def all(self) -> dict[str, RegistryRecord]:
        return records(self._data(self._cached_or_read()))

    def _cached_or_read(self) -> JSON | None:
        with self._lock:
            if self._known:
                return self._obj
        return self._read()

    def _read(self) -> JSON | None:
        # a LIST by name, not a GET: the watch needs list anyway, so RBAC grants no `get`
        collection, selector = self.watch_path()
        try:
            items = self.client.list(collection, field_selector=selector).get("items") or []
        except ApiError as exc:
            raise RecordUnavailable(
                f"cannot read ConfigMap {self.namespace}/{self.name}: {exc}", kind="record"
            ) from exc
        obj: JSON | None = items[0] if items else None
        with self._lock:
            self._obj, self._known = obj, True
        return obj

    @staticmethod
    def _data(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return ((obj or {}).get("data") or {}) if obj is not None else {}

    # ------------------------------------------------------------------ writing

    def update(self, registry: str, decide: Callable[[RegistryRecord], Verdict]) -> Verdict:
        """Run `decide` on the registry's current record and write its result, conditional on
        the resourceVersion read; on a 409 re-read and decide again (another node wrote)."""
        key = record_key(registry)
        obj = self._cached_or_read()
        for _ in range(MAX_ATTEMPTS):
            current = parse_record(registry, self._data(obj).get(key))
            verdict = decide(current)
            if verdict.record == current:
                return verdict  # nothing new to say: no write
            try:
                self._write(obj, key, render_record(verdict.record))
                return verdict
            except ApiError as exc:
                if exc.status != 409:
                    raise RecordUnavailable(
                        f"cannot update ConfigMap {self.namespace}/{self.name}: {exc}",
                        kind="record",
                    ) from exc
                self.conflicts += 1
                obj = self._read()
        raise RecordUnavailable(
            f"ConfigMap {self.namespace}/{self.name}: {MAX_ATTEMPTS} updates in a row lost to "
            "other nodes' writes; retrying later",
            kind="record",
        )

    def _write(self, obj: JSON | None, key: str, value: str) -> None:
        if obj is None:
            body: JSON = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "data": {key: value},
            }
            written = self.client.create(
                resource_path("v1", "configmaps", self.namespace), body
            )
        else:
            body = copy.deepcopy(obj)
            body.setdefault("data", {})
            if body["data"] is None:
                body["data"] = {}
            body["data"][key] = value
            # the resourceVersion read stays in metadata: the PUT is refused (409) when
            # another node wrote since
            written = self.client.replace(self.path, body)
        self.writes += 1
        with self._lock:
            self._obj, self._known = written, True


__all__ = ["MAX_ATTEMPTS", "RecordUnavailable", "TrustRecord"]
