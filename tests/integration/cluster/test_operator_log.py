"""What an operator reads in the DaemonSet's JSON log a week later: a whole remediation.

`ca-trust-agent run --log-json` runs as a process against the fake API server and a real TLS
registry stand-in, on a host-root tree. A Deployment's pod fails on an allowed registry
(detected, allowed, fetched, installed, verified, recycled), another on a registry the
policy does not allow (denied), then the registry leaves the policy (removed). Every line on
stderr is parsed as JSON, and the story is read back by its stable keys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.fakes.apiserver import FakeApiServer, write_kubeconfig
from lab.fakes.doubles import failing_pod, wait_until
from lab.fakes.doubles import node as node_object
from lab.fakes.doubles import policy as policy_configmap
from lab.fakes.hostroot import node_root
from lab.procs import free_port
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

NS = "ca-trust-agent"
NODE = "node-a"
RS = {"kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-web"}


def agent_argv(root: Path, config: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "agent", "run", "--host-root", str(root), "--runner", "direct",
        "--namespace", NS, "--metrics-address", f"127.0.0.1:{port}",
        "--kubeconfig", str(config), "--log-json",
    ]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def node_events(api: FakeApiServer, reason: str) -> list[dict[str, Any]]:
    return [
        e for e in api.objects("events")
        if (e.get("involvedObject") or {}).get("kind") == "Node" and e.get("reason") == reason
    ]


@pytest.fixture
def story(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """Runs the whole story and hands back every log line, parsed."""
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    root = node_root(tmp_path / "host")
    port = free_port()
    with FakeApiServer() as api, TLSServer(ca.chain, ca.leaf) as server:
        hostport = f"127.0.0.1:{server.port}"
        api.put_object(node_object(NODE))
        api.put_object(policy_configmap('recyclePods: true\nregistries:\n  - host: "127.0.0.1"\n'))
        proc = subprocess.Popen(
            agent_argv(root, write_kubeconfig(tmp_path / "kubeconfig", api.url), port),
            env={**os.environ, "NODE_NAME": NODE},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_until(lambda: ready(port), timeout=20)
            api.put_object(failing_pod("web-1", NODE, hostport, owner=RS))
            wait_until(lambda: node_events(api, "PodRecycled"), timeout=20)
            api.put_object(failing_pod("other-1", NODE, "denied.test:443"))
            wait_until(lambda: node_events(api, "RegistryNotAllowed"), timeout=20)
            api.put_object(policy_configmap('registries:\n  - host: "denied-too.test"\n'))
            wait_until(lambda: node_events(api, "CARemoved"), timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        lines = proc.stderr.read().splitlines()
        print("\n".join(lines))  # the excerpt an operator sees (pytest -s)
        yield [json.loads(line) for line in lines]  # every line is one JSON object


def events(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines if line.get("logger") == "agent.remediation"]


def one(lines: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The first line of that event (a pod still failing is re-examined on policy changes)."""
    return next(x for x in lines if x.get("event") == event)


def test_a_remediation_reads_end_to_end_in_the_json_log(story: list[dict[str, Any]]) -> None:
    told = events(story)
    assert told[:7] == [
        "detected", "allowed", "fetched", "installed", "verified", "recycled", "recycle-summary",
    ]
    # then the other pod (denied), and the policy change: the CA removed, and the pod still
    # failing re-examined under the new policy (denied again)
    assert told[7:9] == ["detected", "denied"]
    assert "removed" in told[9:]

    detected, fetched, installed = (one(story, e) for e in ("detected", "fetched", "installed"))
    hostport = detected["endpoint"]
    assert detected["pod"] == "shop/web-1" and detected["node"] == NODE
    assert detected["image"] == f"{hostport}/lab/tiny:v1" and detected["registry"] == hostport
    # one fingerprint follows the anchor from the fetch to the removal
    assert fetched["sha256"].startswith("sha256:")
    assert installed["sha256"] == fetched["sha256"] == one(story, "removed")["sha256"]
    assert installed["scope"] == "registry" and installed["stores"] == "containerd"
    assert installed["result"] == "installed" and installed["level"] == "INFO"
    assert isinstance(installed["duration"], float) and installed["duration"] >= 0
    assert one(story, "verified")["result"] in ("tls", "runtime")
    recycled = one(story, "recycled")
    assert recycled["pod"] == "shop/web-1" and recycled["owner"] == "ReplicaSet web-7d9f"
    assert one(story, "recycle-summary")["evicted"] == 1
    assert one(story, "removed")["reason"].endswith("is no longer allowed by policy.yaml")


def test_every_line_carries_time_level_and_logger(story: list[dict[str, Any]]) -> None:
    for line in story:
        assert {"timestamp", "level", "logger", "message"} <= line.keys(), line
    denied = one(story, "denied")
    assert denied["level"] == "INFO" and denied["endpoint"] == "denied.test:443"
    assert denied["pod"] == "shop/other-1" and denied["result"] == "denied"


def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with FakeApiServer() as api, TLSServer(*_throwaway_chain(tmp_path)) as busy:
        argv = agent_argv(tmp_path, write_kubeconfig(tmp_path / "kc", api.url), busy.port)
        done = subprocess.run(
            argv, env={**os.environ, "NODE_NAME": NODE}, capture_output=True, text=True,
            timeout=60, check=False,
        )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"ca-trust-agent: cannot serve metrics on 127.0.0.1:{busy.port}: address already in "
        "use; is another agent or exporter listening there? Choose another with "
        "--metrics-address HOST:PORT"
    )
    assert "Traceback" not in done.stderr


def _throwaway_chain(tmp_path: Path) -> tuple[Any, Any]:
    ca = pki.make_pki(tmp_path / "pki", names=("busy.test",), ips=("127.0.0.1",))
    return ca.chain, ca.leaf
