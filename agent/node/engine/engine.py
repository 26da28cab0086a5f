"""`Engine`: the facade the CLI, the daemon and the lab use; the work is its collaborators'.

    Installer --> Verifier --> Remover --> Applier
        \\___________\\____________\\________> EngineContext (fs, runner, ledger, manager,
                                                judge, runtimes, restart gate, clock, ...)

Each collaborator receives what it uses through its constructor; none inherits from or
reaches into another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.core.remediation import InstallRequest, Result
from agent.node.engine.apply import Applier
from agent.node.engine.context import (
    EngineContext,
    Fetch,
    NodeRuntimes,
    RestartGate,
    RestartGates,
    Verify,
    now_utc,
)
from agent.node.engine.install import Installer
from agent.node.engine.remove import Remover
from agent.node.engine.verify import Verifier
from agent.node.host import HostFS, Runner
from agent.node.judge import Pull, RuntimeJudge
from agent.node.ledger import Ledger
from agent.node.runtimes import RestartMethod, RuntimeManager


class Engine:
    """Installs, verifies and removes trust anchors on one node."""

    def __init__(
        self,
        fs: HostFS,
        runner: Runner,
        *,
        runtimes: Sequence[str] | None = None,
        restart_method: RestartMethod | None = None,
        restart_gate: RestartGate | None = None,
        manager: RuntimeManager | None = None,
        fetch: Fetch | None = None,
        verify: Verify | None = None,
        pull: Pull | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        judge = RuntimeJudge(fs, pull=pull)
        self.context = EngineContext(
            fs=fs,
            runner=runner,
            ledger=Ledger(fs),
            manager=manager
            or RuntimeManager(fs, runner, restart_method or RestartMethod("systemd")),
            judge=judge,
            runtimes=NodeRuntimes(fs, judge, runtimes),
            gate=RestartGates(restart_gate),
            clock=clock,
            fetch=fetch,
            verify=verify,
        )
        self.applier = Applier(self.context)
        self.remover = Remover(self.context, self.applier)
        self.verifier = Verifier(self.context, self.applier, self.remover)
        self.installer = Installer(self.context, self.applier, self.verifier)

    # ------------------------------------------------------------------ actions

    def install(self, req: InstallRequest) -> Result:
        return self.installer.install(req)

    def remove(
        self,
        endpoint: HostPort,
        *,
        restart: str = "auto",
        dry_run: bool = False,
        allow_docker_restart_without_live_restore: bool = False,
    ) -> Result:
        return self.remover.remove(
            endpoint,
            restart=restart,
            dry_run=dry_run,
            allow_docker_restart_without_live_restore=allow_docker_restart_without_live_restore,
        )

    def recover(self) -> list[str]:
        return self.remover.recover()

    # ------------------------------------------------------------------ queries and settings

    @property
    def fs(self) -> HostFS:
        return self.context.fs

    @property
    def runner(self) -> Runner:
        return self.context.runner

    @property
    def ledger(self) -> Ledger:
        return self.context.ledger

    @property
    def manager(self) -> RuntimeManager:
        return self.context.manager

    @property
    def judge(self) -> RuntimeJudge:
        return self.context.judge

    @property
    def runtimes(self) -> tuple[str, ...]:
        return self.context.runtimes.names

    def entries(self) -> dict[str, LedgerEntry]:
        return self.context.entries()

    def use_runtimes(self, runtimes: Sequence[str], *, version: str = "") -> None:
        """The daemon learns the node's runtime (and its version, from the Node's
        containerRuntimeVersion) from the Node object after start."""
        self.context.runtimes.use(runtimes, version=version)

    def set_restart_gate(self, gate: RestartGate) -> None:
        self.context.gate.set(gate)
