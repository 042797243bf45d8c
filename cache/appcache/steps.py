"""The I/O-free steps of `CacheService` and its asyncio twin `AsyncCacheService`.

Everything a cache call decides (argument checks, what a read means, whether to fill,
wait or refresh, the arguments of every script, the breaker, counters, backlog and
logs) is here, once; the two shells only send the commands and sleep or await in
between. Each step that follows a Redis reply takes that reply as an argument.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, cast

import orjson

from cache import connections, keys
from cache.appcache.breaker import (
    DEFAULT_WARN_INTERVAL_S,
    CircuitBreaker,
    InvalidationBacklog,
    LogThrottle,
    default_breaker,
)
from cache.appcache.core import (
    CORRUPT,
    DEFAULT_LOCK_TTL_S,
    DEFAULT_NAMESPACE,
    DEFAULT_NEGATIVE_TTL_S,
    DEFAULT_STALE_TTL_S,
    DEFAULT_TTL_S,
    MISSING,
    Entry,
    InvalidCacheArgumentType,
    as_bytes,
    check_key,
    check_namespace,
    check_ttl,
    decode_entry,
    encode_envelope,
    jittered_ttl,
    new_token,
    poll_delay,
    should_refresh_early,
)
from cache.appcache.stats import PROCESS_STATS, CacheStats
from cache.connections import Role

log = logging.getLogger("cache.appcache.service")  # one logger for both twins

MAX_PENDING_INVALIDATIONS = 10_000  # more failed deletes than this are replayed as one clear()
UNLINK_BATCH = 500  # keys per UNLINK: bounds one command's argument list
LOCK_WAIT_MARGIN_S = 1.0  # waiters outlast the lease by this much, so they see it expire and take over

DOWN: Final = Entry(None, 0.0, 0.0)  # marker: Redis could not be asked

ScriptCall = tuple[list[str], list[Any]]  # KEYS and ARGV of one script call


class FillState:
    """One cold-miss fill's progress: the lease mode, the wait's deadline, the poll count."""

    __slots__ = ("attempt", "deadline", "mode")

    def __init__(self, *, corrupt: bool) -> None:
        self.mode = "always" if corrupt else "missing"
        self.deadline: float | None = None
        self.attempt = 0


class CacheCore:
    """Settings, state and decisions of a cache service; arguments as `CacheService`'s.

    Args:
        client_given: the caller passed its own client (else the defaults from the
            settings, whose breaker is shared by every service on them).
    """

    def __init__(
        self,
        *,
        client_given: bool,
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
        self._uses_settings = not client_given
        if breaker is None:
            breaker = CircuitBreaker() if client_given else default_breaker()
        self.breaker = breaker
        self.stats = PROCESS_STATS if stats is None else stats
        self._throttle = LogThrottle(warn_interval_s)
        self._corrupt_throttle = LogThrottle(warn_interval_s)
        self._clock = clock
        self._version_key = keys.cache_namespace_version(namespace)
        self._backlog = InvalidationBacklog(MAX_PENDING_INVALIDATIONS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r}, breaker={self.breaker.state.value})"

    # --- arguments -----------------------------------------------------------------

    def _ttl(self, ttl_s: float | None) -> float:
        return self.default_ttl_s if ttl_s is None else check_ttl("ttl_s", ttl_s)

    def _entry_key(self, key: str) -> str:
        return keys.cache_entry(self.namespace, check_key(key))

    def _lock_key(self, key: str) -> str:
        return keys.cache_fill_lock(self.namespace, key)

    @staticmethod
    def _check_fetcher(fetcher: object) -> None:
        if not callable(fetcher):
            raise InvalidCacheArgumentType(f"fetcher must be callable, got {type(fetcher).__name__}")

    def _set_call(self, key: str, value: Any, ttl_s: float | None) -> ScriptCall:
        """`cache_set.lua`'s KEYS and ARGV; checks the key and encodes the value before any I/O."""
        entry_key = self._entry_key(key)
        envelope, hard_ttl_ms = self._envelope(value, self._ttl(ttl_s), 0.0)
        return [self._version_key, entry_key, self._lock_key(key)], [new_token(), envelope, hard_ttl_ms]

    def _unlink_groups(self, names: list[str]) -> Iterator[list[str]]:
        """The key lists of the UNLINKs that delete `names`: entries and their leases, in batches."""
        for start in range(0, len(names), UNLINK_BATCH):
            batch = names[start : start + UNLINK_BATCH]
            yield [keys.cache_entry(self.namespace, k) for k in batch]
            yield [keys.cache_fill_lock(self.namespace, k) for k in batch]

    @staticmethod
    def _names(keys_: Iterable[str]) -> list[str]:
        return [check_key(k) for k in keys_]

    # --- what a read means ---------------------------------------------------------

    def _decoded(self, entry_key: str, generation: Any, raw: Any) -> Entry | None:
        entry = decode_entry(as_bytes(generation), as_bytes(raw))
        if entry is CORRUPT:
            self.stats.incr("corrupt")
            if self._corrupt_throttle.ready() is not None:
                log.warning("cache entry %s cannot be decoded; the next get_or_set refetches it", entry_key)
        return entry

    def _got(self, entry: Entry | None, default: Any) -> Any:
        """`get`'s answer for what the read found."""
        if entry is DOWN:
            return default
        if entry is None or entry is CORRUPT or self._clock() >= entry.soft_expiry:
            self.stats.incr("misses")
            return default
        self.stats.incr("hits")
        return entry.value

    def _plan(self, entry: Entry | None) -> str:
        """`get_or_set`'s next step: `down`, `fill`, `hit`, `stale` or `early` (refresh)."""
        if entry is DOWN:
            return "down"
        if entry is None or entry is CORRUPT:
            self.stats.incr("misses")
            return "fill"
        now = self._clock()
        if now >= entry.soft_expiry:
            return "stale"
        if should_refresh_early(now, entry.soft_expiry, entry.fetch_s, 1.0 - random.random()):
            return "early"
        self.stats.incr("hits")
        return "hit"

    # --- fills -----------------------------------------------------------------------

    def _lease_call(self, entry_key: str, lock_key: str, token: str, mode: str) -> ScriptCall:
        """`cache_acquire.lua`'s KEYS and ARGV."""
        return [self._version_key, entry_key, lock_key], [
            new_token(),
            token,
            math.ceil(self.lock_ttl_s * 1000),
            mode,
        ]

    @staticmethod
    def _leased(reply: Any) -> tuple[bytes, bytes | None, bool]:
        generation, raw, taken = reply
        return cast(bytes, as_bytes(generation)), as_bytes(raw or None), bool(taken)

    def _waited(self, state: FillState, generation: bytes, raw: bytes | None) -> tuple[Any, float | None]:
        """After a lease held by another caller: `(value, None)` once its value is there,
        `(MISSING, delay)` to look again after `delay`, `(MISSING, None)` when the wait is over."""
        entry = decode_entry(generation, raw)
        if entry is CORRUPT:
            state.mode = "always"
        elif entry is not None:
            return entry.value, None
        now = time.monotonic()
        if state.deadline is None:
            self.stats.incr("lock_waits")
            state.deadline = now + self.lock_wait_s
        elif now >= state.deadline:
            self.stats.incr("lock_timeouts")
            return MISSING, None
        delay = min(poll_delay(state.attempt, random.random()), max(state.deadline - now, 0.0))
        state.attempt += 1
        return MISSING, delay

    def _refresh_step(
        self, entry: Entry, stale: bool, generation: bytes, raw: bytes | None, taken: bool
    ) -> tuple[str, Any]:
        """After the refresh's lease: `("serve", value)`, `("release", value)` (someone
        refreshed meanwhile: give the lease back, use theirs) or `("fetch", None)`."""
        if not taken:
            self.stats.incr("stale_hits" if stale else "hits")
            return "serve", entry.value
        current = decode_entry(generation, raw)
        if current is not None and current is not CORRUPT and current.soft_expiry != entry.soft_expiry:
            self.stats.incr("hits")
            return "release", current.value
        self.stats.incr("misses")
        if not stale:
            self.stats.incr("early_refreshes")
        return "fetch", None

    def _envelope(self, value: Any, ttl_s: float, fetch_s: float) -> tuple[bytes, int]:
        if value is None:
            ttl_s = min(ttl_s, self.negative_ttl_s)
        soft_ttl_s = jittered_ttl(ttl_s, random.random())
        envelope = encode_envelope(value, self._clock() + soft_ttl_s, fetch_s)
        return envelope, max(1, math.ceil((soft_ttl_s + self.stale_ttl_s) * 1000))

    @staticmethod
    def _store_call(
        entry_key: str, lock_key: str, token: str, generation: bytes, envelope: bytes, hard_ttl_ms: int
    ) -> ScriptCall:
        """`cache_store.lua`'s KEYS and ARGV."""
        return [lock_key, entry_key], [token, generation + envelope, hard_ttl_ms]

    @staticmethod
    def _stored(entry_key: str, written: object) -> None:
        if not written:
            log.debug("cache fill of %s dropped: invalidated or taken over meanwhile", entry_key)

    @staticmethod
    def _value_of(envelope: bytes) -> Any:
        """What a caller gets: the JSON round trip of the value, as a hit would return it."""
        return orjson.loads(envelope)["v"]

    def _uncached(self, value: Any) -> Any:
        return self._value_of(encode_envelope(value, 0.0, 0.0))

    # --- failure handling ----------------------------------------------------------

    def _allowed(self) -> bool:
        """Whether the breaker lets this call talk to Redis (else it fails open, counted)."""
        if self.breaker.allow():
            return True
        self._fail_open(None)
        return False

    def _recovered(self) -> bool:
        """A Redis call succeeded; whether the counters' flush is due now."""
        if self.breaker.record_success():
            log.info("cache Redis answers again; caching resumed (namespace %r)", self.namespace)
        return self.stats.flush_due()

    def _failed(self, exc: Exception) -> None:
        if self.breaker.record_failure():
            self.stats.incr("breaker_opens")
        self._fail_open(exc)

    def _fail_open(self, exc: Exception | None) -> None:
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

    def _describe(self, exc: Exception) -> str:
        """The failure for a log line; names CACHE_REDIS_URL when the client came from the settings."""
        translated = connections.translate_errors(Role.CACHE).translated(exc) if self._uses_settings else None
        return f"{type(exc).__name__}: {exc}" if translated is None else str(translated)

    def _queue(self, names: tuple[str, ...], clear: bool) -> None:
        """An invalidation that could not be sent: kept for replay before the next read."""
        self.stats.incr("invalidation_errors")
        self._backlog.add(names, clear=clear)

    def _replayed(self, names: list[str], clear: bool) -> None:
        self._backlog.done(names, clear=clear)
        log.info(
            "cache: replayed %s of namespace %r",
            "a clear" if clear else f"{len(names)} deletes",
            self.namespace,
        )
