"""CacheService against raw redis-py on the same CACHE redis-server.

`python -m bench cache`. Starts its own CACHE redis-servers (the shipped
redis-cache.conf) in a temporary directory and measures, in one run:

- `get_or_set` hit latency vs `GET` + `json.loads` of the same document through the
  same client (target ratio <= 1.3). Interleaved batches; the reported latencies and
  ratio are medians over the batches, so a noisy neighbour hurts both sides alike.
- fetcher calls when 100 threads miss one key at once (target 1), against naive
  cache-aside (`get`, fetch on a miss, `set`) measured the same way.
- p99 latency of `get_or_set` while the cache Redis is down (killed), with the
  circuit breaker vs the same call with the breaker disabled (target p99 < 5 ms).

Rows whose goal is absolute (calls, milliseconds) carry it as `target_max`.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from cache.appcache.breaker import CircuitBreaker, fail_fast_settings
from cache.appcache.service import CacheService
from cache.appcache.stats import CacheStats
from cache.connections import Role, build_client
from cache.settings import Settings
from workers.dev.servers import CACHE_CONF, RedisServer

BENCH = "cache"
HIT_BATCH = 300  # calls per timed batch and side
HIT_ROUNDS = 40  # batches per side, interleaved
HIT_MAX_S = 20.0  # bound on the whole hit measurement
HIT_TARGET_RATIO = 1.3
STAMPEDE_THREADS = 100
STAMPEDE_FETCH_S = 0.05  # a typical slow-ish query
DOWN_CALLS = 2_000  # with the breaker
DOWN_CALLS_NO_BREAKER = 200  # each may pay a connect and a retry backoff
DOWN_MAX_S = 15.0
DOWN_TARGET_P99_MS = 5.0

# A user row as CachedDatabase caches it (~250 bytes of JSON).
DOCUMENT = {
    "id": 123456,
    "company_id": 42,
    "email": "ada.lovelace@example.com",
    "name": "Ada Lovelace",
    "status": "active",
    "created_at": "2024-05-01T12:00:00+00:00",
    "last_login_at": "2024-06-30T08:15:42.123456+00:00",
    "roles": ["admin", "billing"],
}


def _row(metric: str, value: float, unit: str, baseline: float, better: str, **extra: Any) -> dict[str, Any]:
    return {
        "bench": BENCH,
        "metric": metric,
        "value": float(f"{value:.4g}"),
        "unit": unit,
        "baseline": float(f"{baseline:.4g}"),
        "ratio": float(f"{value / baseline:.3g}") if baseline else None,
        "better": better,
        **extra,
    }


def _client(server: RedisServer) -> redis.Redis:
    url = server.url
    return build_client(
        Role.CACHE, fail_fast_settings(Settings.from_env({"REDIS_URL": url, "CACHE_REDIS_URL": url}))
    )


def _batch_us(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(HIT_BATCH):
        step()
    return (time.perf_counter() - start) / HIT_BATCH * 1e6


def hit_latency(client: redis.Redis) -> dict[str, Any]:
    service = CacheService(client, namespace="bench", stats=CacheStats())
    service.set("user", DOCUMENT, ttl_s=3600)
    client.set("raw:user", json.dumps(DOCUMENT))
    assert service.get_or_set("user", lambda: None) == json.loads(client.get("raw:user") or b"")

    def cached() -> Any:
        return service.get_or_set("user", lambda: DOCUMENT, 3600)

    def raw() -> Any:
        return json.loads(client.get("raw:user") or b"")

    for _ in range(3):  # warm-up: connections, caches, branch predictors
        _batch_us(cached)
        _batch_us(raw)
    ours: list[float] = []
    theirs: list[float] = []
    ratios: list[float] = []
    deadline = time.monotonic() + HIT_MAX_S
    for _ in range(HIT_ROUNDS):
        if time.monotonic() > deadline:
            break
        baseline = _batch_us(raw)
        value = _batch_us(cached)
        theirs.append(baseline)
        ours.append(value)
        ratios.append(value / baseline)
    row = _row(
        "get_or_set_hit_latency",
        statistics.median(ours),
        "us",
        statistics.median(theirs),
        "lower",
        target=HIT_TARGET_RATIO,
        batches=len(ours),
    )
    row["ratio"] = float(f"{statistics.median(ratios):.3g}")  # median of paired batches: robust to drift
    return row


def _stampede(call: Callable[[Callable[[], Any]], Any]) -> int:
    calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(STAMPEDE_THREADS)

    def fetch() -> Any:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(STAMPEDE_FETCH_S)
        return DOCUMENT

    def worker() -> None:
        barrier.wait(30)
        call(fetch)

    threads = [threading.Thread(target=worker) for _ in range(STAMPEDE_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return calls


def stampede(client: redis.Redis) -> dict[str, Any]:
    service = CacheService(client, namespace="stampede", stats=CacheStats())
    protected = _stampede(lambda fetch: service.get_or_set("hot", fetch, 60))
    naive_key = "naive:hot"

    def naive(fetch: Callable[[], Any]) -> Any:
        raw = client.get(naive_key)
        if raw is not None:
            return json.loads(raw)
        value = fetch()
        client.set(naive_key, json.dumps(value), ex=60)
        return value

    unprotected = _stampede(naive)
    return _row(
        "fetcher_calls_100_concurrent_misses",
        protected,
        "calls",
        unprotected,
        "lower",
        target_max=1,
        baseline_is="naive cache-aside (GET, fetch, SET)",
    )


def _p99_ms(service: CacheService, calls: int) -> tuple[float, int]:
    samples: list[float] = []
    deadline = time.monotonic() + DOWN_MAX_S
    for i in range(calls):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        service.get_or_set(f"k{i % 10}", lambda: DOCUMENT, 60)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return samples[min(len(samples) - 1, int(0.99 * len(samples)))], len(samples)


def redis_down(server: RedisServer) -> dict[str, Any]:
    with_breaker = CacheService(_client(server), namespace="down", stats=CacheStats())
    without = CacheService(
        _client(server), namespace="down", stats=CacheStats(), breaker=CircuitBreaker(enabled=False)
    )
    for service in (with_breaker, without):
        service.get_or_set("k0", lambda: DOCUMENT, 60)  # pooled connections exist, as in production
    server.kill()
    quiet = logging.getLogger("cache.appcache.service")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the "cache unavailable" warnings are expected here
    try:
        value, n = _p99_ms(with_breaker, DOWN_CALLS)
        baseline, n_baseline = _p99_ms(without, DOWN_CALLS_NO_BREAKER)
    finally:
        quiet.setLevel(level)
    return _row(
        "get_or_set_p99_cache_down",
        value,
        "ms",
        baseline,
        "lower",
        target_max=DOWN_TARGET_P99_MS,
        calls=n,
        baseline_calls=n_baseline,
        baseline_is="same call, breaker disabled",
    )


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kx-bench-cache-") as tmp:
        server = RedisServer(CACHE_CONF, Path(tmp) / "cache").start()
        doomed = RedisServer(CACHE_CONF, Path(tmp) / "doomed").start()
        try:
            client = _client(server)
            rows = [hit_latency(client), stampede(client), redis_down(doomed)]
            client.close()
            return rows
        finally:
            doomed.kill()
            server.stop()
