"""core/v1 Events on the Node and on the failing Pod: best effort, aggregated, rate-limited.

Written the way kubelet and client-go's legacy recorder write them, so `kubectl describe node`
and `kubectl describe pod` show them next to kubelet's own:

- a Node event lives in namespace `default` with involvedObject `{kind: Node, name: <node>,
  uid: <node>}` (kubelet uses the node *name* as the uid; kubectl describe node searches both
  the real uid and the name, with `involvedObject.namespace=""`);
- a Pod event lives in the pod's namespace, with the pod's uid;
- the name is `<object>.<hex nanoseconds>` (client-go's `%v.%x`), count/firstTimestamp/
  lastTimestamp are set and eventTime is null, as the legacy recorder does.

Like client-go's EventCorrelator, an identical event (same object, type, reason, message)
seen again within `dedup_window` PATCHes count+1 and lastTimestamp on the Event already
written instead of creating another; and a token bucket per object (burst 25, one token back
every 5 minutes, client-go's spam filter) drops a flood. Unlike client-go we skip the
"(combined from similar events)" aggregator: our reasons are few and the spam filter bounds
the rest.

Nothing here ever raises to the caller: a remediation's success never depends on its Event.
Failures and drops are logged and reported to `on_drop(reason)` (reasons: "rate-limited",
"api-error", "queue-full", "invalid", "closed") for the metrics.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.cluster.client import ApiError, KubeClient, resource_path

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Clock = Callable[[], float]
DropCallback = Callable[[str], None]

COMPONENT = "ca-trust-agent"
NODE_EVENT_NAMESPACE = "default"  # where kubelet's recorder puts events of cluster-scoped objects
EVENT_TYPES = ("Normal", "Warning")
MAX_MESSAGE_BYTES = 1024  # what kopf allows; the apiserver's own limit is larger
_CUT = "..."

# client-go's EventSourceObjectSpamFilter defaults: burst 25, qps 1/300.
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
# client-go aggregates within 10 minutes (maxIntervalInSeconds); later repeats start anew.
DEDUP_WINDOW_SECONDS = 600.0
CACHE_SIZE = 4096  # client-go's maxLruCacheEntries

K = TypeVar("K")
V = TypeVar("V")


# --- pure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """The involvedObject of an Event; empty fields are left out as Go's omitempty does."""

    kind: str
    name: str
    uid: str
    namespace: str = ""
    api_version: str = ""

    @property
    def event_namespace(self) -> str:
        return self.namespace or NODE_EVENT_NAMESPACE

    def involved_object(self) -> JSON:
        fields = {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                  "uid": self.uid, "apiVersion": self.api_version}
        return {k: v for k, v in fields.items() if v}


def node_ref(node_name: str) -> ObjectRef:
    """As kubelet refers to its node: the name doubles as the uid, no namespace."""
    return ObjectRef(kind="Node", name=node_name, uid=node_name)


def pod_ref(namespace: str, name: str, uid: str) -> ObjectRef:
    return ObjectRef(kind="Pod", name=name, uid=uid, namespace=namespace, api_version="v1")


