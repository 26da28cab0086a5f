"""The node engine: fetch -> analyze -> plan -> apply -> verify -> record, with rollback.

Used by the CLI (`install`, `remove`, `list`) and by the DaemonSet loop. Every effect goes
through `host` (files, commands), `chain` (TLS) and `runtime` (restarts), all injected, so
tests can run the same engine against a host-root tree, a recording runner or real daemons.

`Engine` (engine.py) is a facade over collaborators that share one `EngineContext`
(context.py): `Applier` runs plan actions and rolls them back (apply.py), `Remover` removes
and recovers after a crash (remove.py), `Verifier` asks the runtime's verdict and commits
or undoes (verify.py), `Installer` fetches, analyzes, places and plans (install.py).
"""

from __future__ import annotations

from agent.core.remediation import RESTARTS, SCOPES, InstallRequest, Result
from agent.node.engine.context import RestartGate
from agent.node.engine.engine import Engine

__all__ = ["RESTARTS", "SCOPES", "Engine", "InstallRequest", "RestartGate", "Result"]
