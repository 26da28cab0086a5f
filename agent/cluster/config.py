"""What `ca-trust-agent run` is told, as one frozen value: the daemon builds everything
from it (agent.cluster.daemon.run), and the command line is one way to make it."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.node.wiring import EngineConfig


@dataclass(frozen=True)
class DaemonConfig:
    node_name: str
    engine: EngineConfig = field(default_factory=EngineConfig)
    namespace: str = "ca-trust-agent"
    kubeconfig: str | None = None  # None: the in-cluster service account
    metrics_address: str = "0.0.0.0:9402"
    reconcile_seconds: float = 300.0

    @property
    def explicit_runtimes(self) -> bool:
        """The runtimes were named: the Node object's runtime does not override them."""
        return bool(self.engine.runtimes)


__all__ = ["DaemonConfig", "EngineConfig"]
