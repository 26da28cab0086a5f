"""Small shared stand-ins for the cluster-level tests and benches.

Objects as kubelet and an operator write them (a Node that opted in, the policy ConfigMap,
a pod whose pull failed with x509), a polling `wait_until`, and the two effects the tests
replace when they do not run real daemons: the command runner and the runtime restarts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.node.host import CommandResult

OPT_IN = "ca-trust-agent.io/remediate"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy and return it; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def node(
    name: str, *, opted_in: bool = True, runtime: str = "containerd://1.6.20"
) -> dict[str, Any]:
    annotations = {OPT_IN: "enabled"} if opted_in else {}
    return {
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations, "labels": {}},
        "spec": {},
        "status": {"nodeInfo": {"containerRuntimeVersion": runtime}},
    }


def policy(text: str, namespace: str = "ca-trust-agent") -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": "ca-trust-agent", "namespace": namespace},
        "data": {"policy.yaml": text},
    }


def x509_message(image: str, hostport: str) -> str:
    """containerd's CRI wording for a pull that failed on an unknown authority."""
    return (
        f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
        f'failed to do request: Head "https://{hostport}/v2/lab/tiny/manifests/v1": '
        "x509: certificate signed by unknown authority"
    )


def pod(
    name: str,
    node_name: str,
    image: str,
    waiting: Mapping[str, str],
    *,
    namespace: str = "shop",
    owner: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pending pod whose one container waits with `waiting` ({"reason", "message"})."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", **owner, "controller": True, "blockOwnerDeletion": True}
        ]
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": image}]},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": image,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": dict(waiting)},
                }
            ],
        },
    }


def failing_pod(
    name: str, node_name: str, hostport: str, *, owner: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A pod whose pull of `<hostport>/lab/tiny:v1` failed with x509 (ErrImagePull)."""
    image = f"{hostport}/lab/tiny:v1"
    waiting = {"reason": "ErrImagePull", "message": x509_message(image, hostport)}
    return pod(name, node_name, image, waiting, owner=owner)


def rebuild_debian_bundle(root: str | Path) -> None:
    """What Debian's update-ca-certificates leaves for the runtimes, on a host-root tree:
    `/etc/ssl/certs/ca-certificates.crt` concatenated from the `*.crt` anchors (the engine
    reads it back after every refresh, so a stand-in must produce it)."""
    base = Path(root)
    bundle = base / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    anchors = sorted((base / "usr/local/share/ca-certificates").rglob("*.crt"))
    bundle.write_bytes(b"".join(p.read_bytes() for p in anchors))


class RecordingRunner:
    """Stands in for host commands (update-ca-certificates & co.): records, succeeds; given
    the host root, `update-ca-certificates` also rebuilds that root's bundle."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.root = root

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        self.calls.append(tuple(argv))
        if self.root is not None and argv and argv[0] == "update-ca-certificates":
            rebuild_debian_bundle(self.root)
        return CommandResult(tuple(argv), 0, "", "", 0.0, False)


class FakeRestarts:
    """Stands in for RuntimeManager: records restarts (and how many overlapped), each
    taking `seconds`."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.done: list[str] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def check_restart_allowed(self, runtime: str, **_: object) -> None:
        pass

    def restart(self, runtime: str, **_: object) -> float:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.seconds)
        with self._lock:
            self.active -= 1
            self.done.append(runtime)
        return self.seconds
