"""Cluster-wide restart coordination: at most `max_slots` nodes restart their runtime at once.

A restart of containerd or docker briefly takes the node's pods' runtime away; doing it on
every node at the same moment (one bad registry, every node remediating at once) would be a
cluster outage. So a restart first takes one of N coordination.k8s.io/v1 Leases named
`ca-trust-agent-restart-0` .. `-(N-1)` in the agent's namespace (kured's daemonset lock,
with Leases instead of an annotation).

- A slot is free when it has no holderIdentity, or when renewTime + leaseDurationSeconds is in
  the past: a node that died while holding it frees it after the TTL.
- Taking a slot is a PUT carrying the resourceVersion we read, so of two nodes racing for the
  same free slot exactly one wins; the other gets 409 Conflict and tries the next slot.
- A missing slot is created already held (409 AlreadyExists: someone else was first).
- A slot that already names us (the agent restarted mid-restart) is taken again, so a node
  never holds two slots.
- While held, a small thread renews the Lease every ttl/3, so a restart longer than the TTL
  does not lose its slot; release() clears holderIdentity with a conditional update.

Expiry compares our wall clock with the holder's renewTime, so node clocks must agree to
well within the TTL (60 s by default; NTP keeps them within milliseconds).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.cluster.client import ApiError, KubeClient, resource_path
from agent.core.errors import InputError, RuntimeRestartError

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Clock = Callable[[], float]
Sleep = Callable[[float], None]
WaitCallback = Callable[[tuple[str, ...]], None]  # the holders we are waiting for

LEASE_API = "coordination.k8s.io/v1"
LEASE_PREFIX = "ca-trust-agent-restart-"
DEFAULT_TTL_SECONDS = 60
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_ACQUIRE_TIMEOUT = 900.0  # a queue of nodes each restarting in well under a minute


# --- pure ----------------------------------------------------------------------------------


def slot_names(max_slots: int) -> tuple[str, ...]:
    return tuple(f"{LEASE_PREFIX}{i}" for i in range(max_slots))


def format_micro_time(epoch: float) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object) -> float | None:
    """MicroTime or Time -> epoch seconds; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class SlotView:
    """What a Lease says about its slot."""

    name: str
    holder: str | None
    expires_at: float | None  # renewTime + leaseDurationSeconds; None: never renewed
    resource_version: str

    @classmethod
    def from_lease(cls, obj: JSON) -> SlotView:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        duration = spec.get("leaseDurationSeconds")
        expires = None
        if renewed is not None and isinstance(duration, int):
            expires = renewed + duration
        return cls(
            name=str(meta.get("name", "")),
            holder=spec.get("holderIdentity") or None,
            expires_at=expires,
            resource_version=str(meta.get("resourceVersion", "")),
        )

    def free(self, now: float) -> bool:
        return self.holder is None or self.expires_at is None or self.expires_at < now


def new_lease(name: str, namespace: str, holder: str, ttl_seconds: int, now: float) -> JSON:
    stamp = format_micro_time(now)
    return {
        "apiVersion": LEASE_API,
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": ttl_seconds,
                 "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0},
    }


def taken(obj: JSON, holder: str, ttl_seconds: int, now: float) -> JSON:
    """The Lease as `holder` takes (or renews) it; keeps metadata.resourceVersion so the PUT
    is conditional."""
    spec = dict(obj.get("spec") or {})
    stamp = format_micro_time(now)
    if spec.get("holderIdentity") != holder:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec.update(holderIdentity=holder, leaseDurationSeconds=ttl_seconds, renewTime=stamp)
    return {**obj, "apiVersion": LEASE_API, "kind": "Lease", "spec": spec}


def released(obj: JSON, now: float) -> JSON:
    spec = {k: v for k, v in (obj.get("spec") or {}).items()
            if k not in ("holderIdentity", "acquireTime")}
    spec["renewTime"] = format_micro_time(now)
    return {**obj, "apiVersion": LEASE_API, "kind": "Lease", "spec": spec}


