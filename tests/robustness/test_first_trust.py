"""Safe first trust: no single node's fetch decides what the cluster trusts.

Threat: an attacker on one node's path to a registry (a poisoned resolver, an intercepting
proxy, a hijacked route) shows that node a chain of its own making. Several agents for
different nodes run against one fake API server (the real wire protocol, watches included)
and real TLS servers. The node on the attacker's path fetches from a second server that
presents another CA's chain for the same name and address (its engine's fetch goes there:
"a second server behind the same name"), while the honest nodes reach the real registry.

What must hold:
- the record's first anchor wins; the node shown another one installs nothing, says so
  (`CATrustConflict`, both fingerprints, who saw which), counts it, and `kubectl ca-trust
  status` exits non-zero; the other nodes proceed;
- `confirmations: 2`: nothing is installed before the second node's fetch agrees, and the
  waiting node installs as soon as it does (the record's watch, no polling); the first
  anchor two nodes confirm wins, whichever node failed first, so a node on the attacker's
  path never holds back the honest ones;
- `approval: required`: nothing is installed until the kubectl command in the Event is run
  verbatim; then the node installs and a TLS client using what it installed reaches the
  registry (the handshake a pull makes);
- rotation: the registry moves to a new CA, the nodes agree on it, each node's trust file
  holds old and new together until the new one is verified, then the new one alone
  (`CARotated`).

Times (N-th confirmation / approval -> `CATrusted`) and API writes per remediation are
printed, never asserted.
"""

from __future__ import annotations

import itertools
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.daemon import Agent
from agent.core import firsttrust as ft
from agent.core.hostport import HostPort
from agent.core.remediation import InstallRequest, Result
from agent.node.chain import fetch_chain
from agent.node.engine import Engine
from agent.node.host import HostFS
from agent.node.ledger import Ledger
from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import FakeRestarts, RecordingRunner, failing_pod, wait_until
from lab.fakes.doubles import node as node_object
from lab.fakes.hostroot import node_root
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

