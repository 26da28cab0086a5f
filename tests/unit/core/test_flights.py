"""One remediation per failing host, however many pods report it; back-off after failures."""

from __future__ import annotations

import random

from agent.core.flights import Flights


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flights(clock: Clock) -> Flights:
    return Flights(clock=clock, base=5.0, cap=60.0, settle=300.0, jitter=0.0, rng=random.Random(1))


def test_only_the_first_of_a_thousand_failures_for_a_host_is_admitted() -> None:
    f = flights(Clock())
    admitted = [f.admit("registry.test:5443") for _ in range(1000)]
    assert admitted.count(True) == 1
    assert admitted[0] is True


def test_different_hosts_fly_independently() -> None:
    f = flights(Clock())
    assert f.admit("a:443") and f.admit("b:443")


def test_a_success_quiets_the_host_for_the_settle_period() -> None:
    clock = Clock()
    f = flights(clock)
    assert f.admit("a:443")
    f.succeeded("a:443")
    clock.now += 299
    assert not f.admit("a:443"), "kubelet still shows the old error until its next attempt"
    clock.now += 2
    assert f.admit("a:443")


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    clock = Clock()
    f = flights(clock)
    delays = []
    for _ in range(6):
        assert f.admit("a:443")
        delays.append(f.failed("a:443"))
        assert not f.admit("a:443")
        clock.now += delays[-1]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_jitter_spreads_the_back_off_within_its_bounds() -> None:
    clock = Clock()
    f = Flights(clock=clock, base=10.0, cap=600.0, jitter=0.2, rng=random.Random(7))
    seen = set()
    for i in range(20):
        key = f"h{i}:443"
        f.admit(key)
        d = f.failed(key)
        assert 8.0 <= d <= 12.0
        seen.add(round(d, 3))
    assert len(seen) > 10


def test_forget_lets_the_next_failure_through_at_once() -> None:
    clock = Clock()
    f = flights(clock)
    f.admit("a:443")
    f.failed("a:443")
    f.forget("a:443")
    assert f.admit("a:443")
