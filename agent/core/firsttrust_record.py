"""The cluster-wide trust record as values, and its wire format (one JSON text per registry,
under one data key of the ConfigMap `ca-trust-agent-trust-record`).

The record keeps what a first-trust decision needs, not who trusts what: per anchor seen for
a registry, at most a bounded number of nodes (the `confirmations` that accept it, the
conflicting sightings an operator must see), whether and which anchor is accepted, and the
one a rotation replaced. Which nodes trust a registry is on each Node (the
`ca-trust-agent.io/trusted-registries` annotation) and in its Events, so the record's size
and its write count do not grow with the fleet.

Upgrade: a record written by an earlier version (every node of every anchor under `nodes`)
parses as is: its `accepted` anchor stays accepted, and its node lists are cut to the bound
at the next write of that registry's key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RECORD_NAME = "ca-trust-agent-trust-record"  # the ConfigMap, in the agent's namespace
RECORD_PREFIX = "registry."  # one data key per registry: registry.<host>_<port>
# At most this many distinct anchors per registry: a flood of different chains (an attacker
# rotating certificates) cannot grow the ConfigMap.
MAX_ANCHORS = 8
# Nodes named per anchor and per kind of sighting: at least `confirmations` (what accepts an
# anchor), and this many conflicting nodes for an operator to look at. Further nodes that
# saw the same anchor change nothing in the record, so they do not write.
SHOWN_NODES = 8


@dataclass(frozen=True)
class Seen:
    """One anchor as fetched and validated by a node (no pin, no caPEM)."""

    sha256: str  # "sha256:" + hex of the DER: what pins and the ledger name
    spki: str  # "sha256:" + hex of the SubjectPublicKeyInfo: survives a re-issue
    subject: str
    not_after: str  # RFC 3339


@dataclass(frozen=True)
class Sighting:
    """One anchor and the nodes that fetched it, in order of arrival, split by what the node
    trusted then: `nodes` trusted no anchor for the registry (a first trust, or a node shown
    something other than the accepted anchor); `holders` trusted the accepted anchor (their
    sightings are what a rotation counts)."""

    anchor: Seen
    nodes: tuple[tuple[str, str], ...]  # (node, when first seen)
    holders: tuple[tuple[str, str], ...] = ()

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in (*self.nodes, *self.holders))


@dataclass(frozen=True)
class RegistryRecord:
    """What the cluster decided, and the sightings that decide, for one registry."""

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


def record_key(registry: str) -> str:
    return RECORD_PREFIX + key_part(registry)


def key_part(registry: str) -> str:
    # ConfigMap keys allow [-._a-zA-Z0-9]; the value carries the exact registry anyway
    return re.sub(r"[^-._a-zA-Z0-9]", "_", registry.replace(":", "_").strip("[]"))


def render_record(record: RegistryRecord) -> str:
    def named(entries: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
        return [{"node": n, "at": t} for n, t in entries]

    anchors = []
    for s in record.sightings:
        doc: dict[str, Any] = {
            "sha256": s.anchor.sha256,
            "spki": s.anchor.spki,
            "subject": s.anchor.subject,
            "notAfter": s.anchor.not_after,
            "nodes": named(s.nodes),
        }
        if s.holders:
            doc["holders"] = named(s.holders)
        anchors.append(doc)
    return json.dumps(
        {
            "registry": record.registry,
            "accepted": record.accepted,
            "previous": record.previous,
            "anchors": anchors,
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
                _entries(a["nodes"]),
                _entries(a.get("holders") or []),
            )
            for a in doc["anchors"]
        )
        accepted = doc.get("accepted")
        previous = doc.get("previous")
    except (ValueError, KeyError, TypeError, AttributeError):
        return RegistryRecord(registry)
    return RegistryRecord(
        registry,
        sightings,
        str(accepted) if accepted else None,
        str(previous) if previous else None,
    )


def _entries(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(n["node"]), str(n["at"])) for n in items)


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


__all__ = [
    "MAX_ANCHORS",
    "RECORD_NAME",
    "RECORD_PREFIX",
    "SHOWN_NODES",
    "RegistryRecord",
    "Seen",
    "Sighting",
    "parse_record",
    "record_key",
    "records",
    "render_record",
]
