"""What it costs to let the runtime judge an install, on real containerd 1.6.20 and 2.1.9.

Not a test: prints numbers, asserts nothing. A registry on a network-namespace address holds
the lab image; each containerd runs in a node namespace of its own (lab/isolation/nodens.py)
with the registry's CA already in its certs.d, so every pull succeeds. Rows:
- the TLS-only check (a handshake trusting only the CA file), for contrast;
- the runtime's verdict: the agent's CRI PullImage of the lab image (first one includes
  loading grpc and protobuf), then again after removing the image;
- what it saves: the image is in the node's store when kubelet retries (kubelet's back-off
  waits 10 s, 20 s, 40 s ... before its next pull attempt).

    scripts/bench --only verify        (root, in a private mount namespace)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.core.hostport import HostPort  # noqa: E402
from lab.isolation.netns import free_slash30, netns_host  # noqa: E402
from lab.isolation.nodens import NodeNamespace  # noqa: E402
from lab.isolation.sandbox import isolate_node_paths  # noqa: E402
from lab.registry.distribution import run_registry  # noqa: E402
from lab.registry.push import push_tiny_image  # noqa: E402
from lab.runtimes.containerd2 import VERSION, Containerd2, available  # noqa: E402
from lab.tls.pki import PKI, make_pki  # noqa: E402

PORT = 5443


@contextmanager
def _registry(tmp: Path) -> Iterator[tuple[str, PKI, str]]:
    host_ip, ns_ip = free_slash30("198.18.120.0")
    with ExitStack() as stack:
        ns = stack.enter_context(netns_host(host_ip, ns_ip))
        pki = make_pki(tmp / "pki", names=("registry.bench",), ips=(ns_ip,))
        stack.enter_context(
            run_registry(
                tmp / "registry",
                chain=pki.paths.chain,
                key=pki.paths.key,
                address=ns_ip,
                port=PORT,
                netns=ns.name,
            )
        )
        pushed = push_tiny_image(ns_ip, PORT, pki.paths.root, connect_to=ns_ip)
        yield ns_ip, pki, pushed.reference


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms (max {max(values) * 1000:.1f})"


def rows(runs: int) -> list[tuple[str, str]]:
    from agent.node.chain import verify_handshake
    from agent.node.judge import pull_through_api

    out: list[tuple[str, str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-verify-") as t,
        isolate_node_paths(Path(t) / "sandbox"),  # the nodes' /run/containerd mountpoints
        _registry(Path(t)) as reg,
    ):
        ns_ip, pki, image = reg
        tls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            verify_handshake(HostPort(ns_ip, PORT), str(pki.paths.root), timeout=10)
            tls.append(time.perf_counter() - t0)
        out.append(("TLS-only check (handshake trusting the CA file)", _ms(tls)))
        versions = ["1.6.20"] + ([VERSION] if available() else [])
        for version in versions:
            daemon = Containerd2(
                NodeNamespace(Path(t) / version / "node"), Path(t) / version, version
            )
            table = (
                "[plugins.'io.containerd.cri.v1.images'.registry]"
                if version.startswith("2.")
                else '[plugins."io.containerd.grpc.v1.cri".registry]'
            )
            daemon.node.prepare()
            certs = daemon.certs_d / f"{ns_ip}:{PORT}"
            certs.mkdir(parents=True)
            (certs / "ca.crt").write_bytes(pki.paths.root.read_bytes())
            daemon.write_config(
                daemon.base_config() + f'{table}\n  config_path = "/etc/containerd/certs.d"\n'
            )
            daemon.start()
            try:
                out += _pulls(daemon, image, runs, pull_through_api)
            finally:
                daemon.stop()
    out.append(("kubelet back-off it can save (next pull attempt after)", "10 s, 20 s, 40 s, ..."))
    return out


def _pulls(daemon: Containerd2, image: str, runs: int, pull: object) -> list[tuple[str, str]]:
    assert callable(pull)
    socket = str(daemon.socket)
    first: list[float] = []
    again: list[float] = []
    for i in range(runs):
        t0 = time.perf_counter()
        verdict = pull("containerd", socket, image, 30.0)
        (first if i == 0 else again).append(time.perf_counter() - t0)
        if verdict.kind != "pulled":
            return [
                (f"containerd {daemon.version} runtime verdict", f"error: {verdict.describe()}")
            ]
        with daemon.cri() as cri:
            cri.remove(image)
    label = f"containerd {daemon.version} CRI pull of the lab image"
    rows = [(f"{label}, first (loads grpc)", _ms(first))]
    if again:
        rows.append((f"{label}, image removed in between", _ms(again)))
    return rows


if __name__ == "__main__":
    for metric, value in rows(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        print(f"{metric:60} {value}")