NS = "ca-trust-agent"
ANCHOR_DIR = "usr/local/share/ca-certificates"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Lab:
    api: FakeApiServer
    tmp: Path
    honest: TLSServer
    honest_pki: pki.PKI
    rogue: TLSServer
    rogue_pki: pki.PKI
    agents: dict[str, Agent] = field(default_factory=dict)
    # which server each node's connection to the registry reaches (its network path)
    path_of: dict[str, TLSServer] = field(default_factory=dict)

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.honest.port}"

    def set_policy(self, extra: str = "") -> None:
        text = f'scope: system\n{extra}registries:\n  - host: "127.0.0.1"\n'
        self.api.put_object(
            {
                "kind": "ConfigMap",
                "metadata": {"name": "ca-trust-agent", "namespace": NS},
                "data": {"policy.yaml": text},
            }
        )

    def start(self, node: str, path: TLSServer) -> Agent:
        self.path_of[node] = path
        self.api.put_object(node_object(node))
        root = node_root(self.tmp / node)
        config = Configuration()
        config.host = self.api.url
        client = KubeClient(
            config,
            retry=RetryPolicy(attempts=3, initial=0.01, max_wait=0.05),
            user_agent=f"agent-{node}",
        )

        def fetch(endpoint: HostPort) -> object:
            # the node's network path: same name and port, whichever server answers there
            return fetch_chain(HostPort("127.0.0.1", self.path_of[node].port), retries=0)

        engine = Engine(
            HostFS(str(root)),
            RecordingRunner(root),
            manager=FakeRestarts(),  # type: ignore[arg-type]
            fetch=fetch,
            verify=lambda target, cafile: None,
        )
        agent = Agent(client, node, NS, engine, reconcile_seconds=3600)
        agent.start()
        wait_until(lambda: agent.ready().ready)
        self.agents[node] = agent
        return agent

    def fail_pull(self, node: str, pod: str) -> None:
        self.api.put_object(failing_pod(pod, node, self.registry))

    def events(self, node: str, reason: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.objects("events")
            if e.get("reason") == reason
            and (e.get("involvedObject") or {}).get("kind") == "Node"
            and (e.get("involvedObject") or {}).get("name") == node
        ]

    def wait_event(
        self, node: str, reason: str, timeout: float = 15.0, skip: int = 0
    ) -> dict[str, Any]:
        """The first such Event on the node's object after the `skip` already seen."""
        found = wait_until(lambda: self.events(node, reason)[skip:], timeout=timeout)
        return dict(found[0])

    def anchors_on_disk(self, node: str) -> list[str]:
        """Fingerprints of the certificates in our files of the node's anchor directory."""
        from agent.core.trust import parse_pem_bundle

        out = []
        for f in sorted((self.tmp / node / ANCHOR_DIR).glob("ca-trust-agent-*.crt")):
            out += [c.sha256 for c in parse_pem_bundle(f.read_bytes())]
        return out

    def ledger_sha(self, node: str) -> list[str]:
        return [e.sha256 for e in Ledger(HostFS(str(self.tmp / node))).entries().values()]

    def record(self) -> ft.RegistryRecord:
        obj = self.api.get_object("configmaps", NS, ft.RECORD_NAME) or {}
        data = obj.get("data") or {}
        return ft.parse_record(self.registry, data.get(ft.record_key(self.registry)))

    def writes(self, node: str) -> dict[str, int]:
        """API writes by this node's agent, by resource."""
        out: dict[str, int] = {}
        for r in self.api.requests():
            if r.client == f"agent-{node}" and r.method in ("POST", "PUT", "PATCH"):
                kind = r.path.split("/")[-1] if r.method == "POST" else r.path.split("/")[-2]
                out[kind] = out.get(kind, 0) + 1
        return out

    def kubeconfig(self) -> Path:
        path = self.tmp / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f'clusters: [{{name: fake, cluster: {{server: "{self.api.url}"}}}}]\n'
            "users: [{name: op, user: {}}]\n"
            "contexts: [{name: op, context: {cluster: fake, user: op}}]\n"
            "current-context: op\n"
        )
        return path

    def operator(self, argv: list[str] | str) -> subprocess.CompletedProcess[str]:
        """A command as an operator runs it: a clean environment, the fake cluster."""
        env = {
            "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            "HOME": str(self.tmp),
            "KUBECONFIG": str(self.kubeconfig()),
        }
        shell = ["bash", "-c", argv] if isinstance(argv, str) else argv
        return subprocess.run(
            shell, env=env, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    honest = pki.make_pki(tmp_path / "honest", names=("registry.test",), ips=("127.0.0.1",))
    rogue = pki.make_pki(tmp_path / "rogue", names=("registry.test",), ips=("127.0.0.1",))
    with (
        FakeApiServer() as api,
        TLSServer(honest.fullchain, honest.leaf) as good,
        TLSServer(rogue.fullchain, rogue.leaf) as bad,
    ):
        lab = Lab(api, tmp_path, good, honest, bad, rogue)
        try:
            yield lab
        finally:
            for agent in lab.agents.values():
                agent.stop()
            for agent in lab.agents.values():
                agent.join()


def sha(issued: pki.Issued) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    from agent.core.trust import cert_from_der

    return cert_from_der(issued.cert.public_bytes(Encoding.DER)).sha256


def handshake_with_installed_trust(lab: Lab, node: str) -> None:
    """What a pull's TLS client does: verify the registry with the node's installed anchor."""
    files = sorted((lab.tmp / node / ANCHOR_DIR).glob("ca-trust-agent-*.crt"))
    ctx = ssl.create_default_context(cafile=str(files[0]))
    import socket

    with (
        socket.create_connection(("127.0.0.1", lab.honest.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() is not None


# --------------------------------------------------------------------------- conflict


def test_a_node_shown_another_chain_installs_nothing_and_the_others_proceed(lab: Lab) -> None:
    lab.set_policy()
    good, bad = sha(lab.honest_pki.root), sha(lab.rogue_pki.root)
    lab.start("node-a", lab.honest)
    lab.start("node-b", lab.honest)
    victim = lab.start("node-c", lab.rogue)  # the attacker sits on node-c's path

    lab.fail_pull("node-a", "web-a")
    lab.wait_event("node-a", "CATrusted")
    lab.fail_pull("node-b", "web-b")
    lab.fail_pull("node-c", "web-c")
    lab.wait_event("node-b", "CATrusted")
    conflict = lab.wait_event("node-c", "CATrustConflict")

    assert lab.anchors_on_disk("node-a") == [good]
    assert lab.anchors_on_disk("node-b") == [good]
    assert lab.anchors_on_disk("node-c") == []
    assert lab.ledger_sha("node-c") == []
    assert conflict["type"] == "Warning"
    message = conflict["message"]
    assert good in message and bad in message
    assert "node-a" in message and "node-c" in message
    assert "Nothing was installed on this node" in message
    pod_events = [
        e for e in lab.api.objects("events")
        if e["reason"] == "CATrustConflict" and e["involvedObject"].get("name") == "web-c"
    ]
    assert pod_events, "the pod that failed carries the conflict too"
    assert victim.metrics.trust_conflicts.labels(registry=lab.registry)._value.get() >= 1

    record = lab.record()
    assert record.accepted == good
    # node-b installed the accepted anchor without writing: the record names who decided
    assert record.sighting(good).node_names == ("node-a",)  # type: ignore[union-attr]
    assert record.sighting(bad).node_names == ("node-c",)  # type: ignore[union-attr]
    assert "configmaps" not in lab.writes("node-b")

    status = lab.operator(["kubectl", "ca-trust", "status", "--json"])
    assert status.returncode == 1, status.stderr  # scripts can gate on a conflict
    assert '"conflicting"' in status.stdout and '"trusted"' in status.stdout
    print(f"\nAPI writes by node-b for its remediation: {lab.writes('node-b')}")


# ------------------------------------------------------------------- confirmations


def test_confirmations_install_only_after_the_nth_node_and_at_once_after_it(lab: Lab) -> None:
    # enough restart slots that no node waits for another's restart: the time measured is
    # the record's watch, not the cluster-wide restart limit
    lab.set_policy("confirmations: 2\nmaxConcurrentRestarts: 3\n")
    good = sha(lab.honest_pki.root)
    lab.start("node-a", lab.honest)
    lab.start("node-b", lab.honest)

    lab.fail_pull("node-a", "web-a")
    pending = lab.wait_event("node-a", "CATrustPending")
    assert "1 of 2 nodes" in pending["message"]
    assert lab.anchors_on_disk("node-a") == []  # one node's word is not enough
    assert lab.record().accepted is None

    lab.fail_pull("node-b", "web-b")
    wait_until(lambda: lab.record().accepted == good)
    confirmed = time.monotonic()
    lab.wait_event("node-a", "CATrusted")
    waited = time.monotonic() - confirmed
    lab.wait_event("node-b", "CATrusted")

    assert lab.anchors_on_disk("node-a") == [good]
    assert lab.anchors_on_disk("node-b") == [good]
    print(f"\nsecond confirmation -> CATrusted on the waiting node: {waited * 1000:.0f} ms")
    print(f"API writes: node-a {lab.writes('node-a')}, node-b {lab.writes('node-b')}")


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(("node-m", "node-a", "node-b"))),
    ids=lambda order: ",".join(n[-1] for n in order),
)
def test_confirmations_decide_and_an_attacked_node_stalls_nobody_in_any_order(
    lab: Lab, order: tuple[str, ...]
) -> None:
    """`confirmations: 2`, node-m on the attacker's path: whichever fails first, the two
    honest nodes install the honest anchor and node-m installs nothing."""
    lab.set_policy("confirmations: 2\nmaxConcurrentRestarts: 3\n")
    good, bad = sha(lab.honest_pki.root), sha(lab.rogue_pki.root)
    for node in order:
        lab.start(node, lab.rogue if node == "node-m" else lab.honest)
    for i, node in enumerate(order):
        lab.fail_pull(node, f"web-{node}")
        honest_before = [n for n in order[:i] if n != "node-m"]
        if node == "node-m":
            expected = "CATrustConflict" if len(honest_before) >= 2 else "CATrustPending"
        else:
            expected = "CATrusted" if len(honest_before) == 1 else "CATrustPending"
        lab.wait_event(node, expected)
    lab.wait_event("node-a", "CATrusted")
    lab.wait_event("node-b", "CATrusted")

    assert lab.anchors_on_disk("node-a") == [good]
    assert lab.anchors_on_disk("node-b") == [good]
    assert lab.anchors_on_disk("node-m") == []
    assert not lab.events("node-m", "CATrusted")
    record = lab.record()
    assert record.accepted == good
    assert record.sighting(bad).node_names == ("node-m",)  # type: ignore[union-attr]


# ------------------------------------------------------------------------ approval


def test_approval_the_command_in_the_event_approves_and_the_pull_then_works(lab: Lab) -> None:
    lab.set_policy("approval: required\nmaxConcurrentRestarts: 3\n")
    good = sha(lab.honest_pki.root)
    lab.start("node-a", lab.honest)
    lab.start("node-b", lab.honest)

    lab.fail_pull("node-a", "web-a")
    lab.fail_pull("node-b", "web-b")
    asked = lab.wait_event("node-a", "CATrustPendingApproval")
    lab.wait_event("node-b", "CATrustPendingApproval")
    assert lab.anchors_on_disk("node-a") == [] and lab.anchors_on_disk("node-b") == []
    command = asked["message"].split("To approve: ", 1)[1]
    assert command.startswith("kubectl ") and good in command

    done = lab.operator(command)  # verbatim, as an operator pastes it
    assert done.returncode == 0, done.stderr
    approved = time.monotonic()
    lab.wait_event("node-a", "CATrusted")
    lab.wait_event("node-b", "CATrusted")
    waited = time.monotonic() - approved

    assert lab.anchors_on_disk("node-a") == [good]
    assert lab.anchors_on_disk("node-b") == [good]
    handshake_with_installed_trust(lab, "node-a")
    print(f"\napproval -> CATrusted on both nodes: {waited * 1000:.0f} ms")


def test_approval_is_only_ever_a_pin_an_agent_cannot_write_the_policy(lab: Lab) -> None:
    """The approval lives in the policy ConfigMap, which the agent's RBAC cannot update."""
    import yaml

    manifest = Path(__file__).parents[2] / "manifests/rbac.yaml"
    rbac = list(yaml.safe_load_all(manifest.read_text()))
    role = next(d for d in rbac if d and d["kind"] == "Role")
    for rule in role["rules"]:
        if "configmaps" in rule["resources"] and {"update", "patch"} & set(rule["verbs"]):
            assert rule.get("resourceNames") == [ft.RECORD_NAME]
            assert "patch" not in rule["verbs"]


# ------------------------------------------------------------------------ rotation


def test_rotation_trusts_old_and_new_together_until_the_new_is_verified(lab: Lab) -> None:
    lab.set_policy("confirmations: 2\n")
    old, new = sha(lab.honest_pki.root), sha(lab.rogue_pki.root)
    a = lab.start("node-a", lab.honest)
    b = lab.start("node-b", lab.honest)
    seen_on_disk: dict[str, list[list[str]]] = {"node-a": [], "node-b": []}
    for name, agent in (("node-a", a), ("node-b", b)):
        watch_installs(agent.engine, lambda name=name: seen_on_disk[name].append(
            lab.anchors_on_disk(name)))
    lab.fail_pull("node-a", "web-a")
    lab.fail_pull("node-b", "web-b")
    lab.wait_event("node-a", "CATrusted")
    lab.wait_event("node-b", "CATrusted")
    assert lab.record().accepted == old

    # months later, the registry moves to a new CA: both nodes' paths reach the new chain
    # (the flight control's memory of the first success is long gone by then)
    for agent in (a, b):
        agent.controller.flights.forget_all()
    lab.path_of["node-a"] = lab.path_of["node-b"] = lab.rogue
    for snapshots in seen_on_disk.values():
        snapshots.clear()
    earlier = len(lab.events("node-a", "CATrustPending"))
    lab.fail_pull("node-a", "web-a2")
    lab.wait_event("node-a", "CATrustPending", skip=earlier)
    assert lab.anchors_on_disk("node-a") == [old]  # one node's word replaces nothing
    lab.fail_pull("node-b", "web-b2")
    rotated = lab.wait_event("node-b", "CARotated")
    lab.wait_event("node-a", "CARotated")

    for name in ("node-a", "node-b"):
        assert sorted([old, new]) in seen_on_disk[name], "both trusted while verifying"
        assert seen_on_disk[name][-1] == [new]
        assert lab.anchors_on_disk(name) == [new]
        assert lab.ledger_sha(name) == [new]
    assert old in rotated["message"] and new in rotated["message"]
    record = lab.record()
    assert (record.accepted, record.previous) == (new, old)


def watch_installs(engine: Engine, after: Callable[[], None]) -> None:
    """Observe the disk after every real install the engine makes (not dry runs)."""
    install = engine.install

    def observed(req: InstallRequest) -> Result:
        result = install(req)
        if not req.dry_run:
            after()
        return result

    engine.install = observed  # type: ignore[method-assign]


def test_status_without_conflict_exits_zero(lab: Lab) -> None:
    lab.set_policy()
    lab.start("node-a", lab.honest)
    lab.fail_pull("node-a", "web-a")
    lab.wait_event("node-a", "CATrusted")
    wait_until(
        lambda: lab.registry
        in ((lab.api.get_object("nodes", None, "node-a") or {}).get("metadata") or {})
        .get("annotations", {})
        .get("ca-trust-agent.io/trusted-registries", "")
    )
    done = lab.operator(["kubectl", "ca-trust", "status"])
    assert done.returncode == 0, done.stderr
    assert lab.registry in done.stdout and "trusted on: node-a" in done.stdout
    assert os.linesep in done.stdout
