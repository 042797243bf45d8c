"""Cache counters: kept in memory on the hot path, summed across processes in one Redis hash.

A hit must not pay a second round trip for bookkeeping, so every process counts in
memory and adds its increments to the hash `keys.cache_counters()` at most once per
flush interval (piggybacked on a cache call) or on demand (`flush_counters`). The
status command, in another process, reads the hash.
"""

from __future__ import annotations

import redis
import redis.asyncio

from cache import connections, keys
from cache.appcache.breaker import default_cache_client
from cache.connections import REDIS_ERRORS, Role
from cache.counters import BufferedCounters
from cache.text import as_text

COUNTERS = (
    "hits",  # a fresh value was served from Redis
    "stale_hits",  # an expired value was served while another caller refreshes it
    "misses",  # nothing usable in Redis
    "fetches",  # the fetcher ran (misses, refreshes and fail-open calls)
    "early_refreshes",  # a fresh value was refetched early (probabilistic refresh)
    "lock_waits",  # a caller waited for another caller's fetch of the same key
    "lock_timeouts",  # ... and gave up waiting and fetched without caching
    "fail_open",  # a call served without the cache because Redis failed or the breaker was open
    "breaker_opens",  # the circuit breaker opened
    "invalidation_errors",  # a delete/clear could not reach Redis (queued for replay)
    "corrupt",  # an entry that could not be decoded (overwritten by the next fetch)
)
_NAMES = frozenset(COUNTERS)
DEFAULT_FLUSH_INTERVAL_S = 5.0  # cross-process counters lag by at most this, at one HINCRBY batch per 5 s


class CacheStats(BufferedCounters[str, int]):
    """Thread-safe counters of one process, one per name in `COUNTERS`: totals since start
    and increments not yet flushed."""

    def __init__(self, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s}")
        super().__init__(flush_interval_s)

    def incr(self, key: str, amount: int = 1) -> None:
        """Raises KeyError for a name not in `COUNTERS` (a typo would otherwise count silently)."""
        if key not in _NAMES:
            raise KeyError(key)
        super().incr(key, amount)

    def snapshot(self) -> dict[str, int]:
        """This process's totals since start (or the last `reset`), every name present; no I/O."""
        totals = self.totals()
        return {name: totals.get(name, 0) for name in COUNTERS}


PROCESS_STATS = CacheStats()
"""The counters every `CacheService` of this process shares unless given its own."""

PROCESS_STATS.reset_in_forked_children()


def flush_counters(client: redis.Redis, stats: CacheStats = PROCESS_STATS) -> None:
    """Add this process's unflushed increments to the shared hash in one round trip.

    Raises:
        redis.RedisError: Redis failed; the increments are kept for the next flush.
    """

    def write(pending: dict[str, int]) -> None:
        pipe = client.pipeline(transaction=False)
        for name, amount in pending.items():
            pipe.hincrby(keys.cache_counters(), name, amount)
        pipe.execute()

    stats.flush(write)


async def flush_counters_async(client: redis.asyncio.Redis, stats: CacheStats = PROCESS_STATS) -> None:
    """`flush_counters` on an asyncio client: the same hash, fields and protocol.

    Raises:
        redis.RedisError: Redis failed; the increments are kept for the next flush.
    """

    async def write(pending: dict[str, int]) -> None:
        pipe = client.pipeline(transaction=False)
        for name, amount in pending.items():
            pipe.hincrby(keys.cache_counters(), name, amount)
        await pipe.execute()

    await stats.flush_async(write)


def read_counters(client: redis.Redis) -> dict[str, int]:
    """The totals of every process that flushed to this Redis, one entry per name in `COUNTERS`.

    Raises:
        redis.RedisError: Redis failed.
    """
    raw = client.hgetall(keys.cache_counters())
    values = {as_text(name): int(value) for name, value in raw.items()}
    return {name: values.get(name, 0) for name in COUNTERS}


def cache_counters(client: redis.Redis | None = None) -> dict[str, int]:
    """Counters summed over every process using this cache Redis (this process's flushed first).

    What the status command and metrics read. Other processes' increments show up
    within their flush interval.

    Raises:
        RedisUnavailable: the cache Redis cannot be reached; the message names CACHE_REDIS_URL.
    """
    client = client or default_cache_client()
    with connections.translate_errors(Role.CACHE):
        flush_counters(client)
        return read_counters(client)


def cache_stats() -> dict[str, int]:
    """This process's counters since start, without I/O (for per-process metrics)."""
    return PROCESS_STATS.snapshot()


def flush_cache_stats(client: redis.Redis | None = None) -> bool:
    """Push this process's unflushed counters now, e.g. at the end of a forked RQ job.

    Returns:
        `False` instead of raising when Redis is unavailable; the increments are kept.
    """
    try:
        flush_counters(client or default_cache_client())
    except REDIS_ERRORS:
        return False
    return True
