"""What a test turns on the fake and reads back: outages, injected errors, refused evictions,
the request log and the bytes sent to each client.

Both share the store's lock, so a refusal is spent in the same step as the eviction it
refuses.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    client: str
    authorization: str | None = None  # the header as sent, to check credentials reach us


@dataclass
class Refusal:
    """An eviction refusal a test asked for (`refuse_evictions`)."""

    left: int
    pod: tuple[str, str] | None
    budget: str
    retry_after: int


class Faults:
    """An API outage (`pause`), errors for the next requests, PodDisruptionBudget refusals."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._resumed = threading.Event()
        self._resumed.set()
        self.mode = "drop"
        self._injected: deque[int] = deque()
        self._refusals: list[Refusal] = []

    def pause(self, mode: str) -> None:
        if mode not in ("drop", "stall"):
            raise ValueError(mode)
        self.mode = mode
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def wait_resumed(self) -> None:
        self._resumed.wait()

    def inject_errors(self, code: int, count: int) -> None:
        with self._lock:
            self._injected.extend([code] * count)

    def take_injected(self) -> int | None:
        with self._lock:
            return self._injected.popleft() if self._injected else None

    def refuse_evictions(
        self, count: int, pod: tuple[str, str] | None, budget: str, retry_after: int
    ) -> None:
        with self._lock:
            self._refusals.append(Refusal(count, pod, budget, retry_after))

    def refusal(self, namespace: str, name: str) -> Refusal | None:
        """Caller holds the lock: the refusal that applies to this eviction, spent once."""
        for r in self._refusals:
            if r.left > 0 and r.pod in (None, (namespace, name)):
                r.left -= 1
                return r
        return None


class Traffic:
    """Every request as it arrived, and the bytes written to each client."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._bytes: dict[str, int] = {}
        self._watch_bytes: dict[str, int] = {}  # resource plural -> watch event bytes sent
        self._requests: list[RequestRecord] = []

    def log(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def count(self, client: str, n: int) -> None:
        with self._lock:
            self._bytes[client] = self._bytes.get(client, 0) + n

    def bytes_sent(self, client: str) -> int:
        with self._lock:
            return self._bytes.get(client, 0)

    def bytes_by_client(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes)

    def count_watch(self, plural: str, n: int) -> None:
        with self._lock:
            self._watch_bytes[plural] = self._watch_bytes.get(plural, 0) + n

    def watch_bytes(self, plural: str | None = None) -> int:
        with self._lock:
            if plural is None:
                return sum(self._watch_bytes.values())
            return self._watch_bytes.get(plural, 0)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
