"""A small in-memory Kubernetes API server that speaks the real wire protocol.

No kube-apiserver runs here, so the agent's Kubernetes side (and the official python client,
which the tests use as a referee) is tested against this fake. It serves the resources the
agent touches — core/v1 pods, nodes, events, configmaps, coordination.k8s.io/v1 leases and
certificates.k8s.io/v1beta1 clustertrustbundles —
with the semantics the agent relies on:

- one global, monotonically increasing resourceVersion; no-op writes do not bump it;
- LIST with `limit`/`continue`, field selectors (only the labels the real server supports
  for that resource; others are a 400 as on a real cluster) and label selectors;
- WATCH as chunked JSON lines, replayed from a bounded history; a resourceVersion older than
  the history gives an ERROR event carrying a 410 Expired Status; selectors are applied to
  the old and new object, so an object leaving the selection arrives as DELETED;
  `allowWatchBookmarks` and `timeoutSeconds`;
- POST (generateName, 409 AlreadyExists), PUT (409 Conflict on a stale resourceVersion),
  merge / strategic-merge (treated as merge) / JSON patch, DELETE (with preconditions);
  pods and nodes have a `status` subresource: the main resource keeps the old status;
- pods have the `eviction` subresource: POST a policy/v1 Eviction deletes the pod (201 with a
  Success Status), honouring `deleteOptions.preconditions`; no PodDisruptionBudgets are
  modelled, a test refuses evictions explicitly (`refuse_evictions`);
- every error is a metav1 Status.

Simplifications, on purpose: no authentication, no admission, no defaulting or validation
beyond names, no graceful pod deletion (deletes are immediate), LIST always serves the
latest state, and a paginated LIST continues from the current state.

Test controls: `expire_history()`, `drop_watches()`, `pause()` / `resume()`,
`refuse_evictions()` (429 as a PodDisruptionBudget answers), per-client byte
counters (`bytes_sent`) keyed by the `X-Fake-Client` header or else the User-Agent, a request
log (`requests`), and `put_object` / `get_object` / `delete_object` to set state directly as
kubelet or a controller would.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import queue
import random
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

JSON = dict[str, Any]

_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class Kind:
    """One served resource type."""

    plural: str
    kind: str
    api_version: str
    namespaced: bool
    fields: frozenset[str]
    has_status: bool = False

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


KINDS: dict[str, Kind] = {
    k.plural: k
    for k in (
        Kind(
            "pods",
            "Pod",
            "v1",
            True,
            _COMMON_FIELDS
            | {
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            },
            has_status=True,
        ),
        Kind("nodes", "Node", "v1", False, _COMMON_FIELDS | {"spec.unschedulable"}, True),
        Kind(
            "events",
            "Event",
            "v1",
            True,
            _COMMON_FIELDS
            | {
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            },
        ),
        Kind("configmaps", "ConfigMap", "v1", True, _COMMON_FIELDS),
        Kind("leases", "Lease", "coordination.k8s.io/v1", True, _COMMON_FIELDS),
        # Beta since Kubernetes 1.33 (off by default there); the agent reads CAs from them.
        Kind(
            "clustertrustbundles",
            "ClusterTrustBundle",
            "certificates.k8s.io/v1beta1",
            False,
            _COMMON_FIELDS | {"spec.signerName"},
        ),
    )
}


class ApiFailure(Exception):
    """A request the fake answers with a metav1 Status error."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.details = details

    def status(self) -> JSON:
        return status_object(self.code, self.reason, str(self), self.details)


