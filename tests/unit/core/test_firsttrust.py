"""The safe-first-trust decisions (agent.core.firsttrust): what a node may do with the anchor
it fetched, given what the cluster's record holds."""

from __future__ import annotations

import itertools

import pytest

from agent.core import firsttrust as ft
from agent.core.policy import parse_policy

A = ft.Seen("sha256:" + "A" * 64, "sha256:" + "1" * 64, "CN=Corp Root", "2030-01-01T00:00:00Z")
B = ft.Seen("sha256:" + "B" * 64, "sha256:" + "2" * 64, "CN=Other Root", "2030-01-01T00:00:00Z")
ONE, TWO = ft.Mode(1), ft.Mode(2)
REG = "registry.corp:5000"


def see(
    record: ft.RegistryRecord, seen: ft.Seen, node: str, mode: ft.Mode, held: str | None = None
) -> ft.Verdict:
    return ft.observe(record, seen, node, "2025-01-01T00:00:00Z", mode, held)


def test_the_first_anchor_recorded_wins_and_another_one_is_a_conflict() -> None:
    first = see(ft.RegistryRecord(REG), A, "node-a", ONE)
    assert first.action == ft.INSTALL and first.record.accepted == A.sha256
    other = see(first.record, B, "node-c", ONE)
    assert other.action == ft.CONFLICT and not other.split
    assert other.record.accepted == A.sha256
    assert "node-c" in ft.who_saw(other.record) and B.sha256 in ft.who_saw(other.record)


def test_confirmations_wait_for_n_distinct_nodes() -> None:
    one = see(ft.RegistryRecord(REG), A, "node-a", TWO)
    assert (one.action, one.have, one.need) == (ft.WAIT, 1, 2)
    again = see(one.record, A, "node-a", TWO)  # the same node twice is one confirmation
    assert again.action == ft.WAIT and again.record == one.record
    two = see(again.record, A, "node-b", TWO)
    assert two.action == ft.INSTALL and two.record.accepted == A.sha256
    assert ft.decide(two.record, A.sha256, TWO).action == ft.INSTALL  # the waiting node


def run(order: tuple[tuple[str, ft.Seen], ...], mode: ft.Mode) -> dict[str, ft.Verdict]:
    """Nodes observing in `order`, each on the record the previous ones left; then every
    node's verdict on the final record (what a waiting node finds when the watch fires)."""
    record = ft.RegistryRecord(REG)
    for node, seen in order:
        record = see(record, seen, node, mode).record
    return {node: ft.decide(record, seen.sha256, mode) for node, seen in order}


NODES_2 = (("node-m", B), ("node-a", A), ("node-b", A))  # node-m is on the attacker's path


@pytest.mark.parametrize("order", list(itertools.permutations(NODES_2)))
def test_one_attacked_node_never_stalls_two_honest_ones_in_any_order(
    order: tuple[tuple[str, ft.Seen], ...],
) -> None:
    final = run(order, TWO)
    assert final["node-a"].action == ft.INSTALL
    assert final["node-b"].action == ft.INSTALL
    assert final["node-m"].action == ft.CONFLICT and not final["node-m"].split
    assert final["node-a"].record.accepted == A.sha256


NODES_3 = (("m1", B), ("m2", B), ("a", A), ("b", A), ("c", A))


@pytest.mark.parametrize("order", list(itertools.permutations(NODES_3)))
def test_the_first_anchor_to_reach_n_wins_whatever_came_first(
    order: tuple[tuple[str, ft.Seen], ...],
) -> None:
    """Three confirmations; two attacked nodes can never reach them, three honest can."""
    final = run(order, ft.Mode(3))
    assert {final[n].action for n in ("a", "b", "c")} == {ft.INSTALL}
    assert {final[n].action for n in ("m1", "m2")} == {ft.CONFLICT}


@pytest.mark.parametrize("order", list(itertools.permutations(NODES_2)))
def test_with_one_confirmation_the_first_recorded_wins_in_every_order(
    order: tuple[tuple[str, ft.Seen], ...],
) -> None:
    final = run(order, ONE)
    winner = order[0][1].sha256
    for node, seen in order:
        assert final[node].action == (ft.INSTALL if seen.sha256 == winner else ft.CONFLICT)


def test_until_one_anchor_reaches_n_every_node_waits_and_says_how_far_it_is() -> None:
    record = see(ft.RegistryRecord(REG), B, "m", TWO).record
    honest = see(record, A, "a", TWO)
    assert (honest.action, honest.have) == (ft.WAIT, 1)
    assert ft.decide(honest.record, B.sha256, TWO).action == ft.WAIT


def test_an_accepted_anchor_is_installed_without_writing_by_every_further_node() -> None:
    accepted = see(ft.RegistryRecord(REG), A, "n1", ONE).record
    for i in range(2, 50):
        verdict = see(accepted, A, f"n{i}", ONE)
        assert verdict.action == ft.INSTALL
        assert verdict.record == accepted  # unchanged: the caller writes nothing


def test_the_record_does_not_grow_with_the_fleet() -> None:
    """Whatever the number of nodes: the accepting N, and a bounded number of conflicts."""
    record = ft.RegistryRecord(REG)
    for i in range(500):
        record = see(record, A, f"good-{i}", ft.Mode(3)).record
    for i in range(500):
        record = see(record, B, f"bad-{i}", ft.Mode(3)).record
    good, bad = record.sighting(A.sha256), record.sighting(B.sha256)
    assert good is not None and bad is not None
    assert len(good.node_names) == 3
    assert len(bad.node_names) == ft.SHOWN_NODES
    assert len(ft.render_record(record)) < 2000


