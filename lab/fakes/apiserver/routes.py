"""Which resource a URL names, and the discovery documents kubectl reads first."""

from __future__ import annotations

from dataclasses import dataclass

from lab.fakes.apiserver.kinds import JSON, KINDS, ApiFailure, Kind


@dataclass(frozen=True)
class Route:
    kind: Kind
    namespace: str | None
    name: str | None
    status: bool
    eviction: bool = False  # pods/NAME/eviction


def parse_route(path: str) -> Route:
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
    return Route(kind, namespace, name, sub == "status", sub == "eviction")


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

