"""Application cache on the CACHE Redis: cache-aside without stampedes, fail-open, namespaced.

An entry is `generation + JSON envelope` (see `cache_core`). A hit is one MGET of the
namespace generation and the entry; `clear()` replaces the generation, so every entry
of the old one stops matching at once, in every process, without touching any other
key. Entries live `stale_ttl_s` past their soft expiry so one caller can refresh while
the others keep getting the old value. On a cold miss one caller takes a lease (a lock
with a TTL) and fetches; the others poll for its value. The lease doubles as the write
permission, so an invalidation during a fetch voids the (possibly older) fetched value.
Redis failures never reach the caller: the fetcher's value is returned, a circuit
breaker stops paying timeouts, and invalidations that could not be sent are replayed
before the next read once Redis answers again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis

from cache.appcache.breaker import DEFAULT_WARN_INTERVAL_S, CircuitBreaker, default_cache_client
from cache.appcache.core import (
    CORRUPT,
    DEFAULT_LOCK_TTL_S,
    DEFAULT_NAMESPACE,
    DEFAULT_NEGATIVE_TTL_S,
    DEFAULT_STALE_TTL_S,
    DEFAULT_TTL_S,
    MISSING,
    CacheError,
    CacheSerializationError,
    Entry,
    check_ttl,
    new_token,
)
from cache.appcache.decorator import (
    CachedFunction,
    KeySpec,
    P,
    R,
    check_decorator_arguments,
    check_key_spec,
)
from cache.appcache.fill import LeasedFill
from cache.appcache.stats import (
    CacheStats,
    cache_counters,
    cache_stats,
    flush_cache_stats,
    flush_counters,
)
from cache.appcache.steps import DOWN
from cache.connections import REDIS_ERRORS
from cache.lua import LuaScript, script

__all__ = [
    "MISSING",
    "CacheError",
    "CacheSerializationError",
    "CacheService",
    "CachedFunction",
    "cache_counters",
    "cache_stats",
    "cached",
    "default_service",
    "flush_cache_stats",
]


class CacheService(LeasedFill):
    """Cache-aside over the CACHE Redis, one namespace per service.

    Values are JSON (orjson); every read returns the JSON round trip of what was stored,
    also on a miss and while Redis is down, so callers see the same types either way.
    `None` is cached like any value but for `negative_ttl_s` at most. TTLs are seconds.

    Args:
        client: client of the cache Redis; default `default_cache_client()` (fail-fast).
        namespace: letters, digits, `_.-`; `clear()` empties exactly this namespace.
        default_ttl_s: freshness of a value when a call gives no `ttl_s`.
        negative_ttl_s: freshness cap of a cached `None`.
        stale_ttl_s: how long past its TTL a value may still be served by `get_or_set`
            while one caller refreshes it (0 disables).
        lock_ttl_s: lease of the one caller that fetches a key; when it expires (crash,
            hang) another caller takes over.
        lock_wait_s: how long other callers wait for that fetch before fetching
            themselves, uncached (default `lock_ttl_s` + 1 s, so a hung fetch is taken
            over through the expired lease rather than bypassed).
        breaker: default: shared by all services on the default client, else a new one.
        stats: counters; default the process-wide ones that `cache_counters()` reports.
        warn_interval_s: at most one "cache unavailable" warning per interval.
        clock: epoch seconds for soft expiry (tests inject a fake clock).

    Raises:
        ValueError, TypeError: a namespace or duration of the wrong shape.
    """

    def __init__(
        self,
        client: Redis | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        default_ttl_s: float = DEFAULT_TTL_S,
        negative_ttl_s: float = DEFAULT_NEGATIVE_TTL_S,
        stale_ttl_s: float = DEFAULT_STALE_TTL_S,
        lock_ttl_s: float = DEFAULT_LOCK_TTL_S,
        lock_wait_s: float | None = None,
        breaker: CircuitBreaker | None = None,
        stats: CacheStats | None = None,
        warn_interval_s: float = DEFAULT_WARN_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            client_given=client is not None,
            namespace=namespace,
            default_ttl_s=default_ttl_s,
            negative_ttl_s=negative_ttl_s,
            stale_ttl_s=stale_ttl_s,
            lock_ttl_s=lock_ttl_s,
            lock_wait_s=lock_wait_s,
            breaker=breaker,
            stats=stats,
            warn_interval_s=warn_interval_s,
            clock=clock,
        )
        self.client: Redis = default_cache_client() if client is None else client
        self._acquire: LuaScript = script(self.client, "cache_acquire")
        self._store: LuaScript = script(self.client, "cache_store")
        self._release_script: LuaScript = script(self.client, "cache_release")
        self._set: LuaScript = script(self.client, "cache_set")

    # --- public API ----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh cached value of `key`, or `default` on a miss or while Redis is unavailable."""
        return self._got(self._read(self._entry_key(key)), default)

    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store `value` for `ttl_s` seconds (jittered); voids a fetch of `key` in flight.

        Raises:
            CacheSerializationError: `value` is not JSON (raised even while Redis is down).
        """
        script_keys, args = self._set_call(key, value, ttl_s)
        # If it fails, Redis may still hold the old value: delete that on replay.
        self._invalidate(lambda: self._set(keys=script_keys, args=args), (key,))

    def delete(self, key: str) -> None:
        """Remove `key` and void a fetch of it in flight; replayed later if Redis is unavailable."""
        self.delete_many([key])

    def delete_many(self, keys_: Iterable[str]) -> None:
        """Remove several keys in one atomic step (they share the namespace's hash slot)."""
        names = self._names(keys_)
        if names:
            self._invalidate(lambda: self._unlink(names), tuple(names))

    def clear(self) -> None:
        """Invalidate every entry of this namespace at once, and nothing else on the server.

        Replaces the namespace generation (O(1)); old entries are never read again and
        leave by TTL or LRU eviction. Replayed later if Redis is unavailable.
        """
        self._invalidate(lambda: self.client.set(self._version_key, new_token()), clear=True)

    def get_or_set(self, key: str, fetcher: Callable[[], Any], ttl_s: float | None = None) -> Any:
        """The cached value of `key`, else `fetcher()`, stored for `ttl_s` seconds.

        For one key at most one fetcher runs at a time across threads and processes;
        the others wait for its value, or get the stale value while it refreshes.
        While Redis is unavailable the fetcher's value is returned, uncached.

        Raises:
            CacheSerializationError: the fetched value is not JSON.
            Exception: whatever `fetcher` raises; nothing is cached then.
        """
        ttl_s = self._ttl(ttl_s)
        self._check_fetcher(fetcher)
        entry_key = self._entry_key(key)
        entry = self._read(entry_key)
        plan = self._plan(entry)
        if plan == "down":
            return self._fetch_uncached(fetcher)
        if plan == "fill":
            return self._fill(key, entry_key, fetcher, ttl_s, corrupt=entry is CORRUPT)
        assert entry is not None
        if plan == "hit":
            return entry.value
        return self._refresh(key, entry_key, fetcher, ttl_s, entry, plan == "stale")

    def cached(
        self, ttl_s: float | None = None, key: KeySpec | None = None
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Decorator: cache a function's results with `get_or_set`, one key per argument set.

        Args:
            ttl_s: freshness; default the service's `default_ttl_s`.
            key: a template such as `"user:{user_id}"` filled from the bound arguments,
                a callable taking the function's arguments, or `None` for
                `module.qualname:` + the JSON of the arguments (hashed when long).
        """
        if ttl_s is not None:
            check_ttl("ttl_s", ttl_s)
        check_key_spec(key)

        def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
            return CachedFunction(lambda: self, func, ttl_s, key)

        return decorate

    # --- I/O -------------------------------------------------------------------------

    def _read(self, entry_key: str) -> Entry | None:
        if not self._ready():
            return DOWN
        try:
            generation, raw = self.client.mget((self._version_key, entry_key))
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return DOWN
        self._succeeded()
        return self._decoded(entry_key, generation, raw)

    def _unlink(self, names: list[str]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for group in self._unlink_groups(names):
            pipe.unlink(*group)
        pipe.execute()

    def _ready(self) -> bool:
        """Whether to talk to Redis now: the breaker allows it and queued invalidations went out."""
        return self._allowed() and (not self._backlog.dirty or self._replay())

    def _succeeded(self) -> None:
        if self._recovered():
            with contextlib.suppress(*REDIS_ERRORS):  # the counts are kept for the next flush
                flush_counters(self.client, self.stats)

    def _invalidate(
        self, send: Callable[[], object], names: tuple[str, ...] = (), clear: bool = False
    ) -> None:
        """Send an invalidating write, or keep it for replay when Redis is unavailable."""
        if self._ready():
            try:
                send()
            except REDIS_ERRORS as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return
        self._queue(names, clear)

    def _replay(self) -> bool:
        """Send invalidations that failed earlier, before anything is read again."""
        with self._backlog.replaying:
            names, clear = self._backlog.pending()
            if not names and not clear:
                return True
            try:
                if clear:
                    self.client.set(self._version_key, new_token())
                else:
                    self._unlink(names)
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return False
            self._replayed(names, clear)
        return True


_services: dict[str, CacheService] = {}


def default_service(namespace: str = DEFAULT_NAMESPACE) -> CacheService:
    """The process's `CacheService(namespace=...)` on the default client, built on first use."""
    service = _services.get(namespace)
    if service is None or service.client is not default_cache_client():
        service = _services[namespace] = CacheService(namespace=namespace)
    return service


def cached(
    ttl_s: float | None = None, key: KeySpec | None = None, *, namespace: str = DEFAULT_NAMESPACE
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
    """`CacheService.cached` on `default_service(namespace)`, resolved at call time, not import time."""
    check_decorator_arguments(ttl_s, key, namespace)

    def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
        return CachedFunction(lambda: default_service(namespace), func, ttl_s, key)

    return decorate
