"""Safe first trust, as decisions: what one node may do with an anchor it fetched for a
registry, given the cluster-wide record (agent.core.firsttrust_record) of what nodes saw.

Why: for an allowed registry without a pin, the anchor is whatever the registry's TLS
handshake showed this node. An attacker on one node's path (a poisoned resolver, an
intercepting proxy, a hijacked route) would plant a CA there. So a fetched anchor is
installed only when the record agrees:

- `confirmations: N`: while nothing is accepted, every anchor shown to nodes collects
  sightings, and the first to be seen by N distinct nodes is accepted (`WAIT` until then,
  `INSTALL` from then on, on every node shown it). Order does not matter: an attacked node
  that fetched first cannot hold back the honest ones. With N = 1 this is "the first anchor
  recorded wins";
- once an anchor is accepted, a node shown another one installs nothing and reports a
  conflict (`CONFLICT`). When that other anchor is also seen by N nodes, two anchors are each
  confirmed N times: an attacker controls at least N nodes' paths, or the registry changed
  its CA; the verdict says so (`split`) and an operator decides (a pin);
- `approval: required`: nothing is accepted from fetches at all (`APPROVAL`); an operator
  approves by adding the fingerprint as a pin (`approval_command`), and pinned registries
  never consult the record;
- rotation: nodes that trust the accepted anchor and are shown a new one confirm it as a
  replacement. With N = 1 one node's word cannot replace a trusted anchor, so it is a
  conflict (the Event names the pin to add); with N >= 2 it is accepted after N such nodes
  saw it, and the acceptance names the previous one, so nodes trust both until the new one
  is verified. Nodes that never trusted the accepted anchor cannot rotate it.

A node whose anchor is already accepted installs without writing: the record keeps only what
decides (agent.core.firsttrust_record), so a storm of nodes failing on one registry costs
O(N) writes, not one per node. Everything here is pure; the cluster side
(agent.cluster.trustrecord) does the resourceVersion-conditional update around `observe`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.core.errors import InputError
from agent.core.firsttrust_record import (
    MAX_ANCHORS,
    RECORD_NAME,
    RECORD_PREFIX,
    SHOWN_NODES,
    RegistryRecord,
    Seen,
    Sighting,
    key_part,
    parse_record,
    record_key,
    records,
    render_record,
)
from agent.core.hostport import HostPort, parse_hostport
from agent.core.pins import normalize_pin
from agent.core.policy import Policy
from agent.core.reasons import Reason
from agent.core.remediation import InstallRequest

APPROVAL_PREFIX = "approve."  # in the policy ConfigMap: approve.<host>_<port>
APPROVAL_REQUIRED = "required"
APPROVALS = ("none", APPROVAL_REQUIRED)

INSTALL = "install"
WAIT = "wait"
CONFLICT = "conflict"
APPROVAL = "approval"


@dataclass(frozen=True)
class Mode:
    """The rules that apply to one registry (policy global, overridden per registry)."""

    confirmations: int = 1
    approval: str = "none"

    @property
    def approval_required(self) -> bool:
        return self.approval == APPROVAL_REQUIRED


@dataclass(frozen=True)
class Verdict:
    action: str  # INSTALL | WAIT | CONFLICT | APPROVAL
    record: RegistryRecord  # with this node's sighting (and an acceptance) applied
    have: int  # distinct nodes that saw this node's anchor (the kind that counts for it)
    need: int
    rotation_from: str | None = None  # INSTALL of a rotation: the anchor it replaces
    # CONFLICT: this node's anchor is confirmed by N nodes too, so two anchors are: an
    # attacker on N nodes' paths, or a changed CA; only an operator can tell (a pin)
    split: bool = False


# What the controller's first-trust stage tells the remediation step to do with a failure
PROCEED = "install"  # install `requests[0]`
ROTATE = "rotate"  # install `requests[0]` (new beside old); once verified, `requests[1]`
HOLD = "hold"  # wait for the record or the operator: report, and let them wake the pod
REFUSE = "refuse"  # a conflict: report, and back off
RETRY = "retry"  # the record could not be consulted: report, back off, say when


@dataclass(frozen=True)
class Decision:
    kind: str  # PROCEED | ROTATE | HOLD | REFUSE | RETRY
    requests: tuple[InstallRequest, ...] = ()
    rotated_from: str | None = None  # ROTATE: the anchor the second install drops
    # the Event when nothing is installed (HOLD, REFUSE, RETRY)
    reason: Reason | None = None
    message: str = ""


def seen_from_der(der: bytes, subject: str, not_after: str) -> Seen:
    """The record's facts about an anchor, from its DER (SPKI hash via cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Seen(_fp(der), _fp(spki), subject, not_after)


