"""What the engine's collaborators share: one narrow, explicit context.

`EngineContext` is frozen: the host, the ledger, the runtime manager and judge, the clock
and the injected fetch/verify are fixed for the engine's life. The two things that do
change after construction have an owner of their own: `NodeRuntimes` (the daemon learns the
node's runtime from its Node object) and `RestartGates` (the daemon installs its restart
slots once the lease client exists).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.core.hostport import HostPort
from agent.core.ledger_entry import LedgerEntry
from agent.node.host import HostFS, Runner
from agent.node.judge import RuntimeJudge
from agent.node.ledger import Ledger
from agent.node.runtimes import RuntimeManager, detect_runtimes

# One logger for the whole engine, named as before the split: log filters and the JSON
# logs' "name" field keep matching whichever sub-module logs.
log = logging.getLogger("agent.node.engine")

RestartGate = Callable[[str], AbstractContextManager[None]]
Fetch = Callable[[HostPort], object]  # endpoint -> chain (or an object with `.certs`)
Verify = Callable[[HostPort, str], None]  # endpoint, real CA file -> raises when untrusted


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Adds the block's wall time to `timings[name]` (the Result's timings)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


class NodeRuntimes:
    """The node's runtimes: as given, as learned from the Node object, or detected once."""

    def __init__(self, fs: HostFS, judge: RuntimeJudge, names: Sequence[str] | None) -> None:
        self._fs = fs
        self._judge = judge
        self._names = tuple(names) if names is not None else None

    @property
    def names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = detect_runtimes(self._fs)
        return self._names

    def use(self, names: Sequence[str], *, version: str = "") -> None:
        self._names = tuple(names)
        for name in names:
            self._judge.learn_version(name, version)


class RestartGates:
    """The gate every runtime restart passes (the daemon's restart slots); none by default."""

    def __init__(self, gate: RestartGate | None = None) -> None:
        self._gate: RestartGate = gate or (lambda _runtime: contextlib.nullcontext())

    def set(self, gate: RestartGate) -> None:
        self._gate = gate

    def __call__(self, runtime: str) -> AbstractContextManager[None]:
        return self._gate(runtime)


@dataclass(frozen=True)
class EngineContext:
    """Everything the applier, verifier, installer and remover use, and nothing else."""

    fs: HostFS
    runner: Runner
    ledger: Ledger
    manager: RuntimeManager
    judge: RuntimeJudge
    runtimes: NodeRuntimes
    gate: RestartGates
    clock: Callable[[], datetime] = now_utc
    fetch: Fetch | None = None  # None: a real TLS fetch (agent.node.chain)
    verify: Verify | None = None  # None: a real TLS handshake (agent.node.chain)

    def entries(self) -> dict[str, LedgerEntry]:
        return self.ledger.entries()
