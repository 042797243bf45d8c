"""Stampede protection across threads and processes on a real CACHE Redis (marker `cache`)."""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest
import redis

from cache import keys
from cache.appcache.service import MISSING, CacheService
from cache.appcache.stats import CacheStats
from tests.integration.cache_fixtures import (
    ARRIVALS_KEY,
    ARRIVED_KEY,
    FETCH_COUNT_KEY,
    GO_KEY,
    PROJECT_ROOT,
    CountingFetcher,
    child_command,
    shared_fetcher,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.cache

THREADS = 50
PROCESSES = 2


def test_threads_and_processes_missing_one_key_fetch_once(
    primary: redis.Redis, cache_redis: redis.Redis
) -> None:
    children = [
        subprocess.Popen(
            child_command("stampede", "hot"),
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "ready", child.stderr.read() if child.stderr else line
        service = CacheService(namespace="stampede", lock_ttl_s=30, stats=CacheStats())
        go = threading.Event()
        results: list[Any] = []

        def call(i: int) -> None:
            go.wait(30)
            primary.incr(ARRIVED_KEY)
            results.append(service.get_or_set("hot", shared_fetcher(primary, f"thread-{i}")))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        primary.set(ARRIVALS_KEY, THREADS + PROCESSES)
        primary.set(GO_KEY, 1)
        go.set()
        for thread in threads:
            thread.join(60)
        outputs = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    values = results + [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert len(values) == THREADS + PROCESSES
    assert primary.get(FETCH_COUNT_KEY) == b"1"
    assert all(v == values[0] for v in values), values
    counts = service.stats.snapshot()
    assert counts["fetches"] <= 1
    assert counts["lock_waits"] >= THREADS - 1  # they really did arrive while the fetch ran


def test_a_fetcher_that_raises_does_not_poison_the_key(cache_redis: redis.Redis) -> None:
    service = CacheService(cache_redis, namespace="poison", stats=CacheStats())
    failing = CountingFetcher(error=RuntimeError("database unavailable"), block=True)
    good = CountingFetcher("good")
    errors: list[BaseException] = []
    results: list[Any] = []

    def first() -> None:
        try:
            service.get_or_set("k", failing)
        except RuntimeError as exc:
            errors.append(exc)

    leader = threading.Thread(target=first)
    leader.start()
    assert failing.started.wait(10)
    waiters = [
        threading.Thread(target=lambda: results.append(service.get_or_set("k", good))) for _ in range(10)
    ]
    for thread in waiters:
        thread.start()
    wait_until(lambda: service.stats.snapshot()["lock_waits"] == 10, 10, "ten waiters on the fill lock")
    failing.release.set()
    for thread in [leader, *waiters]:
        thread.join(30)
    assert [str(e) for e in errors] == ["database unavailable"]
    assert results == ["good"] * 10
    assert good.calls == 1  # one waiter took over, the others got its value
    assert service.get("k") == "good"


def test_a_fetcher_that_raises_alone_leaves_no_lease(cache_redis: redis.Redis) -> None:
    service = CacheService(cache_redis, namespace="poison", stats=CacheStats())
    with pytest.raises(ZeroDivisionError):
        service.get_or_set("k", lambda: 1 / 0)
    assert cache_redis.exists(keys.cache_fill_lock("poison", "k")) == 0
    assert service.get("k", MISSING) is MISSING
    assert service.get_or_set("k", lambda: "ok") == "ok"
    assert service.stats.snapshot()["lock_waits"] == 0


def test_a_fetcher_hanging_past_the_lease_is_taken_over(cache_redis: redis.Redis) -> None:
    service = CacheService(cache_redis, namespace="hang", lock_ttl_s=0.5, stats=CacheStats())
    hung = CountingFetcher("late", block=True)
    late: list[Any] = []
    thread = threading.Thread(target=lambda: late.append(service.get_or_set("k", hung)))
    thread.start()
    assert hung.started.wait(10)
    rescuer = CountingFetcher("rescued")
    assert service.get_or_set("k", rescuer) == "rescued"
    assert rescuer.calls == 1
    hung.release.set()
    thread.join(10)
    assert late == ["late"]  # the hung caller still gets its own value...
    assert service.get("k") == "rescued"  # ...but cannot overwrite the newer one
    counts = service.stats.snapshot()
    assert (counts["lock_waits"], counts["lock_timeouts"]) == (1, 0)


def test_the_lease_of_a_crashed_fetcher_expires_by_itself(cache_redis: redis.Redis) -> None:
    service = CacheService(cache_redis, namespace="crash", lock_ttl_s=5, stats=CacheStats())
    # What a process killed in the middle of a fetch leaves behind: a lease with a TTL.
    cache_redis.set(keys.cache_fill_lock("crash", "k"), "token-of-a-dead-process", px=300)
    fetcher = CountingFetcher("after-crash")
    assert service.get_or_set("k", fetcher) == "after-crash"
    assert fetcher.calls == 1
    assert service.stats.snapshot()["lock_waits"] == 1


def test_a_waiter_gives_up_after_lock_wait_and_fetches_uncached(cache_redis: redis.Redis) -> None:
    service = CacheService(cache_redis, namespace="slow", lock_ttl_s=30, lock_wait_s=0.2, stats=CacheStats())
    cache_redis.set(keys.cache_fill_lock("slow", "k"), "someone-slow", px=30_000)
    fetcher = CountingFetcher("impatient")
    assert service.get_or_set("k", fetcher) == "impatient"
    assert service.stats.snapshot()["lock_timeouts"] == 1
    assert service.get("k", MISSING) is MISSING  # without the lease it must not write
