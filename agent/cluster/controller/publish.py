"""The end of every change: what this node trusts now, from the engine's ledger, published
on the Node annotation and in the metrics. Both the remediation and the policy sync end
here; it reads the ledger and writes outward, and calls no other part."""

from __future__ import annotations

import logging
from datetime import datetime

from agent.cluster.controller.interfaces import Cluster, Metrics, Recorder
from agent.core.errors import AgentError
from agent.core.ledger_entry import LedgerEntry
from agent.core.reasons import Reason
from agent.node.engine import Engine
from agent.node.interception import DEFAULT_DIR

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")


class Publisher:
    def __init__(
        self,
        *,
        node_name: str,
        engine: Engine,
        recorder: Recorder,
        cluster: Cluster,
        metrics: Metrics | None,
    ) -> None:
        self._node_name = node_name
        self._engine = engine
        self._recorder = recorder
        self._cluster = cluster
        self._metrics = metrics

    def entries(self) -> dict[str, LedgerEntry]:
        """The ledger's entries; none (and a Warning) when it cannot be read."""
        try:
            return self._engine.entries()
        except AgentError as exc:
            reason = Reason.CA_TRUST_FAILED
            self._recorder.node(self._node_name, reason.type, reason, f"ledger unreadable: {exc}")
            return {}

    def publish(self) -> None:
        entries = self.entries()
        # the annotation names registries: containerd's certs.d/_default (an interception CA
        # for every registry without a directory of its own) is not one
        installed = sorted(
            k for k, e in entries.items() if e.state == "installed" and k != DEFAULT_DIR.key
        )
        try:
            self._cluster.set_trusted_registries(self._node_name, installed)
        except Exception as exc:
            log.warning("cannot update the node annotation: %s", exc)
        if self._metrics:
            times = {
                k: t for k, e in entries.items() if (t := parse_time(e.not_after)) is not None
            }
            self._metrics.set_trusted(times)


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
