"""The trust record over the wire: several nodes' first-trust components (agent.cluster
.trustrecord, agent.cluster.firsttrust, each node with its own client and its own watch of the
record) against the fake API server, which refuses a write based on a stale resourceVersion
(409) and sends the whole object to every watcher on every change, as kube-apiserver does.

What must hold:
- `confirmations: N` is decided by count, in every arrival order: the first anchor N nodes
  fetched is trusted on every node that fetched it; the attacked nodes install nothing;
- a node whose anchor the record already accepts installs without writing, so a storm of
  nodes failing on one registry at once costs the N writes that decide, not one per node;
  a node that lost a race (409) and finds the decision made does not write again;
- a record left by an earlier version, even one grown to the size limit, keeps its accepted
  anchor, and new nodes trust it without writing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.core import firsttrust as ft
from agent.core.trust import CertInfo, cert_from_der
from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import wait_until
from lab.fakes.fleet import NS, UA_PREFIX, FleetNode, make_node, node_object, policy, running
from lab.tls import pki

pytestmark = pytest.mark.integration

REGISTRY = "registry.corp.example:5000"
IMAGE = f"{REGISTRY}/team/app:v1"


def anchor(cn: str) -> CertInfo:
    return cert_from_der(pki.make_ca(cn).cert.public_bytes(Encoding.DER))


HONEST, ROGUE = anchor("Corp Root CA"), anchor("Mallory Root CA")


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=60.0) as server:
        yield server


def fleet(api: FakeApiServer, shown: dict[str, CertInfo], confirmations: int) -> list[FleetNode]:
    nodes = []
    for name, cert in shown.items():
        api.put_object(dict(node_object(name)))
        nodes.append(make_node(api.url, name, cert, policy(REGISTRY, confirmations)))
    return nodes


def record(api: FakeApiServer) -> ft.RegistryRecord:
    obj = api.get_object("configmaps", NS, ft.RECORD_NAME) or {}
    return ft.parse_record(REGISTRY, (obj.get("data") or {}).get(ft.record_key(REGISTRY)))


def record_writes(api: FakeApiServer) -> dict[str, int]:
    """Write attempts on the record's ConfigMap, by node (409s included)."""
    out: dict[str, int] = {}
    for r in api.requests():
        if r.method in ("POST", "PUT") and "/configmaps" in r.path:
            node = r.client.removeprefix(UA_PREFIX)
            out[node] = out.get(node, 0) + 1
    return out


def settle(nodes: list[FleetNode], trusted: set[str]) -> None:
    """Until the nodes expected to trust have, and every queue is empty."""
    for node in nodes:
        if node.name in trusted:
            assert node.trusted.wait(20), f"{node.name}: {node.outcomes}"
    wait_until(lambda: all(n.work.empty() for n in nodes))


ORDERS = list(itertools.permutations(("m1", "m2", "a", "b", "c")))


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(n[-1] for n in o))
def test_three_confirmations_trust_the_honest_anchor_whoever_fails_first(
    api: FakeApiServer, order: tuple[str, ...]
) -> None:
    """Two nodes on the attacker's path, three honest ones, `confirmations: 3`, in each of
    the 120 arrival orders: one node after the other, each deciding on the record as its
    own watch delivered it."""
    shown = {n: ROGUE if n.startswith("m") else HONEST for n in order}
    nodes = {n.name: n for n in fleet(api, shown, confirmations=3)}
    with running(list(nodes.values())):
        wait_until(lambda: all(n.watcher.synced.is_set() for n in nodes.values()))
        for name in order:
            nodes[name].fail(IMAGE, REGISTRY)
            wait_until(lambda name=name: nodes[name].outcomes[1:] and nodes[name].work.empty())
            # the next node fails once this node's write reached every watch
            wait_until(lambda: all(n.record.get(REGISTRY) == record(api)
                                   for n in nodes.values()))
        settle(list(nodes.values()), {"a", "b", "c"})

    assert record(api).accepted == HONEST.sha256
    for name in ("a", "b", "c"):
        assert nodes[name].engine.held == {REGISTRY: HONEST.sha256}
        assert nodes[name].outcomes[-1] == "CATrusted"
    for name in ("m1", "m2"):
        assert nodes[name].engine.held == {}
        assert "CATrusted" not in nodes[name].outcomes
    accepted_at = max(order.index(n) for n in ("a", "b", "c"))
    for name in ("m1", "m2"):  # pending while nothing is accepted, a conflict after
        late = order.index(name) > accepted_at
        assert nodes[name].outcomes[-1] == ("CATrustConflict" if late else "CATrustPending")


