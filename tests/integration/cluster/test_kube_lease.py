"""RestartSlots against the fake apiserver: never more runtime restarts at once than slots.

Each RestartSlots stands for one node's agent, with its own KubeClient, all sharing one
fake apiserver as nodes share a cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy, Timeouts
from agent.cluster.lease import (
    LEASE_PREFIX,
    RestartSlots,
    SlotView,
    format_micro_time,
    parse_time,
    slot_names,
)
from agent.core.errors import RuntimeRestartError
from lab.fakes.apiserver import FakeApiServer, make_lease

JSON = dict[str, Any]
NS = "ca-trust-agent"
SLOT0 = f"{LEASE_PREFIX}0"
SLOT1 = f"{LEASE_PREFIX}1"
T0 = 1_800_000_000.0


def make_client(url: str) -> KubeClient:
    config = Configuration()
    config.host = url
    return KubeClient(config, timeouts=Timeouts(connect=1.0, read=5.0),
                      retry=RetryPolicy(attempts=2, initial=0.01, max_wait=0.02))


class FakeTime:
    """A clock and a sleep that only advances it; `on_sleep` runs at each sleep."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], object] | None = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def clients(api: FakeApiServer) -> Iterator[list[KubeClient]]:
    made: list[KubeClient] = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def node(api: FakeApiServer, clients: list[KubeClient], holder: str,
         client: KubeClient | None = None, **kwargs: Any) -> RestartSlots:
    if client is None:
        client = make_client(api.url)
        clients.append(client)
    return RestartSlots(client, NS, holder=holder, **kwargs)


def lease(api: FakeApiServer, name: str = SLOT0) -> JSON:
    obj = api.get_object("leases", NS, name)
    assert obj is not None, f"lease {name} missing"
    return obj


# --- pure ----------------------------------------------------------------------------------


def test_slot_names_and_micro_time_round_trip() -> None:
    assert slot_names(2) == ("ca-trust-agent-restart-0", "ca-trust-agent-restart-1")
    stamp = format_micro_time(T0 + 0.123456)
    assert stamp == "2027-01-15T08:00:00.123456Z"
    assert parse_time(stamp) == pytest.approx(T0 + 0.123456)
    assert parse_time("2027-01-15T08:00:00Z") == T0
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


def test_a_slot_is_free_without_holder_or_renewal_or_once_expired() -> None:
    def view(spec: JSON) -> SlotView:
        return SlotView.from_lease({"metadata": {"name": SLOT0, "resourceVersion": "7"},
                                    "spec": spec})

    held = view({"holderIdentity": "node-b", "leaseDurationSeconds": 60,
                 "renewTime": format_micro_time(T0)})
    assert not held.free(T0 + 60)
    assert held.free(T0 + 60.5)
    assert view({"leaseDurationSeconds": 60}).free(T0)
    assert view({"holderIdentity": "", "renewTime": format_micro_time(T0)}).free(T0)
    assert view({"holderIdentity": "node-b", "leaseDurationSeconds": 60}).free(T0)


# --- taking and releasing --------------------------------------------------------------------