def status_object(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    out: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        out["details"] = details
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- selectors (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """A parsed field or label selector: all terms must hold."""

    terms: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (key, op, values)

    def matches(self, values: dict[str, str | None]) -> bool:
        for key, op, wanted in self.terms:
            have = values.get(key)
            if op == "=" and have != wanted[0]:
                return False
            if op == "!=" and have == wanted[0]:
                return False
            if op == "in" and have not in wanted:
                return False
            if op == "notin" and have in wanted:
                return False
            if op == "exists" and have is None:
                return False
            if op == "!exists" and have is not None:
                return False
        return True


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_field_selector(text: str, kind: Kind) -> Selector:
    terms = []
    for part in _split_top(text):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", part)
        if not m:
            raise ApiFailure(400, "BadRequest", f"invalid field selector: {part!r}")
        key, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if key not in kind.fields:
            raise ApiFailure(400, "BadRequest", f'field label not supported: "{key}"')
        terms.append((key, "!=" if op == "!=" else "=", (value,)))
    return Selector(tuple(terms))


def parse_label_selector(text: str) -> Selector:
    terms = []
    for part in _split_top(text):
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\((.*)\)", part):
            values = tuple(v.strip() for v in m.group(3).split(","))
            terms.append((m.group(1), m.group(2), values))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", part):
            terms.append((m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", part):
            terms.append((m.group(2), "!exists" if m.group(1) else "exists", ()))
        else:
            raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return Selector(tuple(terms))


def field_values(obj: JSON, kind: Kind) -> dict[str, str | None]:
    """The field-selector view of an object: missing fields read as "" as on the server."""
    out: dict[str, str | None] = {}
    for label in kind.fields:
        path = "source.component" if label == "source" else label
        node: Any = obj
        for step in path.split("."):
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, bool):
            node = str(node).lower()
        out[label] = "" if node is None else str(node)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge is served as this: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: JSON, ops: list[JSON]) -> JSON:
    """RFC 6902 subset: add, remove, replace, test."""
    doc = copy.deepcopy(target)
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[int(step)] if isinstance(parent, list) else parent[step]
        last = path[-1]
        name = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if name == "add":
                parent.insert(index, op["value"])
            elif name == "remove":
                parent.pop(index)
            elif name == "replace":
                parent[index] = op["value"]
            elif name == "test" and parent[index] != op["value"]:
                raise ApiFailure(422, "Invalid", f"test operation failed at {op['path']}")
        elif name in ("add", "replace"):
            if name == "replace" and last not in parent:
                raise ApiFailure(422, "Invalid", f"replace: missing path {op['path']}")
            parent[last] = op["value"]
        elif name == "remove":
            if last not in parent:
                raise ApiFailure(422, "Invalid", f"remove: missing path {op['path']}")
            del parent[last]
        elif name == "test" and parent.get(last) != op["value"]:
            raise ApiFailure(422, "Invalid", f"test operation failed at {op['path']}")
    return doc


# --- storage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One write, as the watch history keeps it."""

    rv: int
    plural: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: JSON
    prev: JSON | None


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    client: str
    authorization: str | None = None  # the header as sent, to check credentials reach us


_DROP, _EXPIRE, _STOP = "drop", "expire", "stop"


@dataclass(eq=False)
class _Watch:
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


@dataclass(frozen=True)
class _Route:
    kind: Kind
    namespace: str | None
    name: str | None
    status: bool
    eviction: bool = False  # pods/NAME/eviction


def _route(path: str) -> _Route:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    kind = KINDS.get(rest[0]) if rest else None
    sub = rest[2] if len(rest) == 3 else None
    ok = (
        kind is not None
        and kind.api_version == api_version
        and (kind.namespaced or namespace is None)
        and len(rest) <= 3
        and (
            sub is None
            or (sub == "status" and kind.has_status)
            or (sub == "eviction" and kind.plural == "pods")
        )
    )
    if not ok or kind is None:
        raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
    name = rest[1] if len(rest) > 1 else None
    return _Route(kind, namespace, name, sub == "status", sub == "eviction")


def discovery(path: str) -> JSON | None:
    """Legacy (unaggregated) discovery for the served kinds, so `kubectl get/patch` work
    against the fake; None for any other path."""
    path = "/" + path.strip("/")
    versions = sorted({k.api_version for k in KINDS.values()} - {"v1"})
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = [
            {
                "name": v.split("/")[0],
                "versions": [{"groupVersion": v, "version": v.split("/")[1]}],
                "preferredVersion": {"groupVersion": v, "version": v.split("/")[1]},
            }
            for v in versions
        ]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    for version in ["v1", *versions]:
        prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
        if path == prefix:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": version,
                "resources": [
                    {
                        "name": k.plural,
                        "singularName": k.kind.lower(),
                        "namespaced": k.namespaced,
                        "kind": k.kind,
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    }
                    for k in KINDS.values()
                    if k.api_version == version
                ],
            }
    return None


@dataclass
class _Refusal:
    """An eviction refusal a test asked for (`refuse_evictions`)."""

    left: int
    pod: tuple[str, str] | None
    budget: str
    retry_after: int


_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as apiserver's generateName



def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig pointing at a fake API server (no credentials: the fake needs none), for
    `ca-trust-agent run --kubeconfig`, kubectl and helm."""
    cluster = {"name": "fake", "cluster": {"server": url}}
    context = {"name": "fake", "context": {"cluster": "fake", "user": "fake"}}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [cluster],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [context],
    }
    path.write_text(json.dumps(config))
    return path

class FakeApiServer:
    """In-memory apiserver on 127.0.0.1:<ephemeral>. Use as a context manager."""

    def __init__(self, *, history: int = 1000, bookmark_interval: float = 1.0,
                 tls: tuple[str, str] | None = None) -> None:
        """`tls=(certfile, keyfile)` serves HTTPS, as in-cluster clients insist on."""
        self.bookmark_interval = bookmark_interval
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], JSON] = {}
        self._rv = 1
        self._compacted = 1  # a watch may start from any rv >= this
        self._history: deque[Change] = deque(maxlen=history)
        self._watches: set[_Watch] = set()
        self._resumed = threading.Event()
        self._resumed.set()
        self._pause_mode = "drop"
        self._bytes: dict[str, int] = {}
        self._requests: list[RequestRecord] = []
        self._injected: deque[int] = deque()
        self._refusals: list[_Refusal] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.api = self
        self._scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    # lifecycle
    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._resumed.set()
        self._signal_watches(_STOP)
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # test controls
    def expire_history(self) -> None:
        """Compact: every resourceVersion before now is gone (410); open watches get the 410."""
        with self._lock:
            self._rv += 1
            self._compacted = self._rv
            self._history.clear()
            for w in self._watches:
                w.queue.put(_EXPIRE)

    def drop_watches(self) -> None:
        """Cut every open watch stream mid-flight, without the terminating chunk."""
        self._signal_watches(_DROP)

    def pause(self, mode: str = "drop") -> None:
        """API outage. "drop": open watches are cut and every request's connection is closed
        without an answer. "stall": requests and watch streams hang until resume()."""
        if mode not in ("drop", "stall"):
            raise ValueError(mode)
        self._pause_mode = mode
        self._resumed.clear()
        if mode == "drop":
            self._signal_watches(_DROP)

    def resume(self) -> None:
        self._resumed.set()

    def inject_errors(self, code: int, count: int = 1) -> None:
        """Answer the next `count` requests with this HTTP error (429 carries Retry-After: 1)."""
        with self._lock:
            self._injected.extend([code] * count)

    def refuse_evictions(
        self,
        count: int = 1,
        *,
        pod: tuple[str, str] | None = None,
        budget: str = "test-pdb",
        retry_after: int = 10,
    ) -> None:
        """Refuse the next `count` evictions (of `pod`=(namespace, name) only, when given)
        as kube-apiserver does for a PodDisruptionBudget: 429 TooManyRequests, a
        DisruptionBudget cause, and Retry-After (the real server says 10 s)."""
        with self._lock:
            self._refusals.append(_Refusal(count, pod, budget, retry_after))

    def _refusal(self, namespace: str, name: str) -> _Refusal | None:
        """Caller holds the lock: the refusal that applies to this eviction, spent once."""
        for r in self._refusals:
            if r.left > 0 and r.pod in (None, (namespace, name)):
                r.left -= 1
                return r
        return None

    def _take_injected(self) -> int | None:
        with self._lock:
            return self._injected.popleft() if self._injected else None

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def bytes_sent(self, client: str) -> int:
        """Bytes the server wrote (headers and bodies) to one client."""
        with self._lock:
            return self._bytes.get(client, 0)

    def bytes_by_client(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def watch_count(self, plural: str | None = None) -> int:
        with self._lock:
            return sum(1 for w in self._watches if plural in (None, w.kind.plural))

    def wait_for_watches(self, n: int, plural: str | None = None, timeout: float = 10.0) -> None:
        """Block until at least n watches (of that resource) are open."""
        deadline = time.monotonic() + timeout
        while self.watch_count(plural) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.watch_count(plural)} watches open, wanted {n}")
            time.sleep(0.02)

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

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
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                meta.pop("resourceVersion", None)
                return self._commit(kind, key, obj, None)
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._commit(kind, key, obj, old)

    def get_object(self, plural: str, namespace: str | None, name: str) -> JSON | None:
        with self._lock:
            obj = self._objects.get((plural, namespace or "", name))
            return copy.deepcopy(obj) if obj else None

    def delete_object(self, plural: str, namespace: str | None, name: str) -> None:
        with self._lock:
            self._remove((plural, namespace or "", name))

    def objects(self, plural: str) -> list[JSON]:
        with self._lock:
            found = sorted(self._objects.items())
            return [copy.deepcopy(o) for (p, _, _), o in found if p == plural]

    # internals (callers hold self._lock)
    def _commit(self, kind: Kind, key: tuple[str, str, str], obj: JSON, old: JSON | None) -> JSON:
        meta = obj["metadata"]
        if old is not None:
            same = {**obj, "metadata": {**meta, "resourceVersion": None}}
            was = {**old, "metadata": {**old["metadata"], "resourceVersion": None}}
            if same == was:  # no-op writes are not written: no new rv, no event
                return copy.deepcopy(old)
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        change_type = "ADDED" if old is None else "MODIFIED"
        self._record(Change(self._rv, kind.plural, change_type, obj, old))
        return copy.deepcopy(obj)

    def _remove(self, key: tuple[str, str, str]) -> JSON:
        old = self._objects.pop(key)
        self._rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(Change(self._rv, key[0], "DELETED", gone, old))
        return gone

    def _record(self, change: Change) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].rv
        self._history.append(change)
        for w in self._watches:
            w.queue.put(change)

    def _signal_watches(self, signal: str) -> None:
        with self._lock:
            for w in self._watches:
                w.queue.put(signal)

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _count(self, client: str, n: int) -> None:
        with self._lock:
            self._bytes[client] = self._bytes.get(client, 0) + n

    # verbs
    def handle(self, method: str, route: _Route, query: dict[str, str], body: Any,
               content_type: str) -> tuple[int, JSON]:
        kind = route.kind
        if route.eviction:
            if method != "POST" or route.namespace is None or route.name is None:
                raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported here")
            return self._evict(route.namespace, route.name, body)
        if method == "GET" and route.name is None:
            return 200, self._list(route, query)
        if method == "POST" and route.name is None and not route.status:
            if kind.namespaced and route.namespace is None:
                raise ApiFailure(405, "MethodNotAllowed", "the namespace is required")
            return 201, self._create(kind, route.namespace, body)
        if route.name is None:
            raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported here")
        if kind.namespaced and route.namespace is None:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        key = (kind.plural, route.namespace or "", route.name)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise ApiFailure(
                    404,
                    "NotFound",
                    f'{kind.plural} "{route.name}" not found',
                    {"name": route.name, "kind": kind.plural},
                )
            if method == "GET":
                return 200, copy.deepcopy(old)
            if method == "DELETE":
                self._check_preconditions(kind, route.name, old, body)
                gone = self._remove(key)
                if kind.plural == "pods":
                    return 200, gone
                details = {"name": route.name, "kind": kind.plural, "uid": old["metadata"]["uid"]}
                return 200, {**status_object(200, "", ""), "status": "Success", "details": details}
            if method == "PUT":
                new = self._check_body(kind, route, body)
            elif method == "PATCH":
                new = self._patched(old, body, content_type)
            else:
                raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported")
            return 200, self._update(kind, route, key, old, new)

    def _evict(self, namespace: str, name: str, body: Any) -> tuple[int, JSON]:
        """POST pods/NAME/eviction, as the apiserver's eviction REST does it."""
        if not isinstance(body, dict) or body.get("kind") != "Eviction" or body.get(
            "apiVersion"
        ) not in ("policy/v1", "policy/v1beta1"):
            raise ApiFailure(400, "BadRequest", "expected a policy/v1 Eviction")
        if (body.get("metadata") or {}).get("name") != name:
            raise ApiFailure(400, "BadRequest", "name in URL does not match name in Eviction "
                             "object")
        key = ("pods", namespace, name)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise ApiFailure(404, "NotFound", f'pods "{name}" not found',
                                 {"name": name, "kind": "pods"})
            self._check_preconditions(KINDS["pods"], name, old, body.get("deleteOptions"))
            refusal = self._refusal(namespace, name)
            if refusal is not None:
                raise ApiFailure(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    {
                        "causes": [{
                            "reason": "DisruptionBudget",
                            "message": f"The disruption budget {refusal.budget} needs 1 "
                            "healthy pods and has 1 currently",
                        }],
                        "retryAfterSeconds": refusal.retry_after,
                    },
                )
            self._remove(key)
        return 201, {**status_object(201, "", ""), "status": "Success"}

    def _list(self, route: _Route, query: dict[str, str]) -> JSON:
        kind = route.kind
        w = _Watch(
            kind,
            route.namespace,
            parse_field_selector(query.get("fieldSelector", ""), kind),
            parse_label_selector(query.get("labelSelector", "")),
        )
        limit = int(query.get("limit") or 0)
        start, list_rv = "", None
        if token := query.get("continue"):
            state = json.loads(base64.urlsafe_b64decode(token))
            start, list_rv = state["start"], state["rv"]
        with self._lock:
            if list_rv is not None and list_rv < self._compacted:
                raise ApiFailure(
                    410, "Expired", "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the continue "
                    "parameter."
                )
            list_rv = list_rv or self._rv
            items = [
                o for (p, ns, name), o in sorted(self._objects.items())
                if p == kind.plural and f"{ns}/{name}" > start and w.matches(o)
            ]
            items = copy.deepcopy(items)
        meta: JSON = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            after = f"{last.get('namespace', '')}/{last['name']}"
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": after}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for item in items:  # the real server leaves kind/apiVersion off list items
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                "items": items}

    def _create(self, kind: Kind, namespace: str | None, body: Any) -> JSON:
        obj = self._check_body(kind, _Route(kind, namespace, None, False), body, creating=True)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise ApiFailure(400, "BadRequest",
                             "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiFailure(422, "Invalid", f"{kind.kind} is invalid: metadata.name: "
                                 "Required value: name or generateName is required")
            suffix = "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        key = (kind.plural, namespace or "", meta["name"])
        with self._lock:
            if key in self._objects:
                raise ApiFailure(
                    409,
                    "AlreadyExists",
                    f'{kind.plural} "{meta["name"]}" already exists',
                    {"name": meta["name"], "kind": kind.plural},
                )
            return self._commit(kind, key, obj, None)

    def _check_body(self, kind: Kind, route: _Route, body: Any, creating: bool = False) -> JSON:
        if not isinstance(body, dict):
            raise ApiFailure(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("kind", kind.kind) != kind.kind or obj.get(
            "apiVersion", kind.api_version
        ) != kind.api_version:
            raise ApiFailure(400, "BadRequest", f"expected {kind.api_version} {kind.kind}")
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            if meta.get("namespace", route.namespace) != route.namespace:
                raise ApiFailure(400, "BadRequest", "the namespace of the provided object does "
                                 "not match the namespace sent on the request")
            meta["namespace"] = route.namespace
        if not creating and meta.get("name") != route.name:
            raise ApiFailure(400, "BadRequest", "the name of the object does not match the "
                             "name on the URL")
        return obj

    def _patched(self, old: JSON, body: Any, content_type: str) -> JSON:
        ctype = content_type.split(";", maxsplit=1)[0].strip()
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiFailure(400, "BadRequest", "a merge patch must be a JSON object")
            new: JSON = merge_patch(old, body)
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        elif ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiFailure(400, "BadRequest", "a JSON patch must be a list")
            try:
                new = json_patch(old, body)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise ApiFailure(422, "Invalid", f"the patch does not apply: {exc}") from exc
            wanted_rv = new["metadata"].get("resourceVersion")
        else:
            raise ApiFailure(415, "UnsupportedMediaType",
                             f"the body of the request was in an unknown format - accepted "
                             f"media types include: application/json-patch+json, "
                             f"application/merge-patch+json, "
                             f"application/strategic-merge-patch+json; got {ctype!r}")
        # a patch may carry a resourceVersion as an optimistic lock; identity is not patchable
        for k in ("name", "namespace", "uid", "creationTimestamp"):
            if k in old["metadata"]:
                new.setdefault("metadata", {})[k] = old["metadata"][k]
        new["metadata"]["resourceVersion"] = wanted_rv or old["metadata"]["resourceVersion"]
        return new

    def _check_preconditions(self, kind: Kind, name: str, old: JSON, body: Any) -> None:
        pre = (body.get("preconditions") if isinstance(body, dict) else None) or {}
        for k in ("resourceVersion", "uid"):
            if pre.get(k) and pre[k] != old["metadata"].get(k):
                raise ApiFailure(409, "Conflict", f"Precondition failed: {k} in precondition: "
                                 f"{pre[k]}, {k} in object meta: {old['metadata'].get(k)}",
                                 {"name": name, "kind": kind.plural})

    def _update(self, kind: Kind, route: _Route, key: tuple[str, str, str], old: JSON,
                new: JSON) -> JSON:
        rv = new["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise ApiFailure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{route.name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                {"name": route.name, "kind": kind.plural},
            )
        if kind.has_status:  # the status subresource and the main resource split the object
            base = new if route.status else old
            rest = old if route.status else new
            new = {**rest, "status": base.get("status")}
            if new["status"] is None:
                del new["status"]
        new["metadata"]["uid"] = old["metadata"]["uid"]
        new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        return self._commit(kind, key, new, old)

    # watch
    def open_watch(self, route: _Route, query: dict[str, str]) -> tuple[_Watch | None, list[JSON]]:
        """Register a watch; returns it (None when expired) and the events to send first."""
        kind = route.kind
        w = _Watch(
            kind,
            route.namespace,
            parse_field_selector(query.get("fieldSelector", ""), kind),
            parse_label_selector(query.get("labelSelector", "")),
        )
        rv_text = query.get("resourceVersion", "")
        if rv_text not in ("", "0") and not rv_text.isdigit():
            raise ApiFailure(400, "BadRequest", f"invalid resource version: {rv_text!r}")
        with self._lock:
            if rv_text in ("", "0"):  # "start at most recent": synthetic ADDED for the state
                first = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (p, _, _), o in sorted(self._objects.items())
                    if p == kind.plural and w.matches(o)
                ]
            elif int(rv_text) < self._compacted:
                message = f"too old resource version: {rv_text} ({self._compacted})"
                return None, [{"type": "ERROR", "object": status_object(410, "Expired", message)}]
            else:
                since = int(rv_text)
                events = (w.translate(c) for c in self._history if c.rv > since)
                first = [copy.deepcopy(e) for e in events if e is not None]
            self._watches.add(w)
        return w, first

    def close_watch(self, w: _Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def bookmark(self, w: _Watch) -> JSON | None:
        """A BOOKMARK at the current rv, only when nothing is queued for this watcher."""
        with self._lock:
            if not w.queue.empty():
                return None
            meta = {"resourceVersion": str(self._rv)}
        return {"type": "BOOKMARK",
                "object": {"kind": w.kind.kind, "apiVersion": w.kind.api_version,
                           "metadata": meta}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is not news
            super().handle_error(request, client_address)


class _CountingWriter:
    """Wraps the handler's wfile so every byte sent is charged to the request's client."""

    def __init__(self, raw: Any, handler: _Handler) -> None:
        self._raw = raw
        self._handler = handler

    def write(self, data: bytes) -> int:
        self._handler.server.api._count(self._handler.client, len(data))
        written: int = self._raw.write(data)
        return written

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    client = "unknown"

    def setup(self) -> None:
        super().setup()
        # Go's net package (so kube-apiserver) sets TCP_NODELAY; without it the body written
        # after the headers waits ~40 ms for the client's delayed ACK (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wfile = _CountingWriter(self.wfile, self)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        self.client = self.headers.get("X-Fake-Client") or self.headers.get("User-Agent") or ""
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        api._log(RequestRecord(method, url.path, query, self.client,
                               self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if api.paused:
            if api._pause_mode == "drop":
                self._abort()
                return
            api._resumed.wait()
        if (injected := api._take_injected()) is not None:
            reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(injected, "Injected")
            self._send_json(injected, status_object(injected, reason, "injected by the test"),
                            retry_after="1" if injected == 429 else None)
            return
        if method == "GET" and (found := discovery(url.path)) is not None:
            self._send_json(200, found)  # what kubectl reads to map `configmap` to a path
            return
        try:
            body = json.loads(raw) if raw else None
            route = _route(url.path)
            if method == "GET" and route.name is None and query.get("watch") in ("1", "true"):
                self._watch(route, query)
                return
            code, payload = api.handle(
                method, route, query, body, self.headers.get("Content-Type", "")
            )
        except ApiFailure as failure:
            code, payload = failure.code, failure.status()
        except (ValueError, KeyError) as exc:
            code, payload = 400, status_object(400, "BadRequest", f"bad request: {exc}")
        # the apiserver turns a Status's retryAfterSeconds into the Retry-After header
        retry = (payload.get("details") or {}).get("retryAfterSeconds") if code >= 400 else None
        self._send_json(code, payload, retry_after=None if retry is None else str(retry))

    def _send_json(self, code: int, payload: JSON, retry_after: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _chunk(self, event: JSON) -> None:
        line = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))

    def _watch(self, route: _Route, query: dict[str, str]) -> None:
        api = self.server.api
        w, first = api.open_watch(route, query)  # may raise ApiFailure before any header
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in first:
                self._chunk(event)
            if w is not None and not self._stream(w, time.monotonic() + timeout, bookmarks):
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            if w is not None:
                api.close_watch(w)

    def _stream(self, w: _Watch, deadline: float, bookmarks: bool) -> bool:
        """Send events until the deadline; False when the stream was cut (no final chunk)."""
        api = self.server.api
        last_bookmark = time.monotonic()
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = w.queue.get(timeout=min(left, api.bookmark_interval))
            except queue.Empty:
                item = None
            if api.paused and api._pause_mode == "stall" and item != _STOP:
                api._resumed.wait()
            if item == _DROP:
                self._abort()
                return False
            if item == _STOP:
                return True
            if item == _EXPIRE:
                message = "too old resource version: the watch cache was compacted"
                self._chunk({"type": "ERROR", "object": status_object(410, "Expired", message)})
                return True
            if isinstance(item, Change):
                event = w.translate(item)
                if event is not None:
                    self._chunk(copy.deepcopy(event))
            if bookmarks and time.monotonic() - last_bookmark >= api.bookmark_interval:
                mark = api.bookmark(w)
                if mark is not None:
                    self._chunk(mark)
                    last_bookmark = time.monotonic()
        return True


# --- fixtures: schema-complete objects the official client's strict models accept -------------


def make_pod(name: str, *, namespace: str = "default", node: str = "node-a",
             image: str = "registry.test:5443/app:1", labels: dict[str, str] | None = None,
             waiting_reason: str | None = None, waiting_message: str = "") -> JSON:
    """A pod on a node; with waiting_reason (e.g. "ErrImagePull") its container is waiting."""
    status: JSON = {"phase": "Pending"}
    if waiting_reason is not None:
        status["containerStatuses"] = [{
            "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
            "state": {"waiting": {"reason": waiting_reason, "message": waiting_message}},
        }]
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": image}]},
        "status": status,
    }


def make_node(name: str, *, annotations: dict[str, str] | None = None,
              runtime: str = "containerd://1.7.24") -> JSON:
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "annotations": dict(annotations or {}),
                     "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"nodeInfo": {
            "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": runtime,
            "kernelVersion": "6.1.0", "kubeProxyVersion": "", "kubeletVersion": "v1.31.0",
            "machineID": "m", "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12",
            "systemUUID": "s",
        }},
    }


def make_event(name: str, *, namespace: str = "default", reason: str = "Failed",
               message: str = "", involved: JSON | None = None) -> JSON:
    return {
        "kind": "Event", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": dict(involved or {"kind": "Pod", "namespace": namespace, "name": "p"}),
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": _now(), "lastTimestamp": _now(),
    }


def make_configmap(name: str, data: dict[str, str], *, namespace: str = "default") -> JSON:
    return {"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace}, "data": dict(data)}


def make_lease(name: str, *, namespace: str = "default", holder: str | None = None,
               duration: int = 60) -> JSON:
    spec: JSON = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec.update(holderIdentity=holder, acquireTime=_now_micro(), renewTime=_now_micro())
    return {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

