"""The cluster-wide record of the anchors nodes fetched: one ConfigMap in the agent's
namespace (`ca-trust-agent-trust-record`), one data key per registry.

Why one ConfigMap for all registries and not one object per registry:
- the record holds what decides, not who trusts what (agent.core.firsttrust_record): about
  0.4 kB per registry with `confirmations: 1`, whatever the fleet size, so the object every
  agent watches stays small (20 registries: 8 kB); a registry's storm costs O(1) writes
  after acceptance, each sent to every agent. One object per registry would divide the
  bytes per write by the number of registries but needs `update` on every ConfigMap of the
  namespace, including the policy ConfigMap, whose `update` must stay ungranted (an agent
  can never approve an anchor): RBAC can only name a fixed object (`resourceNames`);
- one object is one watch and one read for every agent and for `ca-trust-agent status`;
- a Lease's spec has no field for the facts (they would go into annotations anyway).
Writes are conditional on the resourceVersion read (HTTP PUT). A 409 means another node
wrote first: the loser backs off for a random time (jittered, growing), then decides again
on what its watch delivered meanwhile (a read only when the watch has nothing newer), and
writes only if its sighting still counts; usually the winner's write already decided.

The record is read from the watch's cache (no read on the hot path); a read happens only
after a lost write the watch has not caught up with, or before the first watch event.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.cluster.client import JSON, ApiError, KubeClient, resource_path
from agent.cluster.watch import Watcher
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
# the jittered back-off after a lost write: random within [0, BACKOFF_BASE * 2**n], at most
# BACKOFF_MAX: long enough for the winner's write to reach every watcher (milliseconds), so
# the losers decide on it instead of writing again all at once
BACKOFF_BASE = 0.05
BACKOFF_MAX = 2.0


class _Lost(Exception):
    """A conditional write lost to another node's (409): decide again after a back-off."""

    def __init__(self, stale: str | None) -> None:
        super().__init__(stale)
        self.stale = stale  # the resourceVersion the lost write was based on


class RecordUnavailable(AgentError):
    """The record could not be read or written: nothing is installed meanwhile."""


class TrustRecord:
    """Read (from the watch cache) and conditionally update the record."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str = RECORD_NAME,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.sleep = sleep
        self._obj: JSON | None = None
        self._known = False  # the watch (or a read) told us whether the object exists
        self._synced: threading.Event | None = None  # the watch's first list is done
        self._lock = threading.Lock()
        self.writes = 0  # API writes made (creates and updates), for the operator's numbers
        self.conflicts = 0  # 409s lost to another node's write
        self.reads = 0  # reads past the watch cache (before the first event, after a 409)

    @property
    def path(self) -> str:
        return resource_path("v1", "configmaps", self.namespace, self.name)

    def watch_path(self) -> tuple[str, str]:
        """What the daemon watches: the collection path and a name field selector."""
        return resource_path("v1", "configmaps", self.namespace), f"metadata.name={self.name}"

    def watcher(self, on_restart: Callable[[str], None] | None = None) -> Watcher:
        """The record's watch, as the daemon runs it (events to `on_event`). Once its first
        list is done, a record it did not list is known not to exist: no node reads it
        before its first write (a fleet's first registry would cost a read per node)."""
        path, selector = self.watch_path()
        watcher = Watcher(self.client, path, field_selector=selector, on_restart=on_restart)
        self._synced = watcher.synced
        return watcher

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
            # listed empty: absent (if the object appeared meanwhile, the create is a 409)
            if self._known or (self._synced is not None and self._synced.is_set()):
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
        self.reads += 1
        with self._lock:
            self._obj, self._known = obj, True
        return obj

    @staticmethod
    def _data(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return ((obj or {}).get("data") or {}) if obj is not None else {}

    # ------------------------------------------------------------------ writing

    def update(self, registry: str, decide: Callable[[RegistryRecord], Verdict]) -> Verdict:
        """Run `decide` on the registry's current record and write its result, conditional on
        the resourceVersion read; after a 409, back off (jittered) and decide again on what
        the watch delivered meanwhile: a write that still counts is retried, a decision
        another node's write made needs none."""
        import tenacity  # lazy: only a node that consults the record pays for it

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Lost),
            wait=tenacity.wait_random_exponential(multiplier=BACKOFF_BASE, max=BACKOFF_MAX),
            stop=tenacity.stop_after_attempt(MAX_ATTEMPTS),
            sleep=self.sleep,
            reraise=True,
        )
        stale: list[str | None] = []  # the version the last lost write was based on
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(registry, decide, stale)
        except _Lost:
            pass
        raise RecordUnavailable(
            f"ConfigMap {self.namespace}/{self.name}: {MAX_ATTEMPTS} updates in a row lost to "
            "other nodes' writes; retrying later",
            kind="record",
        )

    def _attempt(
        self,
        registry: str,
        decide: Callable[[RegistryRecord], Verdict],
        stale: list[str | None],
    ) -> Verdict:
        obj = self._cached_or_read()
        if stale and _version(obj) == stale[-1]:
            obj = self._read()  # the watch has not shown the winner's write yet
        current = parse_record(registry, self._data(obj).get(record_key(registry)))
        verdict = decide(current)
        if verdict.record == current:
            return verdict  # nothing new to say: no write
        try:
            self._write(obj, record_key(registry), render_record(verdict.record))
        except ApiError as exc:
            if exc.status != 409:
                raise RecordUnavailable(
                    f"cannot update ConfigMap {self.namespace}/{self.name}: {exc}",
                    kind="record",
                ) from exc
            self.conflicts += 1
            stale.append(_version(obj))
            raise _Lost(_version(obj)) from exc
        return verdict

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


def _version(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return str((obj.get("metadata") or {}).get("resourceVersion") or "") or None


__all__ = ["MAX_ATTEMPTS", "RecordUnavailable", "TrustRecord"]