def _fp(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest().upper()


# --------------------------------------------------------------------------- decisions


def observe(
    record: RegistryRecord,
    seen: Seen,
    node: str,
    now: str,
    mode: Mode,
    held: str | None = None,
) -> Verdict:
    """Record that `node` fetched `seen` (`held`: the anchor it trusts for the registry now,
    if any), and decide what the node may do.

    Called inside the conditional update, so the acceptance (N-th confirmation) is written
    by exactly the node whose sighting completed it, in the same write. The record changes
    only when the sighting counts for something: an accepted anchor's further nodes, and
    nodes beyond the bound, leave it as it was (the caller then writes nothing).
    """
    if record.accepted != seen.sha256:
        holder = record.accepted is not None and held == record.accepted
        limit = max(mode.confirmations, SHOWN_NODES)
        record = _with_sighting(record, seen, (node, now), holder, limit)
    return decide(record, seen.sha256, mode, held)


def decide(
    record: RegistryRecord, sha256: str, mode: Mode, held: str | None = None
) -> Verdict:
    """What a node holding anchor `sha256` may do under `record` (no write needed unless the
    verdict accepts the anchor: `record.accepted` changed)."""
    mine = record.sighting(sha256)
    if record.accepted == sha256:
        have = len(mine.nodes) + len(mine.holders) if mine else 0
        return Verdict(INSTALL, record, have, mode.confirmations)
    if record.accepted is None:
        return _first(record, mine, sha256, mode)
    return _replacement(record, mine, sha256, mode, held)


def _first(
    record: RegistryRecord, mine: Sighting | None, sha256: str, mode: Mode
) -> Verdict:
    """Nothing accepted yet: the first anchor seen by N nodes is."""
    fresh, need = (len(mine.nodes) if mine else 0), mode.confirmations
    confirmed = [s for s in record.candidates() if len(s.nodes) >= need]
    if len(confirmed) > 1 or mine is None:
        # two at N: no write accepts two, so only a record from before confirmations
        # decided by count; no sighting: the record is full of other anchors
        return Verdict(CONFLICT, record, fresh, need, split=len(confirmed) > 1)
    if mode.approval_required:
        return Verdict(APPROVAL, record, fresh, need)
    if fresh < need:
        return Verdict(WAIT, record, fresh, need)
    return Verdict(INSTALL, _accept(record, sha256), fresh, need)


def _replacement(
    record: RegistryRecord, mine: Sighting | None, sha256: str, mode: Mode, held: str | None
) -> Verdict:
    """Another anchor is accepted: only nodes that trust it can confirm a rotation."""
    fresh, need = (len(mine.nodes) if mine else 0), mode.confirmations
    if held != record.accepted or need < 2 or mine is None:
        # a node that never trusted the accepted anchor cannot replace it, and one node's
        # fetch never replaces an anchor the cluster trusts
        return Verdict(CONFLICT, record, fresh, need, split=need >= 2 and fresh >= need)
    if mode.approval_required:
        return Verdict(APPROVAL, record, fresh, need)
    have = len(mine.holders)
    if have < need:
        return Verdict(WAIT, record, have, need)
    return Verdict(
        INSTALL, _accept(record, sha256), have, need, rotation_from=record.accepted
    )


def _accept(record: RegistryRecord, sha256: str) -> RegistryRecord:
    # the anchor replaced two rotations ago is history: it no longer competes
    kept = tuple(s for s in record.sightings if s.anchor.sha256 != record.previous)
    return replace(record, sightings=kept, accepted=sha256, previous=record.accepted)


def _with_sighting(
    record: RegistryRecord,
    seen: Seen,
    entry: tuple[str, str],
    holder: bool,
    limit: int,
) -> RegistryRecord:
    """The record with `entry` among the nodes that saw `seen`, every list cut to `limit`
    (a record from an earlier version named every node)."""
    sightings = [
        replace(s, nodes=s.nodes[:limit], holders=s.holders[:limit])
        for s in record.sightings
    ]
    node = entry[0]
    for i, s in enumerate(sightings):
        if s.anchor.sha256 != seen.sha256:
            continue
        if node not in s.node_names:
            if holder and len(s.holders) < limit:
                sightings[i] = replace(s, holders=(*s.holders, entry))
            elif not holder and len(s.nodes) < limit:
                sightings[i] = replace(s, nodes=(*s.nodes, entry))
        return replace(record, sightings=tuple(sightings))
    if len(sightings) < MAX_ANCHORS:  # full: nothing grows, the node gets a conflict
        new = Sighting(seen, () if holder else (entry,), (entry,) if holder else ())
        sightings.append(new)
    return replace(record, sightings=tuple(sightings))


# --------------------------------------------------------------------------- messages


def who_saw(record: RegistryRecord) -> str:
    parts = []
    for s in record.sightings:
        names = s.node_names
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"{s.anchor.sha256} ({s.anchor.subject}) seen by {shown}")
    return "; ".join(parts)