def test_the_first_restart_creates_the_slot_held_and_release_clears_the_holder(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    a = node(api, clients, "node-a", clock=fake_time.clock, sleep=fake_time.sleep)
    assert a.acquire(timeout=0) == SLOT0
    spec = lease(api)["spec"]
    assert spec["holderIdentity"] == "node-a"
    assert spec["leaseDurationSeconds"] == 60
    assert spec["renewTime"] == spec["acquireTime"] == format_micro_time(T0)
    assert a.held == SLOT0

    assert a.release() is True
    assert "holderIdentity" not in lease(api)["spec"]
    assert a.held is None
    assert a.release() is False  # nothing held: a no-op


def test_the_second_node_waits_tells_once_and_gets_the_slot_after_release(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    a = node(api, clients, "node-a", clock=fake_time.clock, sleep=fake_time.sleep)
    b = node(api, clients, "node-b", clock=fake_time.clock, sleep=fake_time.sleep)
    a.acquire(timeout=0)
    waits: list[tuple[str, ...]] = []

    def release_a_on_third_poll() -> None:
        if len(fake_time.sleeps) == 3:
            a.release()

    fake_time.on_sleep = release_a_on_third_poll
    assert b.acquire(timeout=600, on_wait=waits.append) == SLOT0
    assert waits == [("node-a",)]  # once, although it polled three times
    assert lease(api)["spec"]["holderIdentity"] == "node-b"
    assert lease(api)["spec"]["leaseTransitions"] == 1
    b.release()


def test_polls_are_jittered_around_the_poll_interval(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    a = node(api, clients, "node-a", clock=fake_time.clock)
    a.acquire(timeout=0)
    b = node(api, clients, "node-b", clock=fake_time.clock, sleep=fake_time.sleep,
             poll_seconds=4.0)
    with pytest.raises(RuntimeRestartError):
        b.acquire(timeout=60)
    assert all(2.0 <= s <= 6.0 for s in fake_time.sleeps[:-1])
    assert len(set(fake_time.sleeps)) > 1
    a.release()


def test_no_free_slot_within_the_timeout_is_a_lock_timeout_naming_the_holder(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    a = node(api, clients, "node-a", clock=fake_time.clock)
    a.acquire(timeout=0)
    b = node(api, clients, "node-b", clock=fake_time.clock, sleep=fake_time.sleep)
    with pytest.raises(RuntimeRestartError) as caught:
        b.acquire(timeout=45)  # within a's TTL
    assert caught.value.kind == "lock-timeout"
    assert "node-a" in caught.value.message
    assert fake_time.now == pytest.approx(T0 + 45)  # it waited out the whole timeout
    assert b.held is None
    a.release()


def test_a_dead_nodes_expired_slot_is_taken_over(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    api.put_object(make_lease(SLOT0, namespace=NS, holder="dead-node", duration=60))
    renewed = parse_time(lease(api)["spec"]["renewTime"])
    assert renewed is not None

    fake_time.now = renewed + 30  # still within its TTL: not ours
    b = node(api, clients, "node-b", clock=fake_time.clock, sleep=fake_time.sleep)
    assert b.try_acquire() == (None, ("dead-node",))

    fake_time.now = renewed + 61  # the dead node never renewed
    assert b.try_acquire() == (SLOT0, ())
    assert lease(api)["spec"]["holderIdentity"] == "node-b"
    b.release()


def test_an_agent_restarted_mid_restart_takes_its_own_slot_again_not_a_second_one(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    api.put_object(make_lease(SLOT1, namespace=NS, holder="node-a", duration=60))
    a = node(api, clients, "node-a", max_slots=2)
    assert a.acquire(timeout=0) == SLOT1
    assert api.get_object("leases", NS, SLOT0) is None  # slot 0 untouched
    assert lease(api, SLOT1)["spec"]["holderIdentity"] == "node-a"
    a.release()


def test_two_slots_let_two_nodes_restart_at_once_but_not_three(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    a, b, c = (node(api, clients, f"node-{x}", max_slots=2) for x in "abc")
    assert {a.acquire(timeout=0), b.acquire(timeout=0)} == {SLOT0, SLOT1}
    with pytest.raises(RuntimeRestartError):
        c.acquire(timeout=0)
    b.release()
    assert c.acquire(timeout=0) in (SLOT0, SLOT1)
    a.release()
    c.release()


# --- races -----------------------------------------------------------------------------------


class RacingClient(KubeClient):
    """Lets `rival` act just before this client's first PUT or POST on a lease, as another
    node would between our read and our write."""

    def __init__(self, url: str, rival: Callable[[], object], verb: str) -> None:
        config = Configuration()
        config.host = url
        super().__init__(config, retry=RetryPolicy(attempts=2, initial=0.01, max_wait=0.02))
        self._rival: Callable[[], object] | None = rival
        self._verb = verb

    def _cut_in(self, verb: str) -> None:
        if verb == self._verb and self._rival is not None:
            rival, self._rival = self._rival, None
            rival()

    def replace(self, path: str, body: JSON) -> JSON:
        self._cut_in("PUT")
        return super().replace(path, body)

    def create(self, path: str, body: JSON) -> JSON:
        self._cut_in("POST")
        return super().create(path, body)


def test_losing_the_race_for_a_free_slot_409_conflict_means_wait_not_fail(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    api.put_object(make_lease(SLOT0, namespace=NS))  # exists, free
    a = node(api, clients, "node-a", clock=fake_time.clock)
    racing = RacingClient(api.url, lambda: a.acquire(timeout=0), "PUT")
    clients.append(racing)
    b = node(api, clients, "node-b", client=racing, clock=fake_time.clock,
             sleep=fake_time.sleep)
    waits: list[tuple[str, ...]] = []
    fake_time.on_sleep = a.release

    assert b.acquire(timeout=60, on_wait=waits.append) == SLOT0
    assert waits == [("node-a",)]
    puts = [r for r in api.requests() if r.method == "PUT"]
    assert len(puts) >= 3  # a's take, b's rejected take, a's release, b's take
    b.release()


def test_losing_the_race_to_create_a_slot_409_already_exists_means_wait_not_fail(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    a = node(api, clients, "node-a", clock=fake_time.clock)
    racing = RacingClient(api.url, lambda: a.acquire(timeout=0), "POST")
    clients.append(racing)
    b = node(api, clients, "node-b", client=racing, clock=fake_time.clock,
             sleep=fake_time.sleep)
    waits: list[tuple[str, ...]] = []
    fake_time.on_sleep = a.release

    assert b.acquire(timeout=60, on_wait=waits.append) == SLOT0
    assert waits == [("node-a",)]  # the winner is named
    assert lease(api)["spec"]["holderIdentity"] == "node-b"
    b.release()


def run_contenders(slots: list[RestartSlots], rounds: int) -> tuple[int, int]:
    """Each node restarts `rounds` times through its gate, from its own thread; returns
    (restarts done, the most nodes ever inside a restart at once)."""
    lock = threading.Lock()
    inside = 0
    peak = 0
    done = 0
    errors: list[BaseException] = []

    def restart(gate: Callable[[str], AbstractContextManager[None]]) -> None:
        nonlocal inside, peak, done
        try:
            for _ in range(rounds):
                with gate("containerd"):
                    with lock:
                        inside += 1
                        peak = max(peak, inside)
                    time.sleep(0.02)  # the restart itself
                    with lock:
                        inside -= 1
                        done += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=restart, args=(s.slot,)) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return done, peak


@pytest.mark.parametrize("nodes", [2, 3])
def test_contending_nodes_with_one_slot_never_restart_together(
    api: FakeApiServer, clients: list[KubeClient], nodes: int
) -> None:
    slots = [node(api, clients, f"node-{i}", max_slots=1, poll_seconds=0.01,
                  acquire_timeout=30) for i in range(nodes)]
    done, peak = run_contenders(slots, rounds=4)
    assert done == 4 * nodes
    assert peak == 1
    assert "holderIdentity" not in lease(api)["spec"]
    assert api.get_object("leases", NS, SLOT1) is None


def test_contending_nodes_with_two_slots_never_exceed_two(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    slots = [node(api, clients, f"node-{i}", max_slots=2, poll_seconds=0.01,
                  acquire_timeout=30) for i in range(4)]
    done, peak = run_contenders(slots, rounds=3)
    assert done == 12
    assert 1 <= peak <= 2


# --- renewal ---------------------------------------------------------------------------------


def test_a_renewed_slot_outlives_its_ttl_and_a_lost_one_is_not_fought_for(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    kw: JSON = {"clock": fake_time.clock, "sleep": fake_time.sleep, "renew_every": 3600.0}
    a = node(api, clients, "node-a", **kw)
    b = node(api, clients, "node-b", **kw)
    a.acquire(timeout=0)

    fake_time.now += 50
    assert a.renew() is True
    fake_time.now += 50  # 100 s after taking it, 50 s after the renewal
    assert b.try_acquire() == (None, ("node-a",))

    fake_time.now += 11  # a stopped renewing (hung): its slot expires
    assert b.try_acquire() == (SLOT0, ())
    assert a.renew() is False  # lost: a does not take it back
    assert a.release() is False  # and releasing does not free b's slot
    assert lease(api)["spec"]["holderIdentity"] == "node-b"
    b.release()


def test_the_renew_thread_keeps_the_slot_fresh_while_held(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    a = node(api, clients, "node-a", clock=fake_time.clock, sleep=fake_time.sleep,
             renew_every=0.02)
    with a.slot("containerd"):
        fake_time.now += 40
        wanted = format_micro_time(fake_time.now)
        deadline = time.monotonic() + 10
        while lease(api)["spec"]["renewTime"] != wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lease(api)["spec"]["renewTime"] == wanted
        assert lease(api)["spec"]["acquireTime"] == format_micro_time(T0)
    assert "holderIdentity" not in lease(api)["spec"]


# --- the engine's gate and failures ----------------------------------------------------------


def test_the_gate_releases_the_slot_when_the_restart_fails(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    a = node(api, clients, "node-a")
    gate: Callable[[str], AbstractContextManager[None]] = a  # the instance itself is a gate
    with pytest.raises(RuntimeError, match="restart failed"), gate("containerd"):
        assert lease(api)["spec"]["holderIdentity"] == "node-a"
        raise RuntimeError("restart failed")
    assert "holderIdentity" not in lease(api)["spec"]
    assert a.held is None


def test_two_restarts_on_one_node_take_turns(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    """One agent holds at most one slot: a second restart from the same process waits for
    the first (here it may not wait at all, so it times out)."""
    a = node(api, clients, "node-a", max_slots=2)
    with a.slot("containerd"):
        with pytest.raises(RuntimeRestartError) as caught, a.slot("docker", timeout=0):
            pass
        assert caught.value.kind == "lock-timeout"
    assert api.get_object("leases", NS, SLOT1) is None


def test_the_official_client_reads_our_lease_as_a_valid_v1_lease(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    # the referee; agent code never loads the typed models
    from kubernetes.client import ApiClient, CoordinationV1Api

    a = node(api, clients, "node-a")
    a.acquire(timeout=0)
    config = Configuration()
    config.host = api.url
    with ApiClient(config) as typed:
        obj = CoordinationV1Api(typed).read_namespaced_lease(SLOT0, NS)
    assert obj.spec is not None
    assert obj.spec.holder_identity == "node-a"
    assert obj.spec.lease_duration_seconds == 60
    assert obj.spec.renew_time is not None
    a.release()


def test_an_api_outage_while_waiting_is_retried_until_the_deadline(
    api: FakeApiServer, clients: list[KubeClient], fake_time: FakeTime
) -> None:
    b = node(api, clients, "node-b", clock=fake_time.clock, sleep=fake_time.sleep)
    api.pause("drop")
    with pytest.raises(RuntimeRestartError) as caught:
        b.acquire(timeout=20)
    assert caught.value.kind == "lock-timeout"
    assert "last API error" in caught.value.message

    fake_time.on_sleep = api.resume  # the API comes back during the next wait
    api.pause("drop")
    assert b.acquire(timeout=20) == SLOT0
    b.release()


def test_release_never_raises_when_the_api_is_down(
    api: FakeApiServer, clients: list[KubeClient]
) -> None:
    a = node(api, clients, "node-a")
    a.acquire(timeout=0)
    api.pause("drop")
    assert a.release() is False  # the slot will expire on its own
    api.resume()
    assert a.held is None
    assert lease(api)["spec"]["holderIdentity"] == "node-a"
