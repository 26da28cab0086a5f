"""Safe first trust, as values and decisions: what one node may do with an anchor it fetched
for a registry, given the cluster-wide record of what every node saw.

Why: for an allowed registry without a pin, the anchor is whatever the registry's TLS
handshake showed this node. An attacker on one node's path (a poisoned resolver, an
intercepting proxy, a hijacked route) would plant a CA there. So a fetched anchor is
installed only when the record agrees:

- the first anchor recorded for a registry wins; a node shown another one installs nothing
  and reports a conflict (`CONFLICT`);
- `confirmations: N`: the anchor is accepted only once N distinct nodes recorded it
  (`WAIT` until then, `INSTALL` from then on, on every node that saw it);
- `approval: required`: nothing is accepted from fetches at all (`APPROVAL`); an operator
  approves by adding the fingerprint as a pin (`approval_command`), and pinned registries
  never consult the record;
- rotation: once an anchor is accepted, a different one is a new candidate. With N = 1 one
  node's word cannot replace a trusted anchor, so it is a conflict (the Event names the pin
  to add); with N >= 2 it is accepted as the new anchor after N nodes saw it, and the
  acceptance names the previous one, so nodes trust both until the new one is verified.

Everything here is pure: the record is parsed from and rendered to the ConfigMap's text by
`parse_record` / `render_record`, and the cluster side (agent.cluster.trustrecord) does the
resourceVersion-conditional update around `observe`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.core.errors import InputError
from agent.core.hostport import HostPort, parse_hostport
from agent.core.pins import normalize_pin
from agent.core.policy import Policy

RECORD_NAME = "ca-trust-agent-trust-record"  # the ConfigMap, in the agent's namespace
RECORD_PREFIX = "registry."  # one data key per registry: registry.<host>_<port>
APPROVAL_PREFIX = "approve."  # in the policy ConfigMap: approve.<host>_<port>
APPROVAL_REQUIRED = "required"
APPROVALS = ("none", APPROVAL_REQUIRED)
# A record key holds at most this many distinct anchors and nodes per anchor: a flood of
# different chains (an attacker rotating certificates) cannot grow the ConfigMap unbounded.
MAX_ANCHORS = 8
MAX_NODES = 5000

INSTALL = "install"
WAIT = "wait"
CONFLICT = "conflict"
APPROVAL = "approval"


@dataclass(frozen=True)
class Seen:
    """One anchor as fetched and validated by a node (no pin, no caPEM)."""

    sha256: str  # "sha256:" + hex of the DER: what pins and the ledger name
    spki: str  # "sha256:" + hex of the SubjectPublicKeyInfo: survives a re-issue
    subject: str
    not_after: str  # RFC 3339


@dataclass(frozen=True)
class Sighting:
    anchor: Seen
    nodes: tuple[tuple[str, str], ...]  # (node, when first seen), in order of arrival

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.nodes)


@dataclass(frozen=True)
class RegistryRecord:
    """What the cluster saw for one registry. `sightings[0]` is the first anchor recorded."""

    registry: str  # host:port
    sightings: tuple[Sighting, ...] = ()
    accepted: str | None = None  # sha256 of the anchor nodes may install
    previous: str | None = None  # the anchor accepted before a rotation (trusted alongside)

    def sighting(self, sha256: str) -> Sighting | None:
        return next((s for s in self.sightings if s.anchor.sha256 == sha256), None)

    def candidates(self) -> tuple[Sighting, ...]:
        """Anchors seen but neither accepted nor the one a rotation replaced, first
        sighting first."""
        settled = (self.accepted, self.previous)
        return tuple(s for s in self.sightings if s.anchor.sha256 not in settled)


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
    have: int  # distinct nodes that saw this node's anchor
    need: int
    rotation_from: str | None = None  # INSTALL of a rotation: the anchor it replaces


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


def observe(record: RegistryRecord, seen: Seen, node: str, now: str, mode: Mode) -> Verdict:
    """Record that `node` fetched `seen`, and decide what the node may do.

    Called inside the conditional update, so the acceptance (N-th confirmation) is written
    by exactly the node whose sighting completed it, in the same write.
    """
    record = _with_sighting(record, seen, node, now)
    return decide(record, seen.sha256, mode)


def decide(record: RegistryRecord, sha256: str, mode: Mode) -> Verdict:
    """What a node holding anchor `sha256` may do under `record` (no write needed unless the
    verdict accepts the anchor: `record.accepted` changed)."""
    mine = record.sighting(sha256)
    have = len(mine.nodes) if mine else 0
    need = mode.confirmations
    if record.accepted == sha256:
        return Verdict(INSTALL, record, have, need)
    rotating = record.accepted is not None
    contenders = record.candidates()
    if contenders and contenders[0].anchor.sha256 != sha256:
        return Verdict(CONFLICT, record, have, need)  # another anchor was recorded first
    if rotating and need < 2:
        # one node's fetch never replaces an anchor the cluster trusts
        return Verdict(CONFLICT, record, have, need)
    if mode.approval_required:
        return Verdict(APPROVAL, record, have, need)
    if have < need:
        return Verdict(WAIT, record, have, need)
    # the anchor replaced two rotations ago is history: it no longer competes
    kept = tuple(s for s in record.sightings if s.anchor.sha256 != record.previous)
    accepted = replace(record, sightings=kept, accepted=sha256, previous=record.accepted)
    return Verdict(INSTALL, accepted, have, need, rotation_from=record.accepted)


def _with_sighting(record: RegistryRecord, seen: Seen, node: str, now: str) -> RegistryRecord:
    sightings = list(record.sightings)
    for i, s in enumerate(sightings):
        if s.anchor.sha256 == seen.sha256:
            if node not in s.node_names and len(s.nodes) < MAX_NODES:
                sightings[i] = replace(s, nodes=(*s.nodes, (node, now)))
            return replace(record, sightings=tuple(sightings))
    if len(sightings) >= MAX_ANCHORS:
        return record  # full: the node still gets its verdict (a conflict), nothing grows
    return replace(record, sightings=(*sightings, Sighting(seen, ((node, now),))))


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
    return APPROVAL_PREFIX + _key_part(registry)


def record_key(registry: str) -> str:
    return RECORD_PREFIX + _key_part(registry)


def _key_part(registry: str) -> str:
    # ConfigMap keys allow [-._a-zA-Z0-9]; the value carries the exact registry anyway
    return re.sub(r"[^-._a-zA-Z0-9]", "_", registry.replace(":", "_").strip("[]"))


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


# --------------------------------------------------------------------------- wire format


def render_record(record: RegistryRecord) -> str:
    return json.dumps(
        {
            "registry": record.registry,
            "accepted": record.accepted,
            "previous": record.previous,
            "anchors": [
                {
                    "sha256": s.anchor.sha256,
                    "spki": s.anchor.spki,
                    "subject": s.anchor.subject,
                    "notAfter": s.anchor.not_after,
                    "nodes": [{"node": n, "at": t} for n, t in s.nodes],
                }
                for s in record.sightings
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def parse_record(registry: str, text: str | None) -> RegistryRecord:
    """The record of one registry; an absent or unreadable value is an empty record (the
    first sighting then starts it again, which is what an operator deleting it wants)."""
    if not text:
        return RegistryRecord(registry)
    try:
        doc = json.loads(text)
        sightings = tuple(
            Sighting(
                Seen(str(a["sha256"]), str(a["spki"]), str(a["subject"]), str(a["notAfter"])),
                tuple((str(n["node"]), str(n["at"])) for n in a["nodes"]),
            )
            for a in doc["anchors"]
        )
        accepted = doc.get("accepted")
        previous = doc.get("previous")
    except (ValueError, KeyError, TypeError):
        return RegistryRecord(registry)
    return RegistryRecord(
        registry,
        sightings,
        str(accepted) if accepted else None,
        str(previous) if previous else None,
    )


def records(data: Mapping[str, Any]) -> dict[str, RegistryRecord]:
    """Every registry's record in the ConfigMap's data."""
    out = {}
    for key, text in data.items():
        if isinstance(key, str) and key.startswith(RECORD_PREFIX) and isinstance(text, str):
            try:
                registry = str(json.loads(text)["registry"])
            except (ValueError, KeyError, TypeError):
                continue
            out[registry] = parse_record(registry, text)
    return out


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
