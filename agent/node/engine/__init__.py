"""The node engine: fetch -> analyze -> plan -> apply -> verify -> record, with rollback.

Used by the CLI (`install`, `remove`, `list`) and by the DaemonSet loop. Every effect goes
through `host` (files, commands), `chain` (TLS) and `runtime` (restarts), all injected, so
tests can run the same engine against a host-root tree, a recording runner or real daemons.

`Engine` is assembled from one class per concern: `base` (construction and queries),
`apply` (running plan actions, rollback), `install` and `remove` (remove and crash recovery).
"""

from __future__ import annotations

from agent.core.remediation import RESTARTS, SCOPES, InstallRequest, Result
from agent.node.engine.base import RestartGate
from agent.node.engine.engine import Engine

__all__ = ["RESTARTS", "SCOPES", "Engine", "InstallRequest", "RestartGate", "Result"]
