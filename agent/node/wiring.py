"""The engine as the CLI and the daemon build it: from one frozen `EngineConfig` (what the
command line says about the host), one builder, so `install`/`remove` on a node and the
DaemonSet act through the very same engine."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from agent.node.engine import Engine
from agent.node.host import DirectRunner, HostFS, NsenterRunner
from agent.node.runtimes import RestartMethod, restart_method_from_env


@dataclass(frozen=True)
class EngineConfig:
    host_root: str = "/"
    runner: str = "auto"  # "auto" | "direct" | "nsenter"; auto: nsenter when host_root != /
    runtimes: tuple[str, ...] | None = None  # None: detected on the host
    restart_command: str | None = None  # None: $CA_TRUST_AGENT_RESTART_COMMAND or systemd

    @property
    def uses_nsenter(self) -> bool:
        # a host root other than / means a container with the host mounted: host commands
        # must run in PID 1's namespaces to act on the host
        return self.runner == "nsenter" or (
            self.runner == "auto" and os.path.realpath(self.host_root) != "/"
        )

    def restart_method(self) -> RestartMethod:
        if self.restart_command:
            return RestartMethod("command", tuple(shlex.split(self.restart_command)))
        return restart_method_from_env()


def build_engine(config: EngineConfig) -> Engine:
    runner = NsenterRunner() if config.uses_nsenter else DirectRunner()
    return Engine(
        HostFS(config.host_root),
        runner,
        runtimes=config.runtimes,
        restart_method=config.restart_method(),
    )


__all__ = ["EngineConfig", "build_engine"]
