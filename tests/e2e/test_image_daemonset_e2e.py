"""What ships, run as the DaemonSet runs it, judged by a real containerd (1.6.20 and 2.1.9).

The other end-to-end tests run the agent from the repo's venv, which holds the test extras:
a runtime dependency missing from the image (grpcio, once) goes unnoticed there. Here the
agent is the image built from the Dockerfile (`agent_image`, conftest.py), started with the
DaemonSet's args (`run --host-root /host --log-json`), its security context and host
network, NODE_NAME/POD_NAMESPACE, and a ServiceAccount (token, ca.crt) for the fake API
server on loopback. /host is a node root the test made, shared with a real containerd:

    <host>/etc/os-release
    <host>/etc/containerd/config.toml       config_path = "/etc/containerd/certs.d"
    <host>/etc/containerd/certs.d/          what the agent writes, what containerd reads
    <host>/run/containerd/containerd.sock   the CRI the agent verifies through
    <host>/var/lib/ca-trust-agent/          the agent's ledger

containerd runs in a mount namespace where those three directories are bind-mounted at
their node paths (lab/isolation/nodens.py), so the config it reads names the node paths the agent
resolves under /host. The registry sits on a network-namespace address, since 2.x never
verifies TLS for loopback registries.

The pod's status carries the error containerd's CRI really returned for the pull, as
kubelet copies it. Run this file alone with:

    unshare --mount --propagation private -- \\
        .venv/bin/python -m pytest -q -s tests/e2e/test_image_daemonset_e2e.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import node, pod, policy, wait_until
from lab.isolation.nodens import HostRoot
from lab.procs import free_port
from lab.runtimes.containerd2 import VERSION, Containerd2, available
from lab.runtimes.imagebuild import docker
from lab.tls import pki
from tests.e2e.conftest import (
    AGENT_NS,
    DAEMONSET,
    SA_DIR,
    AgentImage,
    LabRegistry,
    cri_pull,
    in_cluster,
    timing,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NODE = "image-node"
X509_UNKNOWN = "x509: certificate signed by unknown authority"
TRUSTED_ANNOTATION = "ca-trust-agent.io/trusted-registries"
CERTS_D = "/etc/containerd/certs.d"
REGISTRY_TABLE = {
    2: '[plugins."io.containerd.grpc.v1.cri".registry]',  # containerd 1.x, config version 2
    3: "[plugins.'io.containerd.cri.v1.images'.registry]",  # containerd 2.x, version 3
}


@pytest.fixture(scope="module", params=["1.6.20", VERSION])
def containerd_node(
    request: pytest.FixtureRequest,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Containerd2]:
    version = str(request.param)
    if version == VERSION and not available():
        pytest.fail(f"containerd {VERSION} is missing: scripts/bootstrap unpacks it")
    base = tmp_path_factory.mktemp(f"image-node-{version}")
    root = HostRoot(base / "host")
    daemon = Containerd2(root, base / "daemon", version)
    root.prepare()
    (root.base / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    table = REGISTRY_TABLE[daemon.config_version]
    daemon.write_config(f'{daemon.base_config()}{table}\n  config_path = "{CERTS_D}"\n')
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def describe(events: list[dict[str, Any]]) -> str:
    """One line per Event, oldest first: what `kubectl get events` would show."""

    def created(event: dict[str, Any]) -> int:
        # the recorder names an Event `<object>.<hex nanoseconds>`, as client-go does; this
        # runs while reporting a failure, so a name of another shape must not raise
        try:
            return int(str(event["metadata"]["name"]).rsplit(".", 1)[1], 16)
        except (IndexError, ValueError):
            return 0

    lines = []
    for e in sorted(events, key=created):
        about = e.get("involvedObject") or {}
        lines.append(f"[event] {e.get('type')} {e.get('reason')} (x{e.get('count')}) "
                     f"{about.get('kind')}/{about.get('name')}: {e.get('message')}")
    return "\n".join(lines)


def reasons(api: FakeApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.objects("events") if e.get("reason") == reason]


def trusted_annotation(api: FakeApiServer) -> str | None:
    obj = api.get_object("nodes", None, NODE) or {}
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(TRUSTED_ANNOTATION)


def ledger(root: Path) -> dict[str, Any]:
    path = root / "var/lib/ca-trust-agent/ledger.json"
    return dict(json.loads(path.read_text())["entries"]) if path.exists() else {}


def agent_files(certs_d: Path) -> list[str]:
    return sorted(str(p.relative_to(certs_d)) for p in certs_d.rglob("ca-trust-agent-*"))


# The first test of a session to use the image pays its build (82-115 s measured on 2 cores),
# and dockerd's vfs driver copies the whole image (333 MB) into every container it creates.
@pytest.mark.timeout(900)
def test_the_image_as_a_daemonset_trusts_a_real_containerd_failure_and_removes_it_again(
    agent_image: AgentImage,
    containerd_node: Containerd2,
    netns_registry: LabRegistry,
    tmp_path: Path,
) -> None:
    daemon, registry = containerd_node, netns_registry
    host = daemon.node.base
    image, key = registry.image, registry.target
    # kubelet's view of the failure: containerd's own error for the pull, word for word
    failed = cri_pull(daemon, image)
    assert X509_UNKNOWN in failed.error, failed

    api_ca = pki.make_ca("fake-apiserver-ca")
    api_leaf = pki.make_leaf(api_ca, names=("kubernetes.default.svc",), ips=("127.0.0.1",))
    tls = (str(pki.write_pem(tmp_path / "api.crt", api_leaf)),
           str(pki.write_key(tmp_path / "api.key", api_leaf)))
    metrics_port = free_port()
    name = f"ca-trust-agent-{metrics_port}"
    with FakeApiServer(tls=tls) as api:
        ident = in_cluster(tmp_path, int(api.url.rsplit(":", 1)[1]),
                           pki.write_pem(tmp_path / "api-ca.crt", api_ca), NODE)
        api.put_object(node(NODE, runtime=f"containerd://{daemon.version}"))
        api.put_object(policy(f'registries:\n  - host: "{key}"\n', AGENT_NS))
        began = time.monotonic()
        started = docker(
            agent_image.daemon, "run", "--detach", "--name", name, *DAEMONSET,
            "--volume", f"{host}:/host", "--volume", f"{ident.secrets}:{SA_DIR}:ro",
            *(f"--env={e}" for e in ident.env), f"--env=POD_NAME={name}",
            agent_image.built.tag,
            # the DaemonSet's args; a free metrics port, since this host network is shared
            "run", "--host-root", "/host", "--log-json",
            "--metrics-address", f"127.0.0.1:{metrics_port}",
        )
        assert started.returncode == 0, started.stderr
        timing("docker run --detach (vfs copy of the image)", time.monotonic() - began)
        try:
            began = time.monotonic()
            waiting = {"reason": "ErrImagePull", "message": failed.error}
            api.put_object(pod("web-1", NODE, image, waiting))

            trusted = wait_until(lambda: reasons(api, "CATrusted"), timeout=90)
            message = str(trusted[0]["message"])
            assert f"for {key} in registry scope" in message
            # the agent asked the containerd that failed, through its CRI, from the image
            assert f"verified: containerd pulled {image}" in message
            assert wait_until(lambda: trusted_annotation(api) == key, timeout=30)
            entry = ledger(host)[key]
            assert (entry["state"], entry["scope"], entry["registry"]) == (
                "installed", "registry", key)
            crt = f"{key}/ca-trust-agent-{registry.safe_key}.crt"
            assert agent_files(daemon.certs_d) == [crt]
            assert (daemon.certs_d / crt).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
            pid = daemon.spec.pid
            pulled = cri_pull(daemon, image)  # kubelet's next attempt
            assert pulled.ok, pulled.error
            assert daemon.spec.pid == pid  # registry scope: containerd was not restarted

            api.put_object(policy("registries: []\n", AGENT_NS))  # the operator de-lists it
            removed = wait_until(lambda: reasons(api, "CARemoved"), timeout=90)
            assert key in str(removed[0]["message"])
            assert wait_until(lambda: trusted_annotation(api) is None, timeout=30)
            assert key not in ledger(host)
            assert agent_files(daemon.certs_d) == []
            assert X509_UNKNOWN in cri_pull(daemon, image).error
            timing("pod status to CARemoved and a refused pull again", time.monotonic() - began)
        finally:
            # quoted in reports; shown by pytest whenever the test fails
            print(f"[containerd {daemon.version}]")
            print(describe(api.objects("events")))
            began = time.monotonic()
            stopped = docker(agent_image.daemon, "stop", "--time", "90", name)
            code = docker(agent_image.daemon, "inspect", "--format", "{{.State.ExitCode}}", name)
            logs = docker(agent_image.daemon, "logs", name)
            docker(agent_image.daemon, "rm", "--force", name)
            timing("docker stop + rm", time.monotonic() - began)
            print("[agent log tail]\n" + "\n".join(logs.stderr.splitlines()[-40:]))
    assert (stopped.returncode, code.stdout.strip()) == (0, "0"), stopped.stderr  # SIGTERM
    lines = [json.loads(line) for line in logs.stderr.splitlines()]  # JSON, every line
    assert [x for x in lines if x.get("level") == "ERROR"] == []
