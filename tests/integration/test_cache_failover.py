"""The cache fails open: Redis stopped, stalled or restarted never breaks the caller (marker `cache`)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cache import keys
from cache.appcache.breaker import BreakerState, CircuitBreaker
from cache.appcache.service import (
    MISSING,
    CacheSerializationError,
    CacheService,
    cache_counters,
    flush_cache_stats,
)
from cache.appcache.stats import PROCESS_STATS, CacheStats
from cache.errors import RedisUnavailable
from cache.settings import reset_settings
from tests.integration.cache_fixtures import CountingFetcher
from workers.dev.servers import CACHE_CONF, RedisServer

pytestmark = pytest.mark.cache

Factory = Callable[..., RedisServer]


class MonotonicClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ConnectionSpy:
    """Counts every time the client takes a connection from its pool: one per command."""

    def __init__(self, service: CacheService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        pool = service.client.connection_pool
        original = pool.get_connection

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counting)


def _point_cache_at(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """CacheService(redis=None) builds its fail-fast client from CACHE_REDIS_URL."""
    for name in ("REDIS_PASSWORD", "REDIS_SENTINELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("CACHE_REDIS_URL", server.url)
    reset_settings()


@pytest.fixture
def private_cache(redis_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    server = redis_factory(CACHE_CONF, name="cache")
    _point_cache_at(server, monkeypatch)
    yield server
    reset_settings()


@pytest.fixture
def durable_cache(redis_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A cache server that keeps its data over a SIGKILL: a network cut rather than a restart."""
    server = redis_factory(CACHE_CONF, "--appendonly", "yes", "--appendfsync", "always", name="cache")
    _point_cache_at(server, monkeypatch)
    yield server
    reset_settings()


def test_cache_down_fails_open_breaker_opens_then_caching_resumes(
    private_cache: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = MonotonicClock()
    breaker = CircuitBreaker(failure_threshold=3, recovery_s=1.0, monotonic=clock)
    service = CacheService(namespace="fo", breaker=breaker, stats=CacheStats())
    fetcher = CountingFetcher({"v": 1})
    assert service.get_or_set("k", fetcher) == {"v": 1}
    private_cache.kill()
    spy = ConnectionSpy(service, monkeypatch)

    with caplog.at_level(logging.WARNING, logger="cache.appcache.service"):
        for _ in range(3):
            assert service.get_or_set("k", fetcher) == {"v": 1}  # fetched, not raised
        assert breaker.state is BreakerState.OPEN
        reached = spy.count
        assert reached >= 3
        for _ in range(20):
            assert service.get_or_set("k", fetcher) == {"v": 1}
            assert service.get("k", MISSING) is MISSING
            service.set("k", {"v": 2})
            service.delete("k")
        assert spy.count == reached  # while open, nothing reaches Redis: no timeout is paid

    assert fetcher.calls == 1 + 3 + 20
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "CACHE_REDIS_URL" in warnings[0].getMessage()
    counts = service.stats.snapshot()
    assert counts["breaker_opens"] == 1
    assert counts["fail_open"] == 3 + 20 * 4
    assert counts["invalidation_errors"] == 40

    private_cache.start()  # same port, empty: the cache keeps nothing on disk
    clock.now += 1.0  # the breaker lets one probe through
    assert service.get_or_set("k", fetcher) == {"v": 1}
    assert breaker.state is BreakerState.CLOSED
    calls = fetcher.calls
    assert service.get_or_set("k", fetcher) == {"v": 1}
    assert fetcher.calls == calls  # cached again, without restarting the caller


def test_probe_against_a_still_dead_redis_reopens(private_cache: RedisServer) -> None:
    clock = MonotonicClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_s=1.0, monotonic=clock)
    service = CacheService(namespace="fo", breaker=breaker, stats=CacheStats())
    private_cache.kill()
    assert service.get_or_set("k", lambda: 1) == 1
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.0
    assert service.get_or_set("k", lambda: 2) == 2  # the probe fails...
    assert breaker.state is BreakerState.OPEN  # ...and the breaker waits longer
    clock.now += 1.0
    assert breaker.allow() is False


def test_programming_errors_raise_even_while_redis_is_down(private_cache: RedisServer) -> None:
    breaker = CircuitBreaker(failure_threshold=1, monotonic=MonotonicClock())
    service = CacheService(namespace="fo", breaker=breaker, stats=CacheStats())
    private_cache.kill()
    service.get("k")
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CacheSerializationError):
        service.set("k", {1, 2})
    with pytest.raises(CacheSerializationError):
        service.get_or_set("k", lambda: object())
    with pytest.raises(KeyError):
        service.get_or_set("k", lambda: {}["missing"])


def test_a_delete_lost_during_an_outage_is_replayed_before_the_next_read(
    durable_cache: RedisServer,
) -> None:
    clock = MonotonicClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_s=1.0, monotonic=clock)
    service = CacheService(namespace="replay", breaker=breaker, stats=CacheStats())
    service.set("user:1", {"name": "old"})
    service.set("user:2", {"name": "kept"})
    durable_cache.kill()
    service.delete("user:1")  # the database changed; Redis cannot hear about it
    assert service.stats.snapshot()["invalidation_errors"] == 1
    durable_cache.start()  # comes back with its data, like after a network cut
    assert durable_cache.client().exists(keys.cache_entry("replay", "user:1")) == 1
    clock.now += 1.0
    assert service.get("user:1", MISSING) is MISSING  # not the stale {"name": "old"}
    assert service.get("user:2") == {"name": "kept"}
    assert durable_cache.client().exists(keys.cache_entry("replay", "user:1")) == 0


def test_a_clear_lost_during_an_outage_is_replayed(durable_cache: RedisServer) -> None:
    clock = MonotonicClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_s=1.0, monotonic=clock)
    service = CacheService(namespace="replay", breaker=breaker, stats=CacheStats())
    service.set("a", 1)
    durable_cache.kill()
    service.clear()
    durable_cache.start()
    clock.now += 1.0
    assert service.get("a", MISSING) is MISSING


def test_a_stalled_redis_times_out_quickly_and_fails_open(private_cache: RedisServer) -> None:
    service = CacheService(namespace="stall", stats=CacheStats(), breaker=CircuitBreaker(failure_threshold=5))
    service.set("k", "cached")
    assert private_cache.process is not None
    pid = private_cache.process.pid
    os.kill(pid, signal.SIGSTOP)  # alive but answering nothing: a slow Redis
    try:
        assert service.get_or_set("k", lambda: "fetched") == "fetched"
        assert service.get("k", "default") == "default"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert service.stats.snapshot()["fail_open"] == 2
    assert service.get("k") == "cached"  # and it is used again once it answers


def test_cache_stats_names_the_setting_when_the_cache_is_down(private_cache: RedisServer) -> None:
    private_cache.kill()
    with pytest.raises(RedisUnavailable, match="CACHE_REDIS_URL"):
        cache_counters()
    PROCESS_STATS.incr("hits")
    assert flush_cache_stats() is False  # best effort: never raises...
    assert PROCESS_STATS.take_pending().get("hits", 0) >= 1  # ...and keeps the increments
