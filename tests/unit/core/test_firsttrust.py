"""The safe-first-trust decisions (agent.core.firsttrust): what a node may do with the anchor
it fetched, given what the cluster's record holds."""

from __future__ import annotations

from agent.core import firsttrust as ft
from agent.core.policy import parse_policy

A = ft.Seen("sha256:" + "A" * 64, "sha256:" + "1" * 64, "CN=Corp Root", "2030-01-01T00:00:00Z")
B = ft.Seen("sha256:" + "B" * 64, "sha256:" + "2" * 64, "CN=Other Root", "2030-01-01T00:00:00Z")
ONE, TWO = ft.Mode(1), ft.Mode(2)
REG = "registry.corp:5000"


def see(record: ft.RegistryRecord, seen: ft.Seen, node: str, mode: ft.Mode) -> ft.Verdict:
    return ft.observe(record, seen, node, "2025-01-01T00:00:00Z", mode)


def test_the_first_anchor_recorded_wins_and_another_one_is_a_conflict() -> None:
    first = see(ft.RegistryRecord(REG), A, "node-a", ONE)
    assert first.action == ft.INSTALL and first.record.accepted == A.sha256
    other = see(first.record, B, "node-c", ONE)
    assert other.action == ft.CONFLICT
    assert other.record.accepted == A.sha256
    assert "node-c" in ft.who_saw(other.record) and B.sha256 in ft.who_saw(other.record)


def test_confirmations_wait_for_n_distinct_nodes() -> None:
    one = see(ft.RegistryRecord(REG), A, "node-a", TWO)
    assert (one.action, one.have, one.need) == (ft.WAIT, 1, 2)
    again = see(one.record, A, "node-a", TWO)  # the same node twice is one confirmation
    assert again.action == ft.WAIT
    two = see(again.record, A, "node-b", TWO)
    assert two.action == ft.INSTALL and two.record.accepted == A.sha256
    assert ft.decide(two.record, A.sha256, TWO).action == ft.INSTALL  # the waiting node


def test_approval_required_accepts_nothing_from_fetches() -> None:
    mode = ft.Mode(1, "required")
    verdict = see(ft.RegistryRecord(REG), A, "node-a", mode)
    assert verdict.action == ft.APPROVAL and verdict.record.accepted is None
    command = ft.approval_command("ca-trust-agent", "ca-trust-agent", REG, A.sha256)
    assert command.startswith("kubectl -n ca-trust-agent patch configmap ca-trust-agent ")
    assert A.sha256 in command


def test_rotation_needs_confirmations_and_keeps_the_previous_anchor_named() -> None:
    trusted = see(see(ft.RegistryRecord(REG), A, "n1", TWO).record, A, "n2", TWO).record
    assert see(trusted, B, "n1", ONE).action == ft.CONFLICT  # one node never replaces
    pending = see(trusted, B, "n1", TWO)
    assert pending.action == ft.WAIT
    done = see(pending.record, B, "n2", TWO)
    assert done.action == ft.INSTALL and done.rotation_from == A.sha256
    assert (done.record.accepted, done.record.previous) == (B.sha256, A.sha256)


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
