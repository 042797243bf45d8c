"""Circuit breaker, log throttle, invalidation backlog and counters, on a fake clock (marker `cache`)."""

from __future__ import annotations

import threading

import pytest

from cache.appcache.breaker import BreakerState, CircuitBreaker, InvalidationBacklog, LogThrottle
from cache.appcache.stats import COUNTERS, CacheStats

pytestmark = pytest.mark.cache


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_breaker(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    options: dict[str, object] = {"failure_threshold": 3, "recovery_s": 1.0, "max_recovery_s": 4.0}
    options.update(kwargs)
    return CircuitBreaker(monotonic=clock, **options)  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_only() -> None:
    breaker = make_breaker(FakeClock())
    assert breaker.record_failure() is False
    assert breaker.record_failure() is False
    breaker.record_success()  # resets the streak
    assert breaker.record_failure() is False
    assert breaker.record_failure() is False
    assert breaker.state is BreakerState.CLOSED
    assert breaker.record_failure() is True
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened == 1


def test_open_breaker_rejects_until_recovery_then_lets_one_probe() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.allow() is False
    clock.now += 0.999
    assert breaker.allow() is False
    clock.now += 0.001
    assert breaker.allow() is True  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() is False  # only one probe at a time
    assert breaker.record_success() is True
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() is True


def test_failed_probes_double_the_delay_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    delays = []
    for _ in range(4):
        waited = 0.0
        while not breaker.allow():
            clock.now += 0.5
            waited += 0.5
        delays.append(waited)
        assert breaker.record_failure() is True
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert breaker.opened == 1  # re-opening after a failed probe is the same outage


def test_success_resets_the_delay() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_failure()  # delay now 2 s
    clock.now += 2
    assert breaker.allow()
    breaker.record_success()
    for _ in range(3):
        breaker.record_failure()
    clock.now += 1
    assert breaker.allow() is True  # back to 1 s


def test_a_probe_that_never_reports_is_replaced() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 1
    assert breaker.allow() is True  # probe thread dies without reporting
    assert breaker.allow() is False
    clock.now += 1
    assert breaker.allow() is True


def test_late_failure_while_open_does_not_extend() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 0.9
    assert breaker.record_failure() is False  # a call let through before it opened
    clock.now += 0.1
    assert breaker.allow() is True


def test_disabled_breaker_never_opens() -> None:
    breaker = make_breaker(FakeClock(), enabled=False)
    for _ in range(100):
        assert breaker.record_failure() is False
    assert breaker.allow() is True
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be at least 1"),
        ({"failure_threshold": 1.5}, TypeError, "failure_threshold must be an int"),
        ({"failure_threshold": True}, TypeError, "failure_threshold must be an int"),
        ({"recovery_s": 0}, ValueError, "0 < recovery_s <= max_recovery_s"),
        ({"recovery_s": 5, "max_recovery_s": 1}, ValueError, "0 < recovery_s <= max_recovery_s"),
    ],
)
def test_bad_breaker_settings(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_breaker_is_thread_safe_under_contention() -> None:
    breaker = CircuitBreaker(failure_threshold=1000)
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(124):
            breaker.record_failure()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert breaker.state is BreakerState.CLOSED  # 992 < 1000: no lost or doubled counts
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_log_throttle_once_per_interval_counting_the_rest() -> None:
    clock = FakeClock()
    throttle = LogThrottle(30.0, clock)
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(5)] == [None] * 5
    clock.now += 29.9
    assert throttle.ready() is None
    clock.now += 0.1
    assert throttle.ready() == 6


def test_log_throttle_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_s must be positive"):
        LogThrottle(0)


def test_backlog_keeps_keys_and_replays_only_what_was_sent() -> None:
    backlog = InvalidationBacklog(max_keys=10)
    assert backlog.dirty is False
    backlog.add(("a", "b"))
    names, clear = backlog.pending()
    assert (names, clear) == (["a", "b"], False)
    backlog.add(("c",))  # arrives while the replay is in flight
    backlog.done(names, clear=clear)
    assert backlog.pending() == (["c"], False)
    assert backlog.dirty is True
    backlog.done(["c"], clear=False)
    assert backlog.dirty is False


def test_backlog_overflow_becomes_a_clear() -> None:
    backlog = InvalidationBacklog(max_keys=3)
    backlog.add(("a", "b"))
    backlog.add(("c", "d"))
    assert backlog.pending() == ([], True)
    backlog.done([], clear=True)
    assert backlog.dirty is False


def test_backlog_clear_supersedes_earlier_keys() -> None:
    backlog = InvalidationBacklog(max_keys=10)
    backlog.add(("a",))
    backlog.add((), clear=True)
    assert backlog.pending() == ([], True)


def test_stats_count_and_hand_over_pending_once() -> None:
    stats = CacheStats(flush_interval_s=3600)
    stats.incr("hits")
    stats.incr("hits")
    stats.incr("misses", 3)
    assert stats.snapshot()["hits"] == 2
    assert set(stats.snapshot()) == set(COUNTERS)
    assert stats.take_pending() == {"hits": 2, "misses": 3}
    assert stats.take_pending() == {}
    assert stats.snapshot()["hits"] == 2  # totals survive a flush


def test_stats_restore_after_failed_flush() -> None:
    stats = CacheStats(flush_interval_s=3600)
    stats.incr("fail_open")
    pending = stats.take_pending()
    stats.incr("fail_open")
    stats.restore_pending(pending)
    assert stats.take_pending() == {"fail_open": 2}


def test_stats_flush_due_after_interval() -> None:
    stats = CacheStats(flush_interval_s=3600)
    assert stats.flush_due() is False
    stats = CacheStats(flush_interval_s=1e-9)
    assert stats.flush_due() is True
    stats.take_pending()


def test_stats_unknown_counter_is_an_error() -> None:
    with pytest.raises(KeyError):
        CacheStats().incr("hitz")


def test_stats_bad_interval() -> None:
    with pytest.raises(ValueError, match="flush_interval_s must be positive"):
        CacheStats(flush_interval_s=0)


def test_stats_are_exact_under_threads() -> None:
    stats = CacheStats()
    threads = [threading.Thread(target=lambda: [stats.incr("hits") for _ in range(2000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.snapshot()["hits"] == 16_000
