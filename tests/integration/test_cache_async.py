"""The asyncio cache against real redis-servers: the sync cache's behaviour, keys and fail-open policy."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from cache import AsyncCacheService, keys
from cache.appcache import steps as cache_steps
from cache.appcache.async_service import async_cached, default_async_service
from cache.appcache.breaker import BreakerState, CircuitBreaker
from cache.appcache.core import MISSING, CacheSerializationError
from cache.appcache.service import CacheService
from cache.appcache.stats import CacheStats, read_counters
from cache.connections import Role, build_async_client
from cache.settings import get_settings, reset_settings
from tests.integration.cache_fixtures import FakeClock
from workers.dev.servers import CACHE_CONF, RedisServer

pytestmark = pytest.mark.cache
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)


class MonotonicClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[AsyncCacheService], Awaitable[Any]], **kwargs: Any) -> Any:
    """`body(service)` in a fresh event loop, on a CACHE client from the settings, closed after."""

    async def main() -> Any:
        client = build_async_client(Role.CACHE, get_settings(), decode_responses=False)
        # A cluster client reads its slot map on first use; outside the 1 s call bound, so a
        # loaded machine's slow start is not a cache outage, and concurrent first commands on a
        # cold redis-py 8.1 async cluster client meet unconnected connections (AttributeError).
        await client.initialize()
        service = AsyncCacheService(client, **kwargs)
        try:
            return await body(service)
        finally:
            await service.client.aclose()

    return asyncio.run(main())


def run_default(body: Callable[[AsyncCacheService], Awaitable[Any]], **kwargs: Any) -> Any:
    """`body(service)` on the default fail-fast client (from CACHE_REDIS_URL)."""

    async def main() -> Any:
        service = AsyncCacheService(**kwargs)
        try:
            return await body(service)
        finally:
            await service.client.aclose()

    return asyncio.run(main())


def test_miss_hit_json_round_trips_delete_and_async_or_plain_fetchers(cache_redis: redis.Redis) -> None:
    async def fetch_async() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"t": (1, 2)}

    async def body(service: AsyncCacheService) -> None:
        assert await service.get("k", MISSING) is MISSING
        await service.set("k", {"a": (1, 2)})
        assert await service.get("k") == {"a": [1, 2]}
        assert await service.get_or_set("f", fetch_async) == {"t": [1, 2]}  # a miss returns the round trip
        assert await service.get_or_set("f", lambda: "never") == {"t": [1, 2]}
        assert await service.get_or_set("p", lambda: "plain") == "plain"
        await service.delete_many(["k", "f"])
        assert await service.get("k", MISSING) is MISSING and await service.get("f", MISSING) is MISSING
        assert await service.get("p") == "plain"
        await service.delete("p")
        assert await service.get("p", MISSING) is MISSING

    run(body, namespace="t", stats=CacheStats())


def test_sync_and_async_leave_the_same_redis_state_and_counts(
    cache_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Dice:
        @staticmethod
        def random() -> float:
            return 0.5

    monkeypatch.setattr(cache_steps, "random", Dice)  # the same jitter for both
    clock = FakeClock(1_800_000_000.0)

    def sync_calls(s: CacheService) -> list[Any]:
        out = [s.get("a", "d"), s.set("a", {"x": 1}, ttl_s=50), s.get("a"), s.get_or_set("b", lambda: [1])]
        out += [s.get_or_set("b", lambda: "no"), s.get_or_set("n", lambda: None), s.get("n", "d")]
        out += [s.delete_many(["a", "zz"]), s.set("c", 3), s.get("a", "d")]
        return out

    async def async_calls(s: AsyncCacheService) -> list[Any]:
        out = [await s.get("a", "d"), await s.set("a", {"x": 1}, ttl_s=50), await s.get("a")]
        out += [await s.get_or_set("b", lambda: [1]), await s.get_or_set("b", lambda: "no")]
        out += [await s.get_or_set("n", lambda: None), await s.get("n", "d")]
        out += [await s.delete_many(["a", "zz"]), await s.set("c", 3), await s.get("a", "d")]
        return out

    def state() -> dict[bytes, tuple[Any, Any, bool]]:
        """Each entry's value, soft expiry and whether it expires (the generation and the
        measured fetch time differ by nature)."""
        generation = cache_redis.get(keys.cache_namespace_version("same"))
        assert generation is not None
        found = sorted(cache_redis.scan_iter(match="*same*"))
        entries = {}
        for key in found:
            if key != keys.cache_namespace_version("same").encode():
                envelope = orjson.loads((cache_redis.get(key) or b"").removeprefix(generation))
                entries[key] = (envelope["v"], envelope["e"], cache_redis.pttl(key) > 0)
        return entries

    sync_stats, async_stats = CacheStats(), CacheStats()
    expected = sync_calls(CacheService(cache_redis, namespace="same", stats=sync_stats, clock=clock))
    sync_state = state()
    cache_redis.flushall()
    assert run(async_calls, namespace="same", stats=async_stats, clock=clock) == expected
    assert state() == sync_state
    assert sorted(sync_state) == sorted(keys.cache_entry("same", k).encode() for k in ("b", "c", "n"))
    assert async_stats.snapshot() == sync_stats.snapshot()


def test_decorator_one_entry_per_argument_set_the_sync_keys_and_methods(cache_redis: redis.Redis) -> None:
    calls: list[tuple[int, str]] = []

    async def body(service: AsyncCacheService) -> None:
        @service.cached(ttl_s=60)
        async def lookup(item_id: int, lang: str = "en") -> dict[str, Any]:
            calls.append((item_id, lang))
            return {"id": item_id, "lang": lang}

        class Repo:
            @service.cached(ttl_s=60, key="repo:item:{item_id}")
            async def item(self, item_id: int) -> int:
                calls.append((item_id, "repo"))
                return item_id * 10

        assert await lookup(1) == await lookup(item_id=1, lang="en") == {"id": 1, "lang": "en"}
        assert await lookup(1, "fr") == {"id": 1, "lang": "fr"}
        await lookup.invalidate(1)
        await lookup(1)
        assert calls == [(1, "en"), (1, "fr"), (1, "en")]
        sync = CacheService(cache_redis, namespace="deco")
        assert sync.get(lookup.key_for(1, "fr")) == {"id": 1, "lang": "fr"}  # the sync service reads it
        repo = Repo()
        assert await repo.item(3) == await repo.item(3) == 30
        assert sync.get("repo:item:3") == 30
        await repo.item.invalidate(3)
        assert sync.get("repo:item:3", MISSING) is MISSING

    run(body, namespace="deco")


def test_async_cached_uses_one_default_service_per_loop_built_at_call_time(cache_redis: redis.Redis) -> None:
    calls: list[int] = []

    @async_cached(ttl_s=60, key="module:item:{item_id}", namespace="deco-default")
    async def item(item_id: int) -> int:  # decorated outside any loop: nothing built yet
        calls.append(item_id)
        return item_id * 2

    async def twice() -> tuple[AsyncCacheService, AsyncCacheService]:
        assert await item(4) == await item(4) == 8
        first, again = default_async_service("deco-default"), default_async_service("deco-default")
        await first.client.aclose()
        return first, again

    first, again = asyncio.run(twice())
    assert first is again and calls == [4]
    assert CacheService(cache_redis, namespace="deco-default").get("module:item:4") == 8
    second, _ = asyncio.run(twice())  # a new loop gets its own service (and client)
    assert second is not first and second.client is not first.client and calls == [4]
    reset_settings()
    assert asyncio.run(twice())[0] is not second  # re-read settings: rebuilt
    with pytest.raises(RuntimeError):
        default_async_service()  # no running loop: refused, never a client for the wrong loop
    with pytest.raises(ValueError, match="ttl_s"):
        async_cached(ttl_s=-1)


def test_clear_empties_one_namespace_only(cache_redis: redis.Redis) -> None:
    async def body(service: AsyncCacheService) -> None:
        other = AsyncCacheService(service.client, namespace="other")
        await service.set("k", 1)
        await other.set("k", 2)
        await service.clear()
        assert await service.get("k", MISSING) is MISSING
        assert await other.get("k") == 2

    run(body, namespace="mine")


def test_concurrent_misses_fetch_once_and_an_invalidation_voids_the_fill(cache_redis: redis.Redis) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def slow() -> str:
        calls.append("fetch")
        await release.wait()
        return "value"

    async def body(service: AsyncCacheService) -> None:
        tasks = [asyncio.create_task(service.get_or_set("k", slow)) for _ in range(20)]
        while not calls:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # the others are polling for the one fetch
        release.set()
        assert await asyncio.gather(*tasks) == ["value"] * 20
        assert calls == ["fetch"]
        assert service.stats.snapshot()["lock_waits"] == 19

        release.clear()
        calls.clear()
        await service.delete("k")
        fill = asyncio.create_task(service.get_or_set("k", slow))
        while not calls:
            await asyncio.sleep(0.001)
        await service.set("k", "explicit")  # the database changed while the fetch ran
        release.set()
        assert await fill == "value"  # the caller still gets its value...
        assert await service.get("k") == "explicit"  # ...but the older value was not stored

    run(body, namespace="stampede", stats=CacheStats())


def test_fetcher_errors_and_unserializable_values_cache_nothing(cache_redis: redis.Redis) -> None:
    async def body(service: AsyncCacheService) -> None:
        with pytest.raises(KeyError):
            await service.get_or_set("k", lambda: {}["missing"])
        assert await service.get_or_set("k", lambda: "next") == "next"  # the lease was released
        with pytest.raises(CacheSerializationError):
            await service.set("s", {1, 2})
        with pytest.raises(CacheSerializationError):
            await service.get_or_set("s", lambda: object())
        assert await service.get("s", MISSING) is MISSING

    run(body, namespace="errors", lock_wait_s=0.5)


def test_corrupt_entry_is_refetched(cache_redis: redis.Redis) -> None:
    async def body(service: AsyncCacheService) -> None:
        await service.set("k", "good")
        generation = cache_redis.get(keys.cache_namespace_version("test"))
        assert generation is not None
        cache_redis.set(keys.cache_entry("test", "k"), generation + b"{not json")
        assert await service.get("k", MISSING) is MISSING
        assert await service.get_or_set("k", lambda: "fixed") == "fixed"
        assert await service.get("k") == "fixed"
        assert service.stats.snapshot()["corrupt"] >= 2

    run(body, namespace="test", stats=CacheStats())


def test_counters_flush_to_the_shared_hash(cache_redis: redis.Redis) -> None:
    async def body(service: AsyncCacheService) -> None:
        await service.set("k", 1)
        assert await service.get("k") == 1
        await service.delete("k")  # the next call that reaches Redis flushes the hit

    run(body, namespace="counted", stats=CacheStats(flush_interval_s=1e-9))
    assert read_counters(cache_redis)["hits"] == 1


# --- Redis down -----------------------------------------------------------------------------


@pytest.fixture
def private_cache(
    redis_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisServer]:
    """A cache server of its own that keeps its data over a SIGKILL (a network cut), in the settings."""
    server = redis_factory(CACHE_CONF, "--appendonly", "yes", "--appendfsync", "always", name="cache")
    for name in ("REDIS_PASSWORD", "REDIS_SENTINELS", "REDIS_CALL_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("CACHE_REDIS_URL", server.url)
    reset_settings()
    yield server
    reset_settings()


def test_cache_down_fails_open_breaker_opens_then_replays_and_resumes(
    private_cache: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = MonotonicClock()
    breaker = CircuitBreaker(failure_threshold=3, recovery_s=1.0, monotonic=clock)
    fetches: list[int] = []

    def fetch() -> dict[str, int]:
        fetches.append(1)
        return {"v": 1}

    async def body(service: AsyncCacheService) -> None:
        assert await service.get_or_set("k", fetch) == {"v": 1}
        await service.set("old", "stale")
        private_cache.kill()
        with caplog.at_level(logging.WARNING, logger="cache.appcache.service"):
            for _ in range(3):
                assert await service.get_or_set("k", fetch) == {"v": 1}  # fetched, not raised
            assert breaker.state is BreakerState.OPEN
            for _ in range(5):
                assert await service.get("k", MISSING) is MISSING
                await service.delete("old")  # queued for replay
            with pytest.raises(CacheSerializationError):
                await service.set("k", {1, 2})
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        assert "CACHE_REDIS_URL" in caplog.records[0].getMessage()
        private_cache.start()  # back with its data: "old" is still there
        clock.now += 1.0
        assert await service.get("old", MISSING) is MISSING  # the delete went out before the read
        assert breaker.state is BreakerState.CLOSED
        assert await service.get_or_set("k", fetch) == {"v": 1}

    run_default(body, namespace="down", breaker=breaker, stats=(stats := CacheStats()))
    assert len(fetches) == 1 + 3
    counts = stats.snapshot()
    assert counts["breaker_opens"] == 1
    assert counts["fail_open"] == 3 + 5 * 2
    assert counts["invalidation_errors"] == 5


def test_a_stalled_redis_times_out_quickly_and_fails_open(private_cache: RedisServer) -> None:
    assert private_cache.process is not None
    pid = private_cache.process.pid

    async def body(service: AsyncCacheService) -> None:
        await service.set("k", "cached")
        os.kill(pid, signal.SIGSTOP)  # alive but answering nothing: a slow Redis
        try:
            assert await service.get_or_set("k", lambda: "fetched") == "fetched"
            assert await service.get("k", "default") == "default"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await service.get("k") == "cached"  # and it is used again once it answers

    stats = CacheStats()
    run_default(body, namespace="stall", stats=stats, breaker=CircuitBreaker(failure_threshold=5))
    assert stats.snapshot()["fail_open"] == 2
