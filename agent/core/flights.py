"""Single flight and back-off per failing host: 1,000 failing pods make one remediation.

Pure state with an injected clock. The daemon asks `admit(key)` for every detected
failure; only the first one while nothing is in flight and no back-off is pending wins.
Failures back off exponentially with jitter up to a cap; a success quiets the host for a
settle period, because kubelet keeps showing the old error until its next pull attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _State:
    in_flight: bool = False
    failures: int = 0
    quiet_until: float = 0.0


@dataclass
class Flights:
    clock: Callable[[], float]
    base: float = 5.0
    cap: float = 600.0
    settle: float = 300.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    _states: dict[str, _State] = field(default_factory=dict)

    def admit(self, key: str) -> bool:
        st = self._states.setdefault(key, _State())
        if st.in_flight or self.clock() < st.quiet_until:
            return False
        st.in_flight = True
        return True

    def succeeded(self, key: str) -> None:
        st = self._states.setdefault(key, _State())
        st.in_flight = False
        st.failures = 0
        st.quiet_until = self.clock() + self.settle

    def failed(self, key: str) -> float:
        """Record a failure; returns the back-off in seconds before the host is tried again."""
        st = self._states.setdefault(key, _State())
        st.in_flight = False
        st.failures += 1
        delay = min(self.cap, self.base * 2.0 ** (st.failures - 1))
        delay *= 1 + self.jitter * (2 * self.rng.random() - 1)
        st.quiet_until = self.clock() + delay
        return delay

    def forget(self, key: str) -> None:
        """Policy changed for this host: let the next failure through at once."""
        self._states.pop(key, None)

    def forget_all(self) -> None:
        """The policy changed: every host may be judged anew, except those in flight."""
        for key in [k for k, st in self._states.items() if not st.in_flight]:
            del self._states[key]

    def in_flight(self, key: str) -> bool:
        st = self._states.get(key)
        return bool(st and st.in_flight)