@pytest.mark.parametrize("confirmations", [1, 3])
def test_a_storm_on_one_registry_costs_the_writes_that_decide_not_one_per_node(
    api: FakeApiServer, confirmations: int
) -> None:
    nodes = fleet(api, {f"node-{i:02}": HONEST for i in range(30)}, confirmations)
    with running(nodes):
        wait_until(lambda: all(n.watcher.synced.is_set() for n in nodes))
        api.clear_requests()
        for node in nodes:  # kubelet reports the failure on every node at once
            node.fail(IMAGE, REGISTRY)
        settle(nodes, {n.name for n in nodes})

    assert record(api).accepted == HONEST.sha256
    assert sum(n.record.writes for n in nodes) == confirmations
    assert all(n.engine.held == {REGISTRY: HONEST.sha256} for n in nodes)
    attempts = record_writes(api)
    # a node that lost a race backs off and finds the decision made: no retry storm
    lost = sum(n.record.conflicts for n in nodes)
    assert sum(attempts.values()) == confirmations + lost
    assert max(n.record.conflicts for n in nodes) <= confirmations
    assert len(ft.render_record(record(api))) < 1500  # the N deciding nodes, not 30
    print(
        f"\n30 nodes, confirmations {confirmations}: {sum(attempts.values())} record writes "
        f"attempted, {lost} lost (409), record {len(ft.render_record(record(api)))} B"
    )


def test_an_old_record_at_the_size_limit_keeps_its_anchor_and_new_nodes_trust_it(
    api: FakeApiServer,
) -> None:
    """A record from before the bound: every node of a 19,200-node fleet named under the
    accepted anchor, 1.04 MB, so that any write adding to it passes the 1 MiB limit and is
    refused (422), as kube-apiserver does. New nodes shown the accepted anchor trust it with
    no write; the first write (a node shown another anchor) cuts the record to the bound."""
    names = tuple((f"old-node-{i:05}", "2026-01-01T00:00:00Z") for i in range(19200))
    seen = ft.Seen(HONEST.sha256, "sha256:" + "0" * 64, HONEST.subject, "2036-01-01T00:00:00Z")
    old = ft.RegistryRecord(REGISTRY, (ft.Sighting(seen, names),), accepted=HONEST.sha256)
    text = ft.render_record(old)
    assert 1_000_000 < len(text) < 1024 * 1024
    api.put_object({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ft.RECORD_NAME, "namespace": NS},
        "data": {ft.record_key(REGISTRY): text},
    })
    shown = {f"new-{i}": HONEST for i in range(10)}
    nodes = fleet(api, {**shown, "odd-one": ROGUE}, confirmations=1)
    with running(nodes):
        wait_until(lambda: all(n.watcher.synced.is_set() for n in nodes))
        for node in nodes[:10]:
            node.fail(IMAGE, REGISTRY)
        settle(nodes, set(shown))
        assert record_writes(api) == {}
        nodes[10].fail(IMAGE, REGISTRY)
        wait_until(lambda: "CATrustConflict" in nodes[10].outcomes)
    after = record(api)
    assert after.accepted == HONEST.sha256
    assert after.sighting(ROGUE.sha256) is not None
    assert len(ft.render_record(after)) < 2000


def test_the_stage_decides_and_installs_nothing_itself_a_rotation_is_two_requests(
    api: FakeApiServer,
) -> None:
    """FirstTrust returns a Decision; the caller installs. Two nodes that trust the old
    anchor confirm the new one (`confirmations: 2`): the first is told to hold, the second
    to rotate (the new anchor beside the old, then alone), naming the anchor it replaces."""
    from agent.cluster.controller.interfaces import PodRef
    from agent.core.detect import parse_pull_error
    from agent.core.hostport import parse_hostport
    from agent.core.remediation import InstallRequest

    endpoint = parse_hostport(REGISTRY)
    accepted = ft.RegistryRecord(REGISTRY, accepted=HONEST.sha256)
    api.put_object({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ft.RECORD_NAME, "namespace": NS},
        "data": {ft.record_key(REGISTRY): ft.render_record(accepted)},
    })
    nodes = fleet(api, {"a": ROGUE, "b": ROGUE}, confirmations=2)  # the registry's new CA
    failure = parse_pull_error(
        f'failed to do request: Head "https://{REGISTRY}/v2/team/app/manifests/v1": '
        "tls: failed to verify certificate: x509: certificate signed by unknown authority",
        IMAGE,
    )
    assert failure is not None
    req = InstallRequest(endpoint=endpoint, registry=endpoint, scope="registry")
    kinds = []
    with running(nodes):
        wait_until(lambda: all(n.watcher.synced.is_set() for n in nodes))
        for node in nodes:
            node.engine.held = {REGISTRY: HONEST.sha256}  # both trust the old anchor
            pod = PodRef("default", f"web-{node.name}", f"uid-{node.name}")
            decision = node.stage.decide(req, node.policy, pod, failure)
            kinds.append(decision.kind)
            assert node.engine.held == {REGISTRY: HONEST.sha256}  # the stage installs nothing
            wait_until(lambda: all(n.record.get(REGISTRY) == record(api) for n in nodes))
        # the held pod is handed back when the record accepts its anchor, and installs then
        assert nodes[0].trusted.wait(10)
    assert kinds == [ft.HOLD, ft.ROTATE]
    assert len(decision.requests) == 2 and decision.rotated_from == HONEST.sha256
    assert all(r.pins == (ROGUE.sha256,) for r in decision.requests)
    assert record(api).accepted == ROGUE.sha256
    assert record(api).previous == HONEST.sha256
