"""A reflector-like watch that survives everything a real apiserver does to it.

`Watcher.events()` yields `(type, object)` pairs, type ADDED | MODIFIED | DELETED:

- it LISTs first and yields a synthetic ADDED for every listed object, then WATCHes from
  the list's resourceVersion;
- BOOKMARKs only advance the resourceVersion;
- a stream that ends (timeoutSeconds) is re-opened from the last resourceVersion;
- 410 Gone (an ERROR event or an HTTP 410) means the history is lost: it relists and yields
  the difference to what it had seen — ADDED for new objects, MODIFIED for changed ones,
  DELETED for vanished ones (a DELETED from a relist carries only metadata name, namespace,
  uid and the last resourceVersion seen, since only those are remembered);
- any other failure (API error, broken connection, garbage) waits a jittered, capped,
  Fibonacci-like backoff that resets after a successful list or event, then resumes. No
  failure ends the iteration; only `stop()` does, promptly, from any thread.

Per object the watcher remembers (uid, resourceVersion) and nothing more, so its memory does
not grow with object size.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.cluster.client import JSON, ApiError, KubeClient, WatchStream

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.25  # +/- fraction


class Backoff:
    """Fibonacci-like delays (base, base, 2*base, 3*base, 5*base ...) capped and jittered,
    as kopf's throttler; `reset()` after a success starts over."""

    def __init__(self, policy: BackoffPolicy = BackoffPolicy()) -> None:
        self.policy = policy
        self._a, self._b = 0.0, policy.base

    def next(self) -> float:
        delay = min(self._b, self.policy.cap)
        self._a, self._b = self._b, self._a + self._b
        spread = delay * self.policy.jitter
        return max(0.0, delay + random.uniform(-spread, spread))

    def reset(self) -> None:
        self._a, self._b = 0.0, self.policy.base


class _Expired(Exception):
    """The watch's resourceVersion is too old: relist."""


def _key(obj: JSON) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _version(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))


def relist_diff(seen: dict[Key, tuple[str, str]], items: list[JSON]) -> list[tuple[str, JSON]]:
    """Events that take a consumer from `seen` (key -> (uid, rv)) to the listed state."""
    events: list[tuple[str, JSON]] = []
    listed = {_key(o): o for o in items}
    for key, (uid, rv) in seen.items():
        obj = listed.get(key)
        if obj is None or _version(obj)[0] != uid:
            meta = {"namespace": key[0], "name": key[1], "uid": uid, "resourceVersion": rv}
            events.append(("DELETED", {"metadata": meta}))
    for key, obj in listed.items():
        before = seen.get(key)
        if before is None or before[0] != _version(obj)[0]:
            events.append(("ADDED", obj))
        elif before[1] != _version(obj)[1]:
            events.append(("MODIFIED", obj))
    return events


class Watcher:
    """List+watch one collection path (e.g. `resource_path("v1", "pods")`) with selectors.

    `on_restart(reason)` is called each time the watch is re-opened, reason one of
    "expired" (410, relisted), "stream-end" (server closed it, usually timeoutSeconds) and
    "error" (then it backs off first)."""

    def __init__(self, client: KubeClient, path: str, *, field_selector: str | None = None,
                 label_selector: str | None = None, timeout_seconds: int = 240,
                 backoff: BackoffPolicy = BackoffPolicy(), page_size: int = 500,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.path = path
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.timeout_seconds = timeout_seconds
        self.page_size = page_size
        self.on_restart = on_restart
        self.resource_version: str | None = None
        self.synced = threading.Event()  # set after the first successful list
        self._backoff = Backoff(backoff)
        self._seen: dict[Key, tuple[str, str]] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._fresh_list = False  # listed, and no watch event since

    def stop(self) -> None:
        """End `events()` from any thread; an open stream is cut at once."""
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def events(self) -> Iterator[tuple[str, JSON]]:
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    yield from self._relist()
                yield from self._watch_once()
                reason = "stream-end"
            except _Expired:
                reason = self._expired()
            except ApiError as exc:
                reason = self._expired() if exc.status == 410 else self._failed(exc)
            except Exception as exc:  # a watch never takes the process down
                reason = self._failed(exc)
            if self._stopping.is_set():
                return
            self._restarted(reason)

    def _expired(self) -> str:
        if self._fresh_list:  # expired again before a single event: do not hammer the API
            self._stopping.wait(self._backoff.next())
        self.resource_version = None
        return "expired"

    def _failed(self, exc: Exception) -> str:
        delay = self._backoff.next()
        log.warning("watch %s failed, retrying in %.1fs: %s", self.path, delay, exc)
        self._stopping.wait(delay)
        return "error"

    def _restarted(self, reason: str) -> None:
        if self.on_restart is not None:
            try:
                self.on_restart(reason)
            except Exception:
                log.exception("on_restart callback failed")

    def _relist(self) -> Iterator[tuple[str, JSON]]:
        items, rv = self.client.list_all(self.path, field_selector=self.field_selector,
                                         label_selector=self.label_selector,
                                         page_size=self.page_size)
        events = relist_diff(self._seen, items)
        self._seen = {_key(o): _version(o) for o in items}
        self.resource_version = rv
        self._backoff.reset()
        self._fresh_list = True
        self.synced.set()
        yield from events

    def _watch_once(self) -> Iterator[tuple[str, JSON]]:
        stream = self.client.watch_lines(
            self.path, resource_version=self.resource_version,
            field_selector=self.field_selector, label_selector=self.label_selector,
            timeout_seconds=self.timeout_seconds, allow_bookmarks=True,
        )
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():  # stop() came between opening and registering
            stream.close()
        opened, received = time.monotonic(), 0
        try:
            for event in stream:
                received += 1
                result = self._apply(event)
                if result is not None:
                    yield result
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        if not received and time.monotonic() - opened < 1.0 and not self._stopping.is_set():
            # a server that ends every watch at once must not make us spin
            raise ApiError(0, "ConnectionError", "watch stream ended immediately")

    def _apply(self, event: JSON) -> tuple[str, JSON] | None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise ApiError(0, "ConnectionError", f"watch event without object: {kind}")
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Expired()
            raise ApiError(int(code or 0), str(obj.get("reason", "")), obj)
        meta: dict[str, Any] = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        self._backoff.reset()
        self._fresh_list = False
        if kind == "BOOKMARK":
            return None
        if kind == "DELETED":
            self._seen.pop(_key(obj), None)
        elif kind in ("ADDED", "MODIFIED"):
            self._seen[_key(obj)] = _version(obj)
        else:
            raise ApiError(0, "ConnectionError", f"unknown watch event type {kind!r}")
        return str(kind), obj