def approval_command(namespace: str, policy_name: str, registry: str, sha256: str) -> str:
    """The one-line kubectl command that approves `sha256` for `registry`: a merge patch
    that adds the pin to the policy ConfigMap (a key of its own, so approvals of different
    registries never overwrite each other)."""
    body = json.dumps(
        {"data": {approval_key(registry): f"{registry} {sha256}"}}, separators=(",", ":")
    )
    argv = [
        "kubectl", "-n", namespace, "patch", "configmap", policy_name, "--type", "merge",
        "-p", body,
    ]
    return shlex.join(argv)


def approval_key(registry: str) -> str:
    return APPROVAL_PREFIX + key_part(registry)


def approvals(data: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Approved pins from the policy ConfigMap's `approve.*` keys: registry -> pins.
    A value that is not `host:port sha256:HEX` is ignored (and cannot widen anything)."""
    out: dict[str, set[str]] = {}
    for key, value in data.items():
        if not (isinstance(key, str) and key.startswith(APPROVAL_PREFIX)):
            continue
        if not isinstance(value, str) or len(value.split()) != 2:
            continue
        host, pin = value.split()
        try:
            endpoint = parse_hostport(host).key
            out.setdefault(endpoint, set()).add(normalize_pin(pin))
        except InputError:
            continue
    return {k: tuple(sorted(v)) for k, v in out.items()}


# --------------------------------------------------------------------------- policy


def with_approvals(policy: Policy, approved: Mapping[str, tuple[str, ...]]) -> Policy:
    """The policy with operator approvals added as pins of the registry they name.

    An approval never allows anything by itself: a registry the policy does not allow stays
    denied. It pins exactly the endpoint it names (a new exact `host:port` rule, which takes
    precedence over a glob), so approving one host of `*.corp.example` pins no other.
    """
    rules = list(policy.registries)
    for key, pins in sorted(approved.items()):
        endpoint = parse_hostport(key)
        rule = policy.rule_for(endpoint)
        if rule is None or rule.ca_pem is not None or rule.ca_from is not None:
            continue  # not allowed, or declared: a fetched anchor is never used there
        merged = tuple(sorted(set(rule.pins) | set(pins)))
        exact = rule.port == endpoint.port and not rule.is_glob
        if exact:
            rules[rules.index(rule)] = replace(rule, pins=merged)
        else:
            rules.append(replace(rule, pattern=endpoint.host, port=endpoint.port, pins=merged))
    return replace(policy, registries=tuple(rules))


def mode(policy: Policy, endpoint: HostPort) -> Mode:
    rule = policy.rule_for(endpoint)
    confirmations = policy.confirmations
    approval = policy.approval
    if rule is not None:
        confirmations = rule.confirmations if rule.confirmations is not None else confirmations
        approval = rule.approval if rule.approval is not None else approval
    return Mode(confirmations, approval)

__all__ = [
    "APPROVAL",
    "APPROVALS",
    "APPROVAL_PREFIX",
    "APPROVAL_REQUIRED",
    "CONFLICT",
    "HOLD",
    "INSTALL",
    "MAX_ANCHORS",
    "PROCEED",
    "RECORD_NAME",
    "RECORD_PREFIX",
    "REFUSE",
    "RETRY",
    "ROTATE",
    "SHOWN_NODES",
    "WAIT",
    "Decision",
    "Mode",
    "RegistryRecord",
    "Seen",
    "Sighting",
    "Verdict",
    "approval_command",
    "approval_key",
    "approvals",
    "decide",
    "mode",
    "observe",
    "parse_record",
    "record_key",
    "records",
    "render_record",
    "seen_from_der",
    "who_saw",
    "with_approvals",
]
