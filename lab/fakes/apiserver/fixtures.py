"""Schema-complete objects the official client's strict models accept, and a kubeconfig.

What kubelet, an operator or a controller would have written, for tests to `put_object`.
"""

from __future__ import annotations

import json
from pathlib import Path

from lab.fakes.apiserver.kinds import JSON, now, now_micro


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
        "firstTimestamp": now(), "lastTimestamp": now(),
    }


def make_configmap(name: str, data: dict[str, str], *, namespace: str = "default") -> JSON:
    return {"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace}, "data": dict(data)}


def make_lease(name: str, *, namespace: str = "default", holder: str | None = None,
               duration: int = 60) -> JSON:
    spec: JSON = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec.update(holderIdentity=holder, acquireTime=now_micro(), renewTime=now_micro())
    return {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


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
