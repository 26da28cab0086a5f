"""`ca-trust-agent status` (also `kubectl ca-trust status`, through the `kubectl-ca_trust`
console script): registry -> anchor -> nodes trusted / pending / conflicting / not opted in,
from the cluster's trust record, the policy and the nodes' annotations.

Exit code 1 when a conflict exists (a node was shown another anchor than the record's), so
a script or a CI job can gate on it; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the API client, YAML and X.509 load only when `status` runs
    from agent.cluster.client import KubeClient
    from agent.core import firsttrust as ft
    from agent.core.policy import Policy

TRUSTED_ANNOTATION = "ca-trust-agent.io/trusted-registries"
OPT_IN_ANNOTATION = "ca-trust-agent.io/remediate"
POLICY_KEY = "policy.yaml"
POLICY_NAME = "ca-trust-agent"


def collect(client: KubeClient, namespace: str) -> dict[str, Any]:
    """The status as data (what `--json` prints)."""
    from agent.cluster.client import resource_path
    from agent.cluster.trustrecord import TrustRecord
    from agent.core import firsttrust as ft
    from agent.core.hostport import parse_hostport

    policy = _policy(client, namespace)
    nodes, _ = client.list_all(resource_path("v1", "nodes"))
    opted = sorted(
        _name(n) for n in nodes if _annotations(n).get(OPT_IN_ANNOTATION) == "enabled"
    )
    trusted_on: dict[str, list[str]] = {}
    for n in nodes:
        for reg in filter(None, _annotations(n).get(TRUSTED_ANNOTATION, "").split(",")):
            trusted_on.setdefault(reg.strip(), []).append(_name(n))
    registries = []
    for registry, record in sorted(TrustRecord(client, namespace).all().items()):
        mode = ft.mode(policy, parse_hostport(registry))
        anchors, split = [], False
        for s in record.sightings:
            # a rotation's confirmations come from nodes that trust the accepted anchor
            held = record.accepted if s.holders else None
            verdict = ft.decide(record, s.anchor.sha256, mode, held)
            split = split or verdict.split
            anchors.append(
                {
                    "sha256": s.anchor.sha256,
                    "spki": s.anchor.spki,
                    "subject": s.anchor.subject,
                    "notAfter": s.anchor.not_after,
                    "state": _state(verdict.action, s.anchor.sha256, record),
                    # the record names only the nodes that decide (up to `confirmations`
                    # per anchor) and the conflicting ones; who trusts it is `trusted`
                    "seenBy": list(s.node_names),
                }
            )
        trusted = sorted(trusted_on.get(registry, []))
        seen = {n for s in record.sightings for n in s.node_names}
        registries.append(
            {
                "registry": registry,
                "confirmations": mode.confirmations,
                "approval": mode.approval,
                "accepted": record.accepted,
                "previous": record.previous,
                "anchors": anchors,
                # from each Node's ca-trust-agent.io/trusted-registries annotation
                "trusted": trusted,
                "notSeenBy": sorted(set(opted) - seen - set(trusted)),
                "conflict": any(a["state"] == "conflicting" for a in anchors),
                "split": split,
            }
        )
    not_opted = sorted(_name(n) for n in nodes if _name(n) not in opted)
    return {"registries": registries, "optedIn": opted, "notOptedIn": not_opted}


def _state(action: str, sha256: str, record: ft.RegistryRecord) -> str:
    from agent.core import firsttrust as ft

    if sha256 == record.previous:
        return "rotated-out"
    return {
        ft.INSTALL: "trusted",
        ft.WAIT: "pending",
        ft.APPROVAL: "pending-approval",
        ft.CONFLICT: "conflicting",
    }[action]


def render(status: Mapping[str, Any]) -> str:
    lines = []
    for reg in status["registries"]:
        lines.append(
            f"{reg['registry']}  (confirmations {reg['confirmations']}, approval "
            f"{reg['approval']})"
        )
        for a in reg["anchors"]:
            lines.append(f"  {a['state']:<17} {a['sha256']}  {a['subject']}")
            lines.append(f"  {'':<17} seen by: {', '.join(a['seenBy']) or '-'}")
        lines.append(f"  trusted on: {', '.join(reg['trusted']) or '-'}")
        if reg.get("split"):
            lines.append(
                "  SPLIT: two anchors are each confirmed by enough nodes; pin the right one"
            )
        if reg["notSeenBy"]:
            lines.append(f"  not trusted yet on: {', '.join(reg['notSeenBy'])}")
    if not status["registries"]:
        lines.append("no fetched anchors recorded")
    lines.append(f"not opted in: {', '.join(status['notOptedIn']) or '-'}")
    return "\n".join(lines)


# --- registry certificates a CA cannot fix (RegistryCertificateInvalid, issue 19) ---------

CERTIFICATE_INVALID = "RegistryCertificateInvalid"
_REGISTRY_IN_MESSAGE = re.compile(r" from registry (\S+) failed: ")


def certificate_problems(client: KubeClient) -> list[dict[str, Any]]:
    """The registries whose certificate has a defect no CA fixes, from the agents' Node
    Events (namespace `default`, where Node Events live): registry, what is wrong (the
    Event's sentence), on which nodes, how often and when last, newest first."""
    from agent.cluster.client import resource_path

    events, _ = client.list_all(
        resource_path("v1", "events", "default"),
        field_selector=f"reason={CERTIFICATE_INVALID},involvedObject.kind=Node",
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        message = str(event.get("message") or "")
        match = _REGISTRY_IN_MESSAGE.search(message)
        registry = match.group(1) if match else "?"
        wrong = message[match.end() :] if match else message
        row = found.setdefault(
            (registry, wrong),
            {"registry": registry, "problem": wrong, "nodes": [], "count": 0, "lastSeen": ""},
        )
        node = str((event.get("involvedObject") or {}).get("name") or "")
        if node and node not in row["nodes"]:
            row["nodes"].append(node)
        row["count"] += int(event.get("count") or 1)
        row["lastSeen"] = max(row["lastSeen"], str(event.get("lastTimestamp") or ""))
    rows = sorted(found.values(), key=lambda r: (r["lastSeen"], r["registry"]), reverse=True)
    for row in rows:
        row["nodes"].sort()
    return rows


def render_certificate_problems(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "registry certificates a CA cannot fix: none reported"
    lines = ["registry certificates a CA cannot fix (RegistryCertificateInvalid):"]
    for row in rows:
        lines.append(f"  {row['registry']}  x{row['count']} on {', '.join(row['nodes'])}")
        lines.append(f"    {row['problem']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from agent.cluster.client import KubeClient

    client = KubeClient.from_config(args.kubeconfig)
    try:
        status = collect(client, args.namespace)
        status["certificateProblems"] = certificate_problems(client)
    finally:
        client.close()
    text = render(status) + "\n" + render_certificate_problems(status["certificateProblems"])
    print(json.dumps(status, indent=2) if args.json else text)
    return 1 if any(r["conflict"] for r in status["registries"]) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--kubeconfig", default=None, help="default: KUBECONFIG or in-cluster")
    parser.add_argument("-n", "--namespace", default="ca-trust-agent")


def plugin_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl ca-trust status [--json]`: kubectl runs `kubectl-ca_trust status ...`."""
    parser = argparse.ArgumentParser(prog="kubectl ca-trust")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("status", help="registry -> anchor -> nodes"))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # one line for a plugin user, no traceback
        print(f"kubectl ca-trust: {exc}", file=sys.stderr)
        return 2


def _policy(client: KubeClient, namespace: str) -> Policy:
    from agent.cluster.client import resource_path
    from agent.core import firsttrust as ft
    from agent.core.errors import PolicyError
    from agent.core.policy import DEFAULT_POLICY, parse_policy

    items = client.list(
        resource_path("v1", "configmaps", namespace), field_selector=f"metadata.name={POLICY_NAME}"
    ).get("items") or []
    data = (items[0].get("data") or {}) if items else {}
    try:
        policy = parse_policy(data.get(POLICY_KEY) or "")
    except PolicyError:
        policy = DEFAULT_POLICY
    return ft.with_approvals(policy, ft.approvals(data))


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


__all__ = [
    "certificate_problems",
    "collect",
    "plugin_main",
    "render",
    "render_certificate_problems",
    "run",
]
