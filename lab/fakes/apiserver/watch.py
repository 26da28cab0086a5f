"""What a watcher sees: the history's changes, filtered as the apiserver's cacher filters them.

Every write is a `Change` in the history and in the queue of every open watch; each watcher
translates it through its own selection, so an object leaving the selection arrives as
DELETED and one entering it as ADDED. Besides changes, a queue carries the test's signals:
cut the stream (DROP), send the 410 of a compacted history (EXPIRE), end it cleanly (STOP).
"""

from __future__ import annotations

import copy
import queue
from dataclasses import dataclass, field

from lab.fakes.apiserver.kinds import JSON, Kind
from lab.fakes.apiserver.routes import Route
from lab.fakes.apiserver.selectors import (
    Selector,
    field_values,
    parse_field_selector,
    parse_label_selector,
)

DROP, EXPIRE, STOP = "drop", "expire", "stop"


@dataclass(frozen=True)
class Change:
    """One write, as the watch history keeps it."""

    rv: int
    plural: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: JSON
    prev: JSON | None


@dataclass(eq=False)
class Watch:
    kind: Kind
    namespace: str | None
    fields: Selector
    labels: Selector
    queue: queue.SimpleQueue[Change | str] = field(default_factory=queue.SimpleQueue)

    def matches(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels: dict[str, str | None] = dict(meta.get("labels") or {})
        return self.fields.matches(field_values(obj, self.kind)) and self.labels.matches(labels)

    def translate(self, change: Change) -> JSON | None:
        """The event this watcher sees for a change, as the apiserver's cacher filters it."""
        if change.plural != self.kind.plural:
            return None
        now, before = self.matches(change.obj), self.matches(change.prev)
        if change.type == "MODIFIED" and now and not before:
            return {"type": "ADDED", "object": change.obj}
        if change.type == "MODIFIED" and before and not now:
            assert change.prev is not None
            gone = copy.deepcopy(change.prev)
            gone["metadata"]["resourceVersion"] = str(change.rv)
            return {"type": "DELETED", "object": gone}
        if change.type == "DELETED":
            return {"type": "DELETED", "object": change.obj} if before or now else None
        return {"type": change.type, "object": change.obj} if now else None


def selection(route: Route, query: dict[str, str]) -> Watch:
    """The watcher (or the LIST filter) a request's path and selectors describe."""
    kind = route.kind
    return Watch(
        kind,
        route.namespace,
        parse_field_selector(query.get("fieldSelector", ""), kind),
        parse_label_selector(query.get("labelSelector", "")),
    )
