"""The engine's state and queries: what it was built with, the node's runtimes, the ledger."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from agent.core.ledger_entry import LedgerEntry
from agent.node.host import HostFS, Runner
from agent.node.judge import Pull, RuntimeJudge
from agent.node.ledger import Ledger
from agent.node.runtimes import RestartMethod, RuntimeManager, detect_runtimes

# One logger for the whole engine, named as before the split: log filters and the JSON
# logs' "name" field keep matching whichever sub-module logs.
log = logging.getLogger("agent.node.engine")

RestartGate = Callable[[str], AbstractContextManager[None]]


def _now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class EngineBase:
    """What every part of the engine shares: the host, the ledger, the runtime manager."""

    def __init__(
        self,
        fs: HostFS,
        runner: Runner,
        *,
        runtimes: Sequence[str] | None = None,
        restart_method: RestartMethod | None = None,
        restart_gate: RestartGate | None = None,
        manager: RuntimeManager | None = None,
        fetch: Callable[..., object] | None = None,
        verify: Callable[..., None] | None = None,
        pull: Pull | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.fs = fs
        self.runner = runner
        self.ledger = Ledger(fs)
        self._runtimes = tuple(runtimes) if runtimes is not None else None
        self.manager = manager or RuntimeManager(
            fs, runner, restart_method or RestartMethod("systemd")
        )
        self._gate: RestartGate = restart_gate or (lambda _runtime: contextlib.nullcontext())
        self._fetch = fetch
        self._verify = verify
        self._clock = clock
        self.judge = RuntimeJudge(fs, pull=pull)

    # ----------------------------------------------------------------- queries

    @property
    def runtimes(self) -> tuple[str, ...]:
        if self._runtimes is None:
            self._runtimes = detect_runtimes(self.fs)
        return self._runtimes

    def entries(self) -> dict[str, LedgerEntry]:
        return self.ledger.entries()

    def use_runtimes(self, runtimes: Sequence[str], *, version: str = "") -> None:
        """The daemon learns the node's runtime (and its version, from the Node's
        containerRuntimeVersion) from the Node object after start."""
        self._runtimes = tuple(runtimes)
        for runtime in runtimes:
            self.judge.learn_version(runtime, version)

    def set_restart_gate(self, gate: RestartGate) -> None:
        self._gate = gate