# --- effects -------------------------------------------------------------------------------


class RestartSlots:
    """`max_slots` restart slots shared by every node; this instance acts as `holder`.

    `slot(runtime)` is the engine's restart gate (`Engine(restart_gate=slots.slot)`).
    `max_slots` may be changed between restarts (the policy's maxConcurrentRestarts)."""

    def __init__(self, client: KubeClient, namespace: str, *, holder: str, max_slots: int = 1,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, clock: Clock = time.time,
                 sleep: Sleep = time.sleep, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
                 on_wait: WaitCallback | None = None, renew_every: float | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        if max_slots < 1 or ttl_seconds < 1:
            raise InputError("restart slots: max_slots and ttl_seconds must be >= 1",
                             kind="bad-restart")
        self._client = client
        self.namespace = namespace
        self.holder = holder
        self.max_slots = max_slots
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._sleep = sleep
        self._poll = poll_seconds
        self.acquire_timeout = acquire_timeout
        self._on_wait = on_wait
        self._renew_every = renew_every if renew_every is not None else ttl_seconds / 3
        self._rand = rand
        self._gate = threading.Lock()  # one restart at a time from this process
        self._state = threading.Lock()
        self._held: str | None = None
        self._stop_renew = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def held(self) -> str | None:
        """The slot (Lease name) this instance holds, if any."""
        with self._state:
            return self._held

    # public API
    @contextlib.contextmanager
    def slot(self, runtime: str, *, timeout: float | None = None,
             on_wait: WaitCallback | None = None) -> Iterator[None]:
        """Hold a slot for the body (a restart of `runtime`); RuntimeRestartError
        ("lock-timeout") when none comes free in time."""
        limit = self.acquire_timeout if timeout is None else timeout
        start = self._clock()
        if not self._gate.acquire(timeout=max(limit, 0.0)):
            raise RuntimeRestartError(
                f"{runtime} restart: another restart on this node still holds the slot",
                kind="lock-timeout")
        try:
            name = self.acquire(max(0.0, limit - (self._clock() - start)), on_wait)
            log.info("restart slot taken", extra={"slot": name, "runtime": runtime})
            try:
                yield
            finally:
                self.release()
        finally:
            self._gate.release()

    __call__ = slot

    def acquire(self, timeout: float | None = None,
                on_wait: WaitCallback | None = None) -> str:
        """Take a slot, waiting (jittered polls) up to `timeout` seconds; returns its name.
        `on_wait(holders)` is called once, when the first round does not get a slot (holders
        may be empty when the API failed or the slot was just lost to a race)."""
        limit = self.acquire_timeout if timeout is None else timeout
        notify = on_wait or self._on_wait
        deadline = self._clock() + limit
        holders: tuple[str, ...] = ()
        last_error: ApiError | None = None
        waited = False
        while True:
            try:
                name, holders = self.try_acquire()
            except ApiError as exc:  # an API hiccup: keep trying until the deadline
                log.warning("restart slot: %s", exc)
                name, last_error = None, exc
            if name is not None:
                return name
            if not waited:
                waited = True
                if notify is not None:
                    _call_quietly(notify, holders)
            left = deadline - self._clock()
            if left <= 0:
                raise RuntimeRestartError(_timeout_message(limit, holders, last_error),
                                          kind="lock-timeout")
            self._sleep(min(left, self._poll * (0.5 + self._rand())))

    def try_acquire(self) -> tuple[str | None, tuple[str, ...]]:
        """One round over the slots: (the slot taken, or None, and the holders seen)."""
        names = slot_names(self.max_slots)
        leases = self._read_slots(names)
        now = self._clock()
        views = {n: SlotView.from_lease(obj) for n, obj in leases.items()}
        # Ours first: an agent restarted mid-restart must not take a second slot.
        ours = [n for n, v in views.items() if v.holder == self.holder]
        free = [n for n, v in views.items() if v.free(now) and n not in ours]
        missing = [n for n in names if n not in views]
        for name in ours + free:
            if self._take(leases[name], now):
                return name, ()
        for name in missing:
            if self._create(name, now):
                return name, ()
        if free or missing:  # we lost a race: read again to name who won
            views = {n: SlotView.from_lease(obj) for n, obj in self._read_slots(names).items()}
        holders = sorted({v.holder for v in views.values() if v.holder and not v.free(now)})
        return None, tuple(holders)

    def renew(self) -> bool:
        """Push renewTime forward on the held slot; False when it was lost or not held."""
        name = self.held
        if name is None:
            return False
        try:
            obj = self._client.get(self._path(name))
            if SlotView.from_lease(obj).holder != self.holder:
                log.warning("restart slot lost to another holder", extra={"slot": name})
                return False
            self._client.replace(self._path(name),
                                 taken(obj, self.holder, self.ttl_seconds, self._clock()))
            return True
        except ApiError as exc:
            log.warning("restart slot not renewed: %s", exc, extra={"slot": name})
            return False

    def release(self) -> bool:
        """Free the held slot. Never raises: an unreleased slot expires after the TTL."""
        self._stop_renewer()
        with self._state:
            name, self._held = self._held, None
        if name is None:
            return False
        for _ in range(3):
            try:
                obj = self._client.get(self._path(name))
                if SlotView.from_lease(obj).holder != self.holder:
                    return False  # expired and taken over meanwhile: nothing of ours to free
                self._client.replace(self._path(name), released(obj, self._clock()))
                log.info("restart slot released", extra={"slot": name})
                return True
            except ApiError as exc:
                if exc.status != 409:
                    log.warning("restart slot not released (expires in %ss): %s",
                                self.ttl_seconds, exc, extra={"slot": name})
                    return False
        return False

    # internals
    def _path(self, name: str | None = None) -> str:
        return resource_path(LEASE_API, "leases", self.namespace, name)

    def _read_slots(self, names: tuple[str, ...]) -> dict[str, JSON]:
        """One LIST for all slots (other Leases in the namespace are ignored)."""
        page = self._client.list(self._path())
        by_name = {item.get("metadata", {}).get("name"): item for item in page.get("items") or []}
        return {n: by_name[n] for n in names if n in by_name}

    def _take(self, obj: JSON, now: float) -> bool:
        name = obj["metadata"]["name"]
        try:
            self._client.replace(self._path(name), taken(obj, self.holder, self.ttl_seconds, now))
        except ApiError as exc:
            if exc.status in (404, 409):  # lost the race (or it vanished): try the next one
                return False
            raise
        self._hold(name)
        return True

    def _create(self, name: str, now: float) -> bool:
        body = new_lease(name, self.namespace, self.holder, self.ttl_seconds, now)
        try:
            self._client.create(self._path(), body)
        except ApiError as exc:
            if exc.status == 409:  # someone else created it first; the next round reads it
                return False
            raise
        self._hold(name)
        return True

    def _hold(self, name: str) -> None:
        with self._state:
            self._held = name
        self._start_renewer()

    def _start_renewer(self) -> None:
        self._stop_renewer()
        self._stop_renew = threading.Event()
        stop = self._stop_renew
        self._renewer = threading.Thread(target=self._renew_loop, args=(stop,),
                                         name="restart-slot-renew", daemon=True)
        self._renewer.start()

    def _stop_renewer(self) -> None:
        self._stop_renew.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        self._renewer = None

    def _renew_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self._renew_every):
            if not self.renew() and self.held is None:
                return


def _call_quietly(callback: WaitCallback, holders: tuple[str, ...]) -> None:
    try:
        callback(holders)
    except Exception:
        log.exception("restart slot on_wait callback failed")


def _timeout_message(limit: float, holders: tuple[str, ...], error: ApiError | None) -> str:
    text = f"no restart slot came free within {limit:.0f}s"
    if holders:
        text += f" (held by {', '.join(holders)})"
    if error is not None:
        text += f"; last API error: {error}"
    return text
