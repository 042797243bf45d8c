"""The stampede-proof fill of `CacheService`: one caller per key fetches under a lease.

On a cold miss one caller takes a lease (a lock with a TTL, `cache_acquire.lua`) and
fetches; the others poll for its value until `lock_wait_s`, then fetch uncached. A
stale or early-refreshed entry is refetched by the caller that wins the lease while
the others keep the value they have. The lease is also the write permission
(`cache_store.lua`), so an invalidation during a fetch voids the fetched value.
Every decision is `CacheCore`'s (shared with `AsyncCacheService`); this is the I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cache.appcache.core import MISSING, Entry, new_token
from cache.appcache.steps import CacheCore, FillState
from cache.connections import REDIS_ERRORS
from cache.lua import LuaScript


class LeasedFill(CacheCore):
    """The fill path of `CacheService`; the service holds the scripts named here."""

    _acquire: LuaScript
    _store: LuaScript
    _release_script: LuaScript

    def _succeeded(self) -> None:
        raise NotImplementedError

    def _lease(
        self, entry_key: str, lock_key: str, token: str, mode: str
    ) -> tuple[bytes, bytes | None, bool]:
        script_keys, args = self._lease_call(entry_key, lock_key, token, mode)
        return self._leased(self._acquire(keys=script_keys, args=args))

    def _fill(
        self, key: str, entry_key: str, fetcher: Callable[[], Any], ttl_s: float, *, corrupt: bool
    ) -> Any:
        """Cold miss: take the lease and fetch, or wait for the caller who holds it."""
        lock_key = self._lock_key(key)
        token = new_token()
        state = FillState(corrupt=corrupt)
        while True:  # bounded by the wait's deadline
            try:
                generation, raw, taken = self._lease(entry_key, lock_key, token, state.mode)
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return self._fetch_uncached(fetcher)
            self._succeeded()
            if taken:
                return self._fetch_and_store(entry_key, lock_key, token, generation, fetcher, ttl_s)
            value, delay = self._waited(state, generation, raw)
            if value is not MISSING:
                return value
            if delay is None:
                return self._fetch_uncached(fetcher)
            time.sleep(delay)

    def _refresh(
        self, key: str, entry_key: str, fetcher: Callable[[], Any], ttl_s: float, entry: Entry, stale: bool
    ) -> Any:
        """Stale or chosen for early refresh: refetch if nobody else is, else serve what we have."""
        lock_key = self._lock_key(key)
        token = new_token()
        try:
            generation, raw, taken = self._lease(entry_key, lock_key, token, "always")
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return entry.value  # Redis answered a moment ago; what it gave is still good enough
        self._succeeded()
        step, value = self._refresh_step(entry, stale, generation, raw, taken)
        if step == "release":
            self._release(lock_key, token)
        if step != "fetch":
            return value
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
        script_keys, args = self._store_call(entry_key, lock_key, token, generation, envelope, hard_ttl_ms)
        try:
            written = self._store(keys=script_keys, args=args)
        except REDIS_ERRORS as exc:
            self._failed(exc)
        else:
            self._succeeded()
            self._stored(entry_key, written)
        return self._value_of(envelope)

    def _fetch_uncached(self, fetcher: Callable[[], Any]) -> Any:
        self.stats.incr("fetches")
        return self._uncached(fetcher())

    def _release(self, lock_key: str, token: str) -> None:
        try:
            self._release_script(keys=[lock_key], args=[token])
        except REDIS_ERRORS as exc:
            self._failed(exc)  # the lease expires by itself after lock_ttl_s
