"""CacheService on a real CACHE redis-server: hits, expiry, None, decorator, clear (marker `cache`)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

import pytest
import redis
import rq

from cache import keys
from cache.appcache import steps as cache_steps
from cache.appcache.service import (
    MISSING,
    CacheSerializationError,
    CacheService,
    cache_counters,
    cached,
    default_service,
    flush_cache_stats,
)
from cache.appcache.stats import CacheStats, flush_counters, read_counters
from tests.integration.cache_fixtures import PROJECT_ROOT, CountingFetcher, FakeClock

pytestmark = pytest.mark.cache
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def service(cache_redis: redis.Redis, clock: FakeClock) -> CacheService:
    return CacheService(cache_redis, namespace="test", stats=CacheStats(), clock=clock)


def test_miss_then_hit(service: CacheService) -> None:
    assert service.get("k") is None
    assert service.get("k", MISSING) is MISSING
    service.set("k", {"a": [1, 2]})
    assert service.get("k") == {"a": [1, 2]}
    counts = service.stats.snapshot()
    assert (counts["misses"], counts["hits"]) == (2, 1)


def test_get_or_set_fetches_once_then_serves_from_cache(service: CacheService) -> None:
    fetcher = CountingFetcher({"n": 1})
    assert service.get_or_set("k", fetcher, ttl_s=60) == {"n": 1}
    assert service.get_or_set("k", fetcher, ttl_s=60) == {"n": 1}
    assert fetcher.calls == 1
    counts = service.stats.snapshot()
    assert (counts["misses"], counts["hits"], counts["fetches"]) == (1, 1, 1)


def test_values_are_json_round_trips_on_miss_and_hit(service: CacheService) -> None:
    miss = service.get_or_set("k", lambda: {"t": (1, 2)})
    hit = service.get_or_set("k", lambda: {"t": (1, 2)})
    assert miss == hit == {"t": [1, 2]}


def test_expiry_by_ttl(service: CacheService, clock: FakeClock) -> None:
    service.set("k", "v", ttl_s=10)
    clock.advance(8.9)  # jitter shortens by at most 10%
    assert service.get("k") == "v"
    clock.advance(1.2)
    assert service.get("k", MISSING) is MISSING
    fetcher = CountingFetcher("new")
    assert service.get_or_set("k", fetcher, ttl_s=10) == "new"
    assert fetcher.calls == 1


def test_redis_drops_the_entry_after_the_stale_window(
    cache_redis: redis.Redis, service: CacheService
) -> None:
    service.set("k", "v", ttl_s=10)
    pttl = cache_redis.pttl(keys.cache_entry("test", "k"))
    assert 9_000 + service.stale_ttl_s * 1000 <= pttl <= 10_000 + service.stale_ttl_s * 1000


def test_ttls_of_keys_written_together_are_jittered(cache_redis: redis.Redis) -> None:
    service = CacheService(cache_redis, namespace="jit", stale_ttl_s=0, stats=CacheStats())
    for i in range(20):
        service.set(f"k{i}", i, ttl_s=1000)
    ttls = [cache_redis.pttl(keys.cache_entry("jit", f"k{i}")) for i in range(20)]
    assert all(900_000 <= t <= 1_000_000 for t in ttls)
    assert len(set(ttls)) > 10


def test_none_is_cached_with_the_shorter_negative_ttl(
    cache_redis: redis.Redis, service: CacheService, clock: FakeClock
) -> None:
    fetcher = CountingFetcher(None)
    assert service.get_or_set("absent", fetcher, ttl_s=3600) is None
    assert service.get_or_set("absent", fetcher, ttl_s=3600) is None
    assert fetcher.calls == 1
    assert service.get("absent", MISSING) is None
    pttl = cache_redis.pttl(keys.cache_entry("test", "absent"))
    assert pttl <= (service.negative_ttl_s + service.stale_ttl_s) * 1000
    clock.advance(service.negative_ttl_s + 1)
    assert service.get("absent", MISSING) is MISSING


def test_delete(service: CacheService) -> None:
    service.set("k", 1)
    service.delete("k")
    assert service.get("k", MISSING) is MISSING
    service.delete("never-there")  # no error


def test_delete_many_is_one_step(service: CacheService) -> None:
    for name in ("a", "b", "c"):
        service.set(name, name)
    service.delete_many(["a", "b"])
    assert [service.get(n, MISSING) for n in ("a", "b", "c")] == [MISSING, MISSING, "c"]
    service.delete_many([])


def test_decorator_one_entry_per_argument_set(service: CacheService) -> None:
    calls: list[tuple[int, str]] = []

    @service.cached(ttl_s=60)
    def lookup(item_id: int, lang: str = "en") -> dict[str, Any]:
        calls.append((item_id, lang))
        return {"id": item_id, "lang": lang}

    assert lookup(1) == {"id": 1, "lang": "en"}
    assert lookup(1) == {"id": 1, "lang": "en"}
    assert lookup(item_id=1, lang="en") == {"id": 1, "lang": "en"}
    assert lookup(2) == {"id": 2, "lang": "en"}
    assert lookup(1, "fr") == {"id": 1, "lang": "fr"}
    assert calls == [(1, "en"), (2, "en"), (1, "fr")]
    lookup.invalidate(1)
    lookup(1)
    assert calls[-1] == (1, "en")
    assert len(calls) == 4
    assert service.get(lookup.key_for(2)) == {"id": 2, "lang": "en"}


def test_decorator_with_key_template_and_on_methods(service: CacheService) -> None:
    class Repo:
        def __init__(self) -> None:
            self.calls = 0

        @service.cached(ttl_s=60, key="repo:item:{item_id}")
        def item(self, item_id: int) -> int:
            self.calls += 1
            return item_id * 10

    repo = Repo()
    assert repo.item(3) == repo.item(3) == 30
    assert repo.calls == 1
    assert service.get("repo:item:3") == 30
    repo.item.invalidate(3)
    assert repo.item(3) == 30
    assert repo.calls == 2


def test_module_level_decorator_uses_the_default_service(redis_env: dict[str, str]) -> None:
    calls = []

    @cached(ttl_s=60, namespace="mod")
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert square(4) == square(4) == 16
    assert calls == [4]
    assert default_service("mod").get(square.key_for(4)) == 16


def test_clear_empties_one_namespace_only(cache_redis: redis.Redis) -> None:
    users = CacheService(cache_redis, namespace="users", stats=CacheStats())
    reports = CacheService(cache_redis, namespace="reports", stats=CacheStats())
    queue = rq.Queue("email", connection=cache_redis)
    job = queue.enqueue("builtins.len", [1, 2, 3])
    cache_redis.set("someone:else", "keep me")
    users.set("u1", {"name": "Ada"})
    reports.set("r1", {"rows": 3})
    others_before = _dump(cache_redis, exclude="kx:cache:{users}")

    users.clear()

    assert users.get("u1", MISSING) is MISSING
    assert reports.get("r1") == {"rows": 3}
    assert _dump(cache_redis, exclude="kx:cache:{users}") == others_before
    assert cache_redis.get("someone:else") == b"keep me"
    assert job.id in queue.get_job_ids()
    assert rq.job.Job.fetch(job.id, connection=cache_redis).func_name == "builtins.len"
    users.set("u1", {"name": "Grace"})  # the namespace keeps working after a clear
    assert users.get("u1") == {"name": "Grace"}


def _dump(client: redis.Redis, exclude: str) -> dict[bytes, Any]:
    """Every key outside `exclude` with its type and content, to prove nothing else changed."""
    snapshot: dict[bytes, Any] = {}
    for name in client.scan_iter(count=1000):
        if name.decode().startswith(exclude):
            continue
        snapshot[name] = (client.type(name), client.dump(name))
    assert snapshot, "the snapshot must not be empty"
    return snapshot


def test_unserializable_value_raises_and_caches_nothing(service: CacheService) -> None:
    with pytest.raises(CacheSerializationError, match="not JSON-serializable"):
        service.set("k", {1, 2, 3})
    with pytest.raises(CacheSerializationError):
        service.get_or_set("k", lambda: object())
    assert service.get("k", MISSING) is MISSING
    fetcher = CountingFetcher("ok")
    assert service.get_or_set("k", fetcher) == "ok"  # the lease was released: no waiting
    assert service.stats.snapshot()["lock_waits"] == 0


def test_corrupt_entry_is_refetched(cache_redis: redis.Redis, service: CacheService) -> None:
    service.set("k", "good")
    generation = cache_redis.get(keys.cache_namespace_version("test"))
    assert generation is not None
    cache_redis.set(keys.cache_entry("test", "k"), generation + b"{not json")
    assert service.get("k", MISSING) is MISSING
    assert service.get_or_set("k", lambda: "fixed") == "fixed"
    assert service.get("k") == "fixed"
    assert service.stats.snapshot()["corrupt"] >= 2


def test_entry_of_a_foreign_type_fails_open(cache_redis: redis.Redis, service: CacheService) -> None:
    cache_redis.hset(keys.cache_entry("test", "k"), "x", "1")  # someone wrote a hash at our key
    assert service.get_or_set("k", lambda: "value") == "value"


def test_stale_value_served_while_one_caller_refreshes(service: CacheService, clock: FakeClock) -> None:
    service.get_or_set("k", lambda: "old", ttl_s=10)
    clock.advance(11)  # past the TTL, inside the stale window
    refresher = CountingFetcher("new", block=True)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(service.get_or_set("k", refresher, ttl_s=10)))
    thread.start()
    assert refresher.started.wait(10)
    bystander = CountingFetcher("other")
    assert service.get_or_set("k", bystander, ttl_s=10) == "old"  # no waiting, no second fetch
    assert bystander.calls == 0
    refresher.release.set()
    thread.join(10)
    assert result == ["new"]
    assert service.get("k") == "new"
    assert service.stats.snapshot()["stale_hits"] == 1


def test_fast_value_is_not_refreshed_early_even_on_eager_dice(
    service: CacheService, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.get_or_set("k", lambda: "v1", ttl_s=100)
    clock.advance(100 * 0.9 - 1)  # a second before the earliest possible expiry

    class EagerDice:
        @staticmethod
        def random() -> float:
            return 0.999999  # u = 1e-6: the largest gap XFetch will ever draw here

    monkeypatch.setattr(cache_steps, "random", EagerDice)
    fetcher = CountingFetcher("v2")
    assert service.get_or_set("k", fetcher, ttl_s=100) == "v1"  # the fetch took microseconds
    assert fetcher.calls == 0


def test_early_refresh_refetches_a_slow_value(service: CacheService, clock: FakeClock) -> None:
    service.set("k", "v1", ttl_s=100)
    # A fetch that took 1000 s: XFetch refreshes it long before it expires.
    raw = service.client.get(keys.cache_entry("test", "k"))
    assert raw is not None
    service.client.set(keys.cache_entry("test", "k"), raw.replace(b'"f":0.0', b'"f":1000.0'))
    fetcher = CountingFetcher("v2")
    values = {service.get_or_set("k", fetcher, ttl_s=100) for _ in range(20)}
    assert "v2" in values
    assert fetcher.calls == 1
    assert service.stats.snapshot()["early_refreshes"] == 1


@pytest.mark.parametrize(
    ("invalidate", "expected"),
    [(lambda s: s.delete("k"), MISSING), (lambda s: s.set("k", "explicit"), "explicit")],
    ids=["delete", "set"],
)
def test_invalidation_voids_a_fill_in_flight(service: CacheService, invalidate: Any, expected: Any) -> None:
    fetcher = CountingFetcher("read-before-the-update", block=True)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(service.get_or_set("k", fetcher)))
    thread.start()
    assert fetcher.started.wait(10)
    invalidate(service)
    fetcher.release.set()
    thread.join(10)
    assert result == ["read-before-the-update"]  # the caller still gets its value...
    assert service.get("k", MISSING) == expected  # ...but the older value was not stored


def test_counters_flush_to_redis_and_read_from_another_process(redis_env: dict[str, str]) -> None:
    service = default_service("stats")
    service.get("a")
    service.get_or_set("a", lambda: 1)
    service.get_or_set("a", lambda: 1)
    assert flush_cache_stats() is True
    script = (
        "from cache.appcache.service import default_service, flush_cache_stats\n"
        "s = default_service('stats')\n"
        "[s.get_or_set('a', lambda: 1) for _ in range(5)]\n"
        "assert flush_cache_stats()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=PROJECT_ROOT, timeout=60)
    totals = cache_counters()
    assert totals["hits"] >= 6  # 1 here + 5 in the child
    assert totals["misses"] >= 2
    assert totals["fetches"] >= 1


def test_flush_counters_sums_increments(cache_redis: redis.Redis) -> None:
    stats = CacheStats(flush_interval_s=3600)
    stats.incr("hits", 3)
    flush_counters(cache_redis, stats)
    stats.incr("hits", 2)
    stats.incr("lock_waits")
    flush_counters(cache_redis, stats)
    flush_counters(cache_redis, stats)  # nothing pending: no change
    counts = read_counters(cache_redis)
    assert counts["hits"] == 5
    assert counts["lock_waits"] == 1
    assert counts["fail_open"] == 0


def test_flush_failure_keeps_the_increments() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.1)
    stats = CacheStats(flush_interval_s=3600)
    stats.incr("misses", 4)
    with pytest.raises(redis.ConnectionError):
        flush_counters(dead, stats)
    assert stats.take_pending() == {"misses": 4}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"namespace": "has space"}, ValueError, "namespace must be"),
        ({"namespace": "{tag}"}, ValueError, "namespace must be"),
        ({"default_ttl_s": 0}, ValueError, "default_ttl_s must be greater than 0"),
        ({"default_ttl_s": "1h"}, TypeError, "default_ttl_s must be a number of seconds"),
        ({"negative_ttl_s": -1}, ValueError, "negative_ttl_s must be greater than 0"),
        ({"stale_ttl_s": -1}, ValueError, "stale_ttl_s must be at least 0"),
        ({"lock_ttl_s": 0}, ValueError, "lock_ttl_s must be greater than 0"),
        ({"lock_wait_s": float("nan")}, ValueError, "lock_wait_s must be"),
        ({"warn_interval_s": 0}, ValueError, "interval_s must be positive"),
    ],
)
def test_bad_constructor_arguments(
    cache_redis: redis.Redis, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CacheService(cache_redis, **kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: s.get(""), ValueError, "1 to 1024 characters"),
        (lambda s: s.get(None), TypeError, "cache key must be a str"),
        (lambda s: s.set("k", 1, ttl_s=-1), ValueError, "ttl_s must be greater than 0"),
        (lambda s: s.set("k", 1, ttl_s=True), TypeError, "ttl_s must be a number of seconds"),
        (lambda s: s.get_or_set("k", "not callable"), TypeError, "fetcher must be callable"),
        (lambda s: s.get_or_set("k", lambda: 1, ttl_s=0), ValueError, "ttl_s must be greater than 0"),
        (lambda s: s.delete("k" * 2000), ValueError, "1 to 1024 characters"),
        (lambda s: s.delete_many(["ok", 3]), TypeError, "cache key must be a str"),
        (lambda s: s.cached(key=3), TypeError, "key must be a template string or a callable"),
    ],
)
def test_bad_call_arguments_touch_nothing(
    cache_redis: redis.Redis, service: CacheService, call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(service)
    assert cache_redis.dbsize() == 0


def test_no_warning_logged_while_healthy(service: CacheService, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cache.appcache.service"):
        service.get_or_set("k", lambda: 1)
        service.get("k")
    assert caplog.records == []
