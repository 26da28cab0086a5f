"""The verbs on a resource, as the apiserver's REST storage answers them.

GET, LIST (with `limit`/`continue`), POST (generateName, 409 AlreadyExists), PUT (409 Conflict
on a stale resourceVersion), merge / strategic-merge / JSON patch, DELETE with preconditions,
the `status` subresource (the main resource keeps the old status and the other way round),
and pods' `eviction` subresource, refused when a test asked for it (`Faults.refusal`).
"""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

from lab.fakes.apiserver.controls import Faults
from lab.fakes.apiserver.kinds import JSON, KINDS, ApiFailure, Kind, status_object
from lab.fakes.apiserver.patches import json_patch, merge_patch
from lab.fakes.apiserver.routes import Route
from lab.fakes.apiserver.store import Key, Store
from lab.fakes.apiserver.watch import selection

SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as apiserver's generateName


def handle(
    store: Store,
    faults: Faults,
    method: str,
    route: Route,
    query: dict[str, str],
    body: Any,
    content_type: str,
) -> tuple[int, JSON]:
    """One request that is not a watch: the status code and the JSON to answer with."""
    kind = route.kind
    if route.eviction:
        if method != "POST" or route.namespace is None or route.name is None:
            raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported here")
        return evict(store, faults, route.namespace, route.name, body)
    if method == "GET" and route.name is None:
        return 200, list_objects(store, route, query)
    if method == "POST" and route.name is None and not route.status:
        if kind.namespaced and route.namespace is None:
            raise ApiFailure(405, "MethodNotAllowed", "the namespace is required")
        return 201, create(store, kind, route.namespace, body)
    if route.name is None:
        raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported here")
    if kind.namespaced and route.namespace is None:
        raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
    key = (kind.plural, route.namespace or "", route.name)
    with store.lock:
        old = store.objects.get(key)
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
            check_preconditions(kind, route.name, old, body)
            gone = store.remove(key)
            if kind.plural == "pods":
                return 200, gone
            details = {"name": route.name, "kind": kind.plural, "uid": old["metadata"]["uid"]}
            return 200, {**status_object(200, "", ""), "status": "Success", "details": details}
        if method == "PUT":
            new = check_body(kind, route, body)
        elif method == "PATCH":
            new = patched(old, body, content_type)
        else:
            raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported")
        return 200, update(store, kind, route, key, old, new)


def evict(store: Store, faults: Faults, namespace: str, name: str, body: Any) -> tuple[int, JSON]:
    """POST pods/NAME/eviction, as the apiserver's eviction REST does it."""
    if not isinstance(body, dict) or body.get("kind") != "Eviction" or body.get(
        "apiVersion"
    ) not in ("policy/v1", "policy/v1beta1"):
        raise ApiFailure(400, "BadRequest", "expected a policy/v1 Eviction")
    if (body.get("metadata") or {}).get("name") != name:
        raise ApiFailure(400, "BadRequest", "name in URL does not match name in Eviction "
                         "object")
    key = ("pods", namespace, name)
    with store.lock:
        old = store.objects.get(key)
        if old is None:
            raise ApiFailure(404, "NotFound", f'pods "{name}" not found',
                             {"name": name, "kind": "pods"})
        check_preconditions(KINDS["pods"], name, old, body.get("deleteOptions"))
        refusal = faults.refusal(namespace, name)
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
        store.remove(key)
    return 201, {**status_object(201, "", ""), "status": "Success"}


def list_objects(store: Store, route: Route, query: dict[str, str]) -> JSON:
    kind = route.kind
    w = selection(route, query)
    limit = int(query.get("limit") or 0)
    start, list_rv = "", None
    if token := query.get("continue"):
        state = json.loads(base64.urlsafe_b64decode(token))
        start, list_rv = state["start"], state["rv"]
    with store.lock:
        if list_rv is not None and list_rv < store.compacted:
            raise ApiFailure(
                410, "Expired", "The provided continue parameter is too old to display a "
                "consistent list result. You can start a new list without the continue "
                "parameter."
            )
        list_rv = list_rv or store.rv
        items = [
            o for (p, ns, name), o in sorted(store.objects.items())
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


def create(store: Store, kind: Kind, namespace: str | None, body: Any) -> JSON:
    obj = check_body(kind, Route(kind, namespace, None, False), body, creating=True)
    meta = obj["metadata"]
    if meta.get("resourceVersion"):
        raise ApiFailure(400, "BadRequest",
                         "resourceVersion should not be set on objects to be created")
    if not meta.get("name"):
        if not meta.get("generateName"):
            raise ApiFailure(422, "Invalid", f"{kind.kind} is invalid: metadata.name: "
                             "Required value: name or generateName is required")
        suffix = "".join(random.choice(SUFFIX_ALPHABET) for _ in range(5))
        meta["name"] = meta["generateName"] + suffix
    key = (kind.plural, namespace or "", meta["name"])
    with store.lock:
        if key in store.objects:
            raise ApiFailure(
                409,
                "AlreadyExists",
                f'{kind.plural} "{meta["name"]}" already exists',
                {"name": meta["name"], "kind": kind.plural},
            )
        return store.commit(kind, key, obj, None)


def check_body(kind: Kind, route: Route, body: Any, creating: bool = False) -> JSON:
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
    _check_configmap_size(kind, obj)
    return obj


CONFIGMAP_MAX_BYTES = 1024 * 1024  # data + binaryData, keys included (apimachinery)


def _check_configmap_size(kind: Kind, obj: JSON) -> None:
    """kube-apiserver refuses a ConfigMap whose data holds more than 1 MiB (422)."""
    if kind.plural != "configmaps":
        return
    size = 0
    for section in ("data", "binaryData"):
        for key, value in (obj.get(section) or {}).items():
            size += len(str(key)) + len(str(value))
    if size > CONFIGMAP_MAX_BYTES:
        name = (obj.get("metadata") or {}).get("name", "")
        raise ApiFailure(
            422, "Invalid", f'ConfigMap "{name}" is invalid: []: Too long: must have at most '
            f"{CONFIGMAP_MAX_BYTES} bytes",
        )


def patched(old: JSON, body: Any, content_type: str) -> JSON:
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


def check_preconditions(kind: Kind, name: str, old: JSON, body: Any) -> None:
    pre = (body.get("preconditions") if isinstance(body, dict) else None) or {}
    for k in ("resourceVersion", "uid"):
        if pre.get(k) and pre[k] != old["metadata"].get(k):
            raise ApiFailure(409, "Conflict", f"Precondition failed: {k} in precondition: "
                             f"{pre[k]}, {k} in object meta: {old['metadata'].get(k)}",
                             {"name": name, "kind": kind.plural})


def update(store: Store, kind: Kind, route: Route, key: Key, old: JSON, new: JSON) -> JSON:
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
    return store.commit(kind, key, new, old)