def test_two_anchors_each_confirmed_n_times_is_a_split_for_the_operator() -> None:
    """An attacker on N paths got its anchor accepted first: when N honest nodes confirm
    another one, the verdict says so loudly; nothing else is decided by the record."""
    record = ft.RegistryRecord(REG)
    for node, seen in (("m1", B), ("m2", B), ("a", A)):
        record = see(record, seen, node, TWO).record
    assert record.accepted == B.sha256
    split = see(record, A, "b", TWO)
    assert split.action == ft.CONFLICT and split.split
    assert split.record.accepted == B.sha256


def test_a_record_from_before_count_decides_with_two_at_n_is_a_split() -> None:
    """The stalled record of the earlier version (first sighting pending, the honest one at
    N as a conflict): upgraded, the honest anchor is accepted at the next sighting."""
    stalled = ft.RegistryRecord(
        REG,
        (
            ft.Sighting(B, (("m", "t"),)),
            ft.Sighting(A, (("a", "t"), ("b", "t"))),
        ),
    )
    assert see(stalled, A, "c", TWO).record.accepted == A.sha256
    both = ft.RegistryRecord(
        REG,
        (
            ft.Sighting(B, (("m1", "t"), ("m2", "t"))),
            ft.Sighting(A, (("a", "t"), ("b", "t"))),
        ),
    )
    verdict = ft.decide(both, A.sha256, TWO)
    assert verdict.action == ft.CONFLICT and verdict.split


def test_an_old_record_keeps_its_accepted_anchor_and_is_cut_to_the_bound() -> None:
    nodes = tuple((f"node-{i}", "2025-01-01T00:00:00Z") for i in range(3000))
    old = ft.RegistryRecord(REG, (ft.Sighting(A, nodes),), accepted=A.sha256)
    text = ft.render_record(old).replace(',"holders":[]', "")
    parsed = ft.parse_record(REG, text)
    assert parsed.accepted == A.sha256
    assert see(parsed, A, "new-node", ONE).action == ft.INSTALL  # no write needed
    conflict = see(parsed, B, "odd-node", ONE)
    assert conflict.record.accepted == A.sha256
    assert len(ft.render_record(conflict.record)) < 2000


def test_approval_required_accepts_nothing_from_fetches() -> None:
    mode = ft.Mode(1, "required")
    verdict = see(ft.RegistryRecord(REG), A, "node-a", mode)
    assert verdict.action == ft.APPROVAL and verdict.record.accepted is None
    command = ft.approval_command("ca-trust-agent", "ca-trust-agent", REG, A.sha256)
    assert command.startswith("kubectl -n ca-trust-agent patch configmap ca-trust-agent ")
    assert A.sha256 in command


def test_rotation_needs_confirmations_from_nodes_that_trust_the_accepted_anchor() -> None:
    trusted = see(see(ft.RegistryRecord(REG), A, "n1", TWO).record, A, "n2", TWO).record
    old = A.sha256
    assert see(trusted, B, "n1", ONE, held=old).action == ft.CONFLICT  # one node never replaces
    pending = see(trusted, B, "n1", TWO, held=old)
    assert pending.action == ft.WAIT
    newcomer = see(pending.record, B, "n9", TWO)  # never trusted A: cannot rotate it
    assert newcomer.action == ft.CONFLICT
    done = see(newcomer.record, B, "n2", TWO, held=old)
    assert done.action == ft.INSTALL and done.rotation_from == old
    assert (done.record.accepted, done.record.previous) == (B.sha256, old)
    assert ft.decide(done.record, B.sha256, TWO).action == ft.INSTALL  # the newcomer now


def test_the_record_round_trips_and_garbage_is_an_empty_record() -> None:
    record = see(ft.RegistryRecord(REG), A, "node-a", ONE).record
    assert ft.parse_record(REG, ft.render_record(record)) == record
    assert ft.parse_record(REG, "{not json") == ft.RegistryRecord(REG)


def test_an_approval_pins_exactly_the_endpoint_it_names_and_allows_nothing_new() -> None:
    policy = parse_policy('approval: required\nregistries:\n  - host: "*.corp"\n')
    approved = ft.approvals(
        {
            ft.approval_key("a.corp:5000"): f"a.corp:5000 {A.sha256}",
            ft.approval_key("evil.example:443"): f"evil.example:443 {B.sha256}",
            "approve.junk": "not a pin",
        }
    )
    pinned = ft.with_approvals(policy, approved)
    from agent.core.hostport import HostPort

    assert pinned.decide(HostPort("a.corp", 5000)).pins == (A.sha256,)
    assert pinned.decide(HostPort("b.corp", 5000)).pins == ()
    assert not pinned.decide(HostPort("evil.example", 443)).allowed


def test_policy_reads_confirmations_and_approval_globally_and_per_registry() -> None:
    policy = parse_policy(
        "confirmations: 3\nregistries:\n  - host: a.corp\n"
        "  - host: b.corp\n    confirmations: 1\n    approval: required\n"
    )
    from agent.core.hostport import HostPort

    assert ft.mode(policy, HostPort("a.corp", 443)) == ft.Mode(3, "none")
    assert ft.mode(policy, HostPort("b.corp", 443)) == ft.Mode(1, "required")
