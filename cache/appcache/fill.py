"""The stampede-proof fill of `CacheService`: one caller per key fetches under a lease.

On a cold miss one caller takes a lease (a lock with a TTL, `cache_acquire.lua`) and
fetches; the others poll for its value until `lock_wait_s`, then fetch uncached. A
stale or early-refreshed entry is refetched by the caller that wins the lease while
the others keep the value they have. The lease is also the write permission
(`cache_store.lua`), so an invalidation during a fetch voids the fetched value.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from redis import RedisError

from cache import keys
from cache.appcache.core import (
    CORRUPT,
    Entry,
    as_bytes,
    decode_entry,
    encode_envelope,
    jittered_ttl,
    new_token,
    poll_delay,
)
from cache.appcache.stats import CacheStats
from cache.lua import LuaScript

log = logging.getLogger("cache.appcache.service")  # one logger for the whole service


class LeasedFill:
    """Mixed into `CacheService`: its fill path; the service holds the state named here."""

    namespace: str
    stats: CacheStats
    negative_ttl_s: float
    stale_ttl_s: float
    lock_ttl_s: float
    lock_wait_s: float
    _clock: Callable[[], float]
    _version_key: str
    _acquire: LuaScript
    _store: LuaScript
    _release_script: LuaScript

    def _succeeded(self) -> None:
        raise NotImplementedError

    def _failed(self, exc: RedisError) -> None:
        raise NotImplementedError

    def _lease(
        self, entry_key: str, lock_key: str, token: str, mode: str
    ) -> tuple[bytes, bytes | None, bool]:
        generation, raw, taken = self._acquire(
            keys=[self._version_key, entry_key, lock_key],
            args=[new_token(), token, math.ceil(self.lock_ttl_s * 1000), mode],
        )
        return cast(bytes, as_bytes(generation)), as_bytes(raw or None), bool(taken)

    def _fill(
        self, key: str, entry_key: str, fetcher: Callable[[], Any], ttl_s: float, *, corrupt: bool
    ) -> Any:
        """Cold miss: take the lease and fetch, or wait for the caller who holds it."""
        lock_key = keys.cache_fill_lock(self.namespace, key)
        token = new_token()
        mode = "always" if corrupt else "missing"
        deadline: float | None = None
        for attempt in range(1_000_000):  # bounded by the deadline long before
            try:
                generation, raw, taken = self._lease(entry_key, lock_key, token, mode)
            except RedisError as exc:
                self._failed(exc)
                return self._fetch_uncached(fetcher)
            self._succeeded()
            if taken:
                return self._fetch_and_store(entry_key, lock_key, token, generation, fetcher, ttl_s)
            entry = decode_entry(generation, raw)
            if entry is CORRUPT:
                mode = "always"
            elif entry is not None:
                return entry.value
            now = time.monotonic()
            if deadline is None:
                self.stats.incr("lock_waits")
                deadline = now + self.lock_wait_s
            elif now >= deadline:
                self.stats.incr("lock_timeouts")
                return self._fetch_uncached(fetcher)
            time.sleep(min(poll_delay(attempt, random.random()), max(deadline - now, 0.0)))
        return self._fetch_uncached(fetcher)

    def _refresh(
        self, key: str, entry_key: str, fetcher: Callable[[], Any], ttl_s: float, entry: Entry, stale: bool
    ) -> Any:
        """Stale or chosen for early refresh: refetch if nobody else is, else serve what we have."""
        lock_key = keys.cache_fill_lock(self.namespace, key)
        token = new_token()
        try:
            generation, raw, taken = self._lease(entry_key, lock_key, token, "always")
        except RedisError as exc:
            self._failed(exc)
            return entry.value  # Redis answered a moment ago; what it gave is still good enough
        self._succeeded()
        if not taken:
            self.stats.incr("stale_hits" if stale else "hits")
            return entry.value
        current = decode_entry(generation, raw)
        if current is not None and current is not CORRUPT and current.soft_expiry != entry.soft_expiry:
            # Someone refreshed between our read and our lease: use theirs, fetch nothing.
            self._release(lock_key, token)
            self.stats.incr("hits")
            return current.value
        self.stats.incr("misses")
        if not stale:
            self.stats.incr("early_refreshes")
        return self._fetch_and_store(entry_key, lock_key, token, generation, fetcher, ttl_s)

    def _fetch_and_store(
        self,
        entry_key: str,
        lock_key: str,
        token: str,
        generation: bytes,
        fetcher: Callable[[], Any],
        ttl_s: float,
    ) -> Any:
        self.stats.incr("fetches")
        started = time.perf_counter()
        try:
            value = fetcher()
            envelope, hard_ttl_ms = self._envelope(value, ttl_s, time.perf_counter() - started)
        except BaseException:
            self._release(lock_key, token)  # the key is not poisoned: the next caller fetches
            raise
        try:
            written = self._store(
                keys=[lock_key, entry_key], args=[token, generation + envelope, hard_ttl_ms]
            )
        except RedisError as exc:
            self._failed(exc)
        else:
            self._succeeded()
            if not written:
                log.debug("cache fill of %s dropped: invalidated or taken over meanwhile", entry_key)
        return orjson.loads(envelope)["v"]

    def _fetch_uncached(self, fetcher: Callable[[], Any]) -> Any:
        self.stats.incr("fetches")
        return orjson.loads(encode_envelope(fetcher(), 0.0, 0.0))["v"]

    def _release(self, lock_key: str, token: str) -> None:
        try:
            self._release_script(keys=[lock_key], args=[token])
        except RedisError as exc:
            self._failed(exc)  # the lease expires by itself after lock_ttl_s

    def _envelope(self, value: Any, ttl_s: float, fetch_s: float) -> tuple[bytes, int]:
        if value is None:
            ttl_s = min(ttl_s, self.negative_ttl_s)
        soft_ttl_s = jittered_ttl(ttl_s, random.random())
        envelope = encode_envelope(value, self._clock() + soft_ttl_s, fetch_s)
        return envelope, max(1, math.ceil((soft_ttl_s + self.stale_ttl_s) * 1000))
