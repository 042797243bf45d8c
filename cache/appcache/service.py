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
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from redis import Redis, RedisError

from cache import connections, keys
from cache.appcache.breaker import (
    DEFAULT_WARN_INTERVAL_S,
    CircuitBreaker,
    InvalidationBacklog,
    LogThrottle,
    default_breaker,
    default_cache_client,
)
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
    InvalidCacheArgumentType,
    as_bytes,
    check_key,
    check_namespace,
    check_ttl,
    decode_entry,
    new_token,
    should_refresh_early,
)
from cache.appcache.decorator import CachedFunction, KeySpec, P, R, check_key_spec
from cache.appcache.fill import LeasedFill
from cache.appcache.stats import (
    PROCESS_STATS,
    CacheStats,
    cache_counters,
    cache_stats,
    flush_cache_stats,
    flush_counters,
)
from cache.connections import Role
from cache.lua import LuaScript, script

log = logging.getLogger(__name__)

MAX_PENDING_INVALIDATIONS = 10_000  # more failed deletes than this are replayed as one clear()
UNLINK_BATCH = 500  # keys per UNLINK: bounds one command's argument list
LOCK_WAIT_MARGIN_S = 1.0  # waiters outlast the lease by this much, so they see it expire and take over

_DOWN: Final = Entry(None, 0.0, 0.0)  # marker: Redis could not be asked

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
        self.namespace = check_namespace(namespace)
        self.default_ttl_s = check_ttl("default_ttl_s", default_ttl_s)
        self.negative_ttl_s = check_ttl("negative_ttl_s", negative_ttl_s)
        self.stale_ttl_s = check_ttl("stale_ttl_s", stale_ttl_s, allow_zero=True)
        self.lock_ttl_s = check_ttl("lock_ttl_s", lock_ttl_s)
        self.lock_wait_s = (
            self.lock_ttl_s + LOCK_WAIT_MARGIN_S
            if lock_wait_s is None
            else check_ttl("lock_wait_s", lock_wait_s)
        )
        self._uses_settings = client is None
        self.client: Redis = default_cache_client() if client is None else client
        if breaker is None:
            breaker = default_breaker() if client is None else CircuitBreaker()
        self.breaker = breaker
        self.stats = PROCESS_STATS if stats is None else stats
        self._throttle = LogThrottle(warn_interval_s)
        self._corrupt_throttle = LogThrottle(warn_interval_s)
        self._clock = clock
        self._version_key = keys.cache_namespace_version(namespace)
        self._acquire: LuaScript = script(self.client, "cache_acquire")
        self._store: LuaScript = script(self.client, "cache_store")
        self._release_script: LuaScript = script(self.client, "cache_release")
        self._set: LuaScript = script(self.client, "cache_set")
        self._backlog = InvalidationBacklog(MAX_PENDING_INVALIDATIONS)

    def __repr__(self) -> str:
        return f"CacheService(namespace={self.namespace!r}, breaker={self.breaker.state.value})"

    # --- public API ----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh cached value of `key`, or `default` on a miss or while Redis is unavailable."""
        entry = self._read(keys.cache_entry(self.namespace, check_key(key)))
        if entry is _DOWN:
            return default
        if entry is None or entry is CORRUPT or self._clock() >= entry.soft_expiry:
            self.stats.incr("misses")
            return default
        self.stats.incr("hits")
        return entry.value

    def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store `value` for `ttl_s` seconds (jittered); voids a fetch of `key` in flight.

        Raises:
            CacheSerializationError: `value` is not JSON (raised even while Redis is down).
        """
        entry_key = keys.cache_entry(self.namespace, check_key(key))
        envelope, hard_ttl_ms = self._envelope(value, self._ttl(ttl_s), 0.0)
        lock_key = keys.cache_fill_lock(self.namespace, key)
        self._invalidate(
            lambda: self._set(
                keys=[self._version_key, entry_key, lock_key], args=[new_token(), envelope, hard_ttl_ms]
            ),
            (key,),  # if it fails, Redis may still hold the old value: delete that on replay
        )

    def delete(self, key: str) -> None:
        """Remove `key` and void a fetch of it in flight; replayed later if Redis is unavailable."""
        self.delete_many([key])

    def delete_many(self, keys_: Iterable[str]) -> None:
        """Remove several keys in one atomic step (they share the namespace's hash slot)."""
        names = [check_key(k) for k in keys_]
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
        if not callable(fetcher):
            raise InvalidCacheArgumentType(f"fetcher must be callable, got {type(fetcher).__name__}")
        entry_key = keys.cache_entry(self.namespace, check_key(key))
        entry = self._read(entry_key)
        if entry is _DOWN:
            return self._fetch_uncached(fetcher)
        if entry is None or entry is CORRUPT:
            self.stats.incr("misses")
            return self._fill(key, entry_key, fetcher, ttl_s, corrupt=entry is CORRUPT)
        now = self._clock()
        stale = now >= entry.soft_expiry
        if not stale and not should_refresh_early(
            now, entry.soft_expiry, entry.fetch_s, 1.0 - random.random()
        ):
            self.stats.incr("hits")
            return entry.value
        return self._refresh(key, entry_key, fetcher, ttl_s, entry, stale)

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

    # --- reads and fills -----------------------------------------------------------

    def _read(self, entry_key: str) -> Entry | None:
        if not self._ready():
            return _DOWN
        try:
            generation, raw = self.client.mget((self._version_key, entry_key))
        except RedisError as exc:
            self._failed(exc)
            return _DOWN
        self._succeeded()
        entry = decode_entry(as_bytes(generation), as_bytes(raw))
        if entry is CORRUPT:
            self.stats.incr("corrupt")
            if self._corrupt_throttle.ready() is not None:
                log.warning("cache entry %s cannot be decoded; the next get_or_set refetches it", entry_key)
        return entry

    def _ttl(self, ttl_s: float | None) -> float:
        return self.default_ttl_s if ttl_s is None else check_ttl("ttl_s", ttl_s)

    def _unlink(self, names: list[str]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for start in range(0, len(names), UNLINK_BATCH):
            batch = names[start : start + UNLINK_BATCH]
            pipe.unlink(*[keys.cache_entry(self.namespace, k) for k in batch])
            pipe.unlink(*[keys.cache_fill_lock(self.namespace, k) for k in batch])
        pipe.execute()

    # --- failure handling ----------------------------------------------------------

    def _ready(self) -> bool:
        """Whether to talk to Redis now: the breaker allows it and queued invalidations went out."""
        if not self.breaker.allow():
            self._fail_open(None)
            return False
        return not self._backlog.dirty or self._replay()

    def _succeeded(self) -> None:
        if self.breaker.record_success():
            log.info("cache Redis answers again; caching resumed (namespace %r)", self.namespace)
        if self.stats.flush_due():
            with contextlib.suppress(RedisError):  # the counts are kept for the next flush
                flush_counters(self.client, self.stats)

    def _failed(self, exc: RedisError) -> None:
        if self.breaker.record_failure():
            self.stats.incr("breaker_opens")
        self._fail_open(exc)

    def _fail_open(self, exc: RedisError | None) -> None:
        self.stats.incr("fail_open")
        held_back = self._throttle.ready()
        if held_back is None:
            return
        log.warning(
            "cache unavailable, serving uncached (namespace %r, breaker %s, %d more since last warning): %s",
            self.namespace,
            self.breaker.state.value,
            held_back,
            "circuit breaker open" if exc is None else self._describe(exc),
        )

    def _describe(self, exc: RedisError) -> str:
        """The failure for a log line; names CACHE_REDIS_URL when the client came from the settings."""
        translated = connections.translate_errors(Role.CACHE).translated(exc) if self._uses_settings else None
        return f"{type(exc).__name__}: {exc}" if translated is None else str(translated)

    def _invalidate(
        self, send: Callable[[], object], names: tuple[str, ...] = (), clear: bool = False
    ) -> None:
        """Send an invalidating write, or keep it for replay when Redis is unavailable."""
        if self._ready():
            try:
                send()
            except RedisError as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return
        self.stats.incr("invalidation_errors")
        self._backlog.add(names, clear=clear)

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
            except RedisError as exc:
                self._failed(exc)
                return False
            self._backlog.done(names, clear=clear)
        log.info(
            "cache: replayed %s of namespace %r",
            "a clear" if clear else f"{len(names)} deletes",
            self.namespace,
        )
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
    if ttl_s is not None:
        check_ttl("ttl_s", ttl_s)
    check_key_spec(key)
    check_namespace(namespace)

    def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
        return CachedFunction(lambda: default_service(namespace), func, ttl_s, key)

    return decorate
