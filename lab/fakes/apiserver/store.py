"""The objects, the one global resourceVersion, and the watch history they feed.

One lock guards all of it (the test controls share it, see `controls`): a write takes the
next resourceVersion, lands in the bounded history and in the queue of every open watch in
one step, so no watcher can see writes out of order. No-op writes are not written.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections import deque

from lab.fakes.apiserver.kinds import JSON, KINDS, ApiFailure, Kind, now, status_object
from lab.fakes.apiserver.routes import Route
from lab.fakes.apiserver.watch import EXPIRE, Change, Watch, selection

Key = tuple[str, str, str]  # (plural, namespace or "", name)


class Store:
    """The fake's state. `commit`, `remove` and `record` expect the caller to hold `lock`."""

    def __init__(self, history: int) -> None:
        self.lock = threading.Lock()
        self.objects: dict[Key, JSON] = {}
        self.rv = 1
        self.compacted = 1  # a watch may start from any rv >= this
        self.history: deque[Change] = deque(maxlen=history)
        self.watches: set[Watch] = set()

    # direct state access (no HTTP): what kubelet or a controller would write
    def put_object(self, obj: JSON) -> JSON:
        """Create or replace, status included; returns the stored object."""
        kind = next(k for k in KINDS.values() if k.kind == obj["kind"])
        obj = copy.deepcopy(obj)
        obj["apiVersion"] = kind.api_version
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta.setdefault("namespace", "default")
        key = (kind.plural, meta.get("namespace", ""), meta["name"])
        with self.lock:
            old = self.objects.get(key)
            if old is None:
                meta.pop("resourceVersion", None)
                return self.commit(kind, key, obj, None)
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.commit(kind, key, obj, old)

    def get_object(self, plural: str, namespace: str | None, name: str) -> JSON | None:
        with self.lock:
            obj = self.objects.get((plural, namespace or "", name))
            return copy.deepcopy(obj) if obj else None

    def delete_object(self, plural: str, namespace: str | None, name: str) -> None:
        with self.lock:
            self.remove((plural, namespace or "", name))

    def list_objects(self, plural: str) -> list[JSON]:
        with self.lock:
            found = sorted(self.objects.items())
            return [copy.deepcopy(o) for (p, _, _), o in found if p == plural]

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self.rv

    # writes (callers hold self.lock)
    def commit(self, kind: Kind, key: Key, obj: JSON, old: JSON | None) -> JSON:
        meta = obj["metadata"]
        if old is not None:
            same = {**obj, "metadata": {**meta, "resourceVersion": None}}
            was = {**old, "metadata": {**old["metadata"], "resourceVersion": None}}
            if same == was:  # no-op writes are not written: no new rv, no event
                return copy.deepcopy(old)
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        change_type = "ADDED" if old is None else "MODIFIED"
        self.record(Change(self.rv, kind.plural, change_type, obj, old))
        return copy.deepcopy(obj)

    def remove(self, key: Key) -> JSON:
        old = self.objects.pop(key)
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self.record(Change(self.rv, key[0], "DELETED", gone, old))
        return gone

    def record(self, change: Change) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0].rv
        self.history.append(change)
        # kube-apiserver keeps a cacher per resource: a write wakes the watchers of its own
        # resource only (a fleet's Event POSTs must not wake every ConfigMap watch)
        for w in self.watches:
            if w.kind.plural == change.plural:
                w.queue.put(change)

    # watches
    def expire_history(self) -> None:
        """Compact: every resourceVersion before now is gone (410); open watches get the 410."""
        with self.lock:
            self.rv += 1
            self.compacted = self.rv
            self.history.clear()
            for w in self.watches:
                w.queue.put(EXPIRE)

    def signal_watches(self, signal: str) -> None:
        with self.lock:
            for w in self.watches:
                w.queue.put(signal)

    def watch_count(self, plural: str | None = None) -> int:
        with self.lock:
            return sum(1 for w in self.watches if plural in (None, w.kind.plural))

    def open_watch(self, route: Route, query: dict[str, str]) -> tuple[Watch | None, list[JSON]]:
        """Register a watch; returns it (None when expired) and the events to send first."""
        kind = route.kind
        w = selection(route, query)
        rv_text = query.get("resourceVersion", "")
        if rv_text not in ("", "0") and not rv_text.isdigit():
            raise ApiFailure(400, "BadRequest", f"invalid resource version: {rv_text!r}")
        with self.lock:
            if rv_text in ("", "0"):  # "start at most recent": synthetic ADDED for the state
                first = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (p, _, _), o in sorted(self.objects.items())
                    if p == kind.plural and w.matches(o)
                ]
            elif int(rv_text) < self.compacted:
                message = f"too old resource version: {rv_text} ({self.compacted})"
                return None, [{"type": "ERROR", "object": status_object(410, "Expired", message)}]
            else:
                since = int(rv_text)
                events = (w.translate(c) for c in self.history if c.rv > since)
                first = [copy.deepcopy(e) for e in events if e is not None]
            self.watches.add(w)
        return w, first

    def close_watch(self, w: Watch) -> None:
        with self.lock:
            self.watches.discard(w)

    def bookmark(self, w: Watch) -> JSON | None:
        """A BOOKMARK at the current rv, only when nothing is queued for this watcher."""
        with self.lock:
            if not w.queue.empty():
                return None
            meta = {"resourceVersion": str(self.rv)}
        return {"type": "BOOKMARK",
                "object": {"kind": w.kind.kind, "apiVersion": w.kind.api_version,
                           "metadata": meta}}