def truncate_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """At most `limit` UTF-8 bytes: keep the head (what happened) and the tail (what happens
    next), joined by "...", never splitting a character."""
    data = message.encode()
    if len(data) <= limit:
        return message
    room = limit - len(_CUT)
    head = data[: room - room // 3].decode("utf-8", "ignore")
    tail_bytes = data[len(data) - room // 3 :]
    tail = tail_bytes.decode("utf-8", "ignore")
    # decode("ignore") drops a broken lead byte at the cut; both halves stay within budget
    return head + _CUT + tail


def event_name(object_name: str, nanoseconds: int) -> str:
    """client-go: fmt.Sprintf("%v.%x", ref.Name, t.UnixNano())."""
    return f"{object_name}.{nanoseconds:x}"


def format_timestamp(epoch: float) -> str:
    """metav1.Time: RFC 3339, whole seconds, UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_event(ref: ObjectRef, type_: str, reason: str, message: str, *, name: str,
              component: str, host: str, now: float) -> JSON:
    stamp = format_timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ref.event_namespace},
        "involvedObject": ref.involved_object(),
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component, "host": host},
        "reportingComponent": component,
        "reportingInstance": host,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": None,
        "count": 1,
    }


class TokenBucket:
    """`burst` tokens, one more every `refill_seconds`; take() spends one if there is one."""

    def __init__(self, burst: int, refill_seconds: float, now: float) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.stamp)  # a wall clock stepping back refills nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed / self.refill_seconds)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class _Written:
    """An Event we wrote, as the dedup cache remembers it."""

    name: str
    namespace: str
    count: int
    last_seen: float


@dataclass(frozen=True)
class _Pending:
    ref: ObjectRef
    type_: str
    reason: str
    message: str
    now: float


def _lru_get(cache: OrderedDict[K, V], key: K) -> V | None:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict[K, V], key: K, value: V, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


# --- effects -------------------------------------------------------------------------------


class EventRecorder:
    """Writes Events for one agent instance (`host` = this node's name).

    With `queue_size` > 0 the calls only enqueue and a worker thread writes, so the
    remediation path never waits on the API (a full queue drops, counted as "queue-full");
    `flush(timeout)` waits for the queue to drain and `close()` stops the worker. With
    `queue_size` 0 (the default) the write happens in the caller's thread."""

    def __init__(self, client: KubeClient, *, host: str, component: str = COMPONENT,
                 clock: Clock = time.time, on_drop: DropCallback | None = None,
                 burst: int = SPAM_BURST, refill_seconds: float = SPAM_REFILL_SECONDS,
                 dedup_window: float = DEDUP_WINDOW_SECONDS, cache_size: int = CACHE_SIZE,
                 queue_size: int = 0) -> None:
        self._client = client
        self.host = host
        self.component = component
        self._clock = clock
        self._on_drop = on_drop
        self._burst = burst
        self._refill = refill_seconds
        self._window = dedup_window
        self._cache_size = cache_size
        self._lock = threading.Lock()  # one write at a time: the caches stay consistent
        self._buckets: OrderedDict[ObjectRef, TokenBucket] = OrderedDict()
        self._written: OrderedDict[tuple[ObjectRef, str, str, str], _Written] = OrderedDict()
        self._last_ns = 0
        self.dropped: dict[str, int] = {}
        self._queue: queue.Queue[_Pending | None] | None = None
        self._worker: threading.Thread | None = None
        self._idle = threading.Condition()
        self._unfinished = 0
        self._closed = False
        if queue_size > 0:
            self._queue = queue.Queue(maxsize=queue_size)
            self._worker = threading.Thread(target=self._drain, name="event-recorder",
                                            daemon=True)
            self._worker.start()

    # public API
    def node(self, node_name: str, type_: str, reason: str, message: str) -> None:
        self.record(node_ref(node_name), type_, reason, message)

    def pod(self, namespace: str, name: str, uid: str, type_: str, reason: str,
            message: str) -> None:
        self.record(pod_ref(namespace, name, uid), type_, reason, message)

    def record(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        """Never raises (an unexpected bug is logged and counted as "api-error")."""
        if self._closed:
            self._drop("closed")
            return
        try:
            pending = _Pending(ref, type_, reason, truncate_message(message), self._clock())
            if self._queue is None:
                self._write(pending)
            else:
                self._enqueue(pending)
        except Exception:
            log.exception("event not recorded", extra={"reason": reason})
            self._drop("api-error")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was written or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to timeout), then stop the worker. Later calls drop."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
        if self._queue is not None and self._worker is not None:
            self.flush(timeout)
            self._queue.put(None)
            self._worker.join(timeout)

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals
    def _enqueue(self, pending: _Pending) -> None:
        assert self._queue is not None
        # The check and the count are one step, so close() waits for this event
        # before it stops the worker.
        with self._idle:
            closed = self._closed
            if not closed:
                self._unfinished += 1
        if closed:
            self._drop("closed")
            return
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._done()
            log.warning("event queue full, event dropped", extra={"reason": pending.reason})
            self._drop("queue-full")

    def _drain(self) -> None:
        assert self._queue is not None
        while (pending := self._queue.get()) is not None:
            try:
                self._write(pending)
            except Exception:
                log.exception("event not recorded", extra={"reason": pending.reason})
                self._drop("api-error")
            finally:
                self._done()

    def _done(self) -> None:
        with self._idle:
            self._unfinished -= 1
            if not self._unfinished:
                self._idle.notify_all()

    def _drop(self, why: str) -> None:
        with self._idle:
            self.dropped[why] = self.dropped.get(why, 0) + 1
        if self._on_drop is not None:
            try:
                self._on_drop(why)
            except Exception:
                log.exception("on_drop callback failed")

    def _write(self, p: _Pending) -> None:
        if p.type_ not in EVENT_TYPES or not p.reason:
            log.error("invalid event dropped", extra={"type": p.type_, "reason": p.reason})
            self._drop("invalid")
            return
        with self._lock:
            if not self._allowed(p.ref, p.now):
                log.warning("event rate-limited", extra={
                    "reason": p.reason, "object": f"{p.ref.kind}/{p.ref.name}"})
                self._drop("rate-limited")
                return
            key = (p.ref, p.type_, p.reason, p.message)
            seen = _lru_get(self._written, key)
            try:
                if seen is not None and p.now - seen.last_seen <= self._window:
                    written = self._bump(seen, p)
                else:
                    written = self._create(p)
            except ApiError as exc:
                log.warning("event not recorded: %s", exc, extra={"reason": p.reason})
                self._drop("api-error")
                return
            _lru_put(self._written, key, written, self._cache_size)

    def _allowed(self, ref: ObjectRef, now: float) -> bool:
        bucket = _lru_get(self._buckets, ref)
        if bucket is None:
            bucket = TokenBucket(self._burst, self._refill, now)
            _lru_put(self._buckets, ref, bucket, self._cache_size)
        return bucket.take(now)

    def _bump(self, seen: _Written, p: _Pending) -> _Written:
        """PATCH count+1; the Event may have been garbage-collected (TTL 1h): create anew."""
        body = {"count": seen.count + 1, "lastTimestamp": format_timestamp(p.now)}
        path = resource_path("v1", "events", seen.namespace, seen.name)
        try:
            self._client.patch_merge(path, body)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return self._create(p)
        return _Written(seen.name, seen.namespace, seen.count + 1, p.now)

    def _create(self, p: _Pending) -> _Written:
        # Unique per recorder even when the clock does not move (tests, coarse clocks).
        self._last_ns = max(int(p.now * 1e9), self._last_ns + 1)
        name = event_name(p.ref.name, self._last_ns)
        body = new_event(p.ref, p.type_, p.reason, p.message, name=name,
                         component=self.component, host=self.host, now=p.now)
        namespace = p.ref.event_namespace
        self._client.create(resource_path("v1", "events", namespace), body)
        return _Written(name, namespace, 1, p.now)
