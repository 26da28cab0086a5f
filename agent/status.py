"""`ca-trust-agent status` (also `kubectl ca-trust status`, through the `kubectl-ca_trust`
console script): registry -> anchor -> nodes trusted / pending / conflicting / not opted in,
from the cluster's trust record, the policy and the nodes' annotations.

Exit code 1 when a conflict exists (a node was shown another anchor than the record's), so
a script or a CI job can gate on it; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
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


def run(args: argparse.Namespace) -> int:
    from agent.cluster.client import KubeClient

    client = KubeClient.from_config(args.kubeconfig)
    try:
        status = collect(client, args.namespace)
    finally:
        client.close()
    print(json.dumps(status, indent=2) if args.json else render(status))
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


__all__ = ["collect", "plugin_main", "render", "run"]
