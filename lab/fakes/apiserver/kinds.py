"""The served resource types and the metav1 Status every error is.

Field selectors are limited per kind to the labels the real kube-apiserver supports for it
(`fields`); any other label is a 400, as on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
