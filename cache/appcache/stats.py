"""Cache counters: kept in memory on the hot path, summed across processes in one Redis hash.

A hit must not pay a second round trip for bookkeeping, so every process counts in
memory and adds its increments to the hash `keys.cache_counters()` at most once per
flush interval (piggybacked on a cache call) or on demand (`flush_counters`). The
status command, in another process, reads the hash.
"""

from __future__ import annotations

import os
import threading
import time

import redis

from cache import connections, keys
from cache.appcache.breaker import default_cache_client
from cache.connections import Role

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
DEFAULT_FLUSH_INTERVAL_S = 5.0  # cross-process counters lag by at most this, at one HINCRBY batch per 5 s


class CacheStats:
    """Thread-safe counters of one process: totals since start and increments not yet flushed."""

    def __init__(self, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s}")
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(COUNTERS, 0)
        self._pending = dict.fromkeys(COUNTERS, 0)
        self._next_flush_at = time.monotonic() + flush_interval_s

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._totals[name] += amount
            self._pending[name] += amount

    def snapshot(self) -> dict[str, int]:
        """This process's totals since start (or the last `reset`); no I/O."""
        with self._lock:
            return dict(self._totals)

    def flush_due(self) -> bool:
        return time.monotonic() >= self._next_flush_at

    def take_pending(self) -> dict[str, int]:
        """Hand over the unflushed increments (non-zero ones) and start a new interval."""
        with self._lock:
            pending = {name: n for name, n in self._pending.items() if n}
            self._pending = dict.fromkeys(COUNTERS, 0)
            self._next_flush_at = time.monotonic() + self.flush_interval_s
            return pending

    def restore_pending(self, pending: dict[str, int]) -> None:
        """Give back increments whose flush failed, so the next flush carries them."""
        with self._lock:
            for name, n in pending.items():
                self._pending[name] += n

    def reset(self) -> None:
        with self._lock:
            self._totals = dict.fromkeys(COUNTERS, 0)
            self._pending = dict.fromkeys(COUNTERS, 0)
            self._next_flush_at = time.monotonic() + self.flush_interval_s


PROCESS_STATS = CacheStats()
"""The counters every `CacheService` of this process shares unless given its own."""

# A forked child starts from zero: otherwise it would flush its parent's increments again.
os.register_at_fork(after_in_child=PROCESS_STATS.reset)


def flush_counters(client: redis.Redis, stats: CacheStats = PROCESS_STATS) -> None:
    """Add this process's unflushed increments to the shared hash in one round trip.

    Raises:
        redis.RedisError: Redis failed; the increments are kept for the next flush.
    """
    pending = stats.take_pending()
    if not pending:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for name, amount in pending.items():
            pipe.hincrby(keys.cache_counters(), name, amount)
        pipe.execute()
    except BaseException:
        stats.restore_pending(pending)
        raise


def read_counters(client: redis.Redis) -> dict[str, int]:
    """The totals of every process that flushed to this Redis, one entry per name in `COUNTERS`.

    Raises:
        redis.RedisError: Redis failed.
    """
    raw = client.hgetall(keys.cache_counters())
    values = {_text(name): int(value) for name, value in raw.items()}
    return {name: values.get(name, 0) for name in COUNTERS}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def cache_stats(client: redis.Redis | None = None) -> dict[str, int]:
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


def local_cache_stats() -> dict[str, int]:
    """This process's counters since start, without I/O (for per-process metrics)."""
    return PROCESS_STATS.snapshot()


def flush_cache_stats(client: redis.Redis | None = None) -> bool:
    """Push this process's unflushed counters now, e.g. at the end of a forked RQ job.

    Returns:
        `False` instead of raising when Redis is unavailable; the increments are kept.
    """
    try:
        flush_counters(client or default_cache_client())
    except redis.RedisError:
        return False
    return True
