"""The decision loop of `ca-trust-agent run`, free of watch mechanics.

Watch callbacks (`on_node`, `on_policy`, `on_pod`) only record state and enqueue work;
one worker thread (`work`) does everything that changes the node, in order, so two
remediations never race and at most one runtime restart is in progress on this node.

Everything the controller does to the cluster goes through two narrow interfaces — a
`Recorder` for Events and a `Cluster` for the few reads and patches it needs (and, for
recyclePods, a `PodRecycler` that evicts in its own thread) — so tests can drive it directly
and the daemon wires it to the real API.

`loop` holds the `Controller`: it owns the shared state (`state`: the lock, the policy
snapshot, the opt-in, the failing pods, the queue), builds one step per concern with what
that step uses, and runs the worker. The steps never import each other (import-linter
keeps it so): `watch` (what events record and enqueue), `remediate` (gate -> first trust
-> engine -> Events, metrics -> recyclePods), `reconcile` (policy sync, repairs, expiry
warnings) and `publish` (the node annotation and trust metrics, where both end).
`interfaces` holds what they share.
"""

from __future__ import annotations

from agent.cluster.controller.interfaces import (
    NORMAL,
    WARNING,
    Cluster,
    Metrics,
    PodRecycler,
    PodRef,
    Recorder,
)
from agent.cluster.controller.loop import Controller
from agent.cluster.controller.reconcile import EXPIRY_WARNING
from agent.cluster.controller.watch import EVENT_LOOKUP_INTERVAL, OPT_IN_ANNOTATION, POLICY_KEY
from agent.core.hostport import HostPort

__all__ = [
    "EVENT_LOOKUP_INTERVAL",
    "EXPIRY_WARNING",
    "NORMAL",
    "OPT_IN_ANNOTATION",
    "POLICY_KEY",
    "WARNING",
    "Cluster",
    "Controller",
    "HostPort",
    "Metrics",
    "PodRecycler",
    "PodRef",
    "Recorder",
]
