"""The asyncio twin of `cache.appcache.service` (and its fill), for ASGI servers.

Same keys, envelope, Lua scripts, leases, breaker, counters and failure policy (fail
open): every decision is `CacheCore`'s, shared with `CacheService`; this module only
awaits the I/O. A fetcher may be a plain function or return an awaitable.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio

from cache import lua
from cache.appcache.breaker import DEFAULT_WARN_INTERVAL_S, CircuitBreaker, async_cache_client
from cache.appcache.core import (
    CORRUPT,
    DEFAULT_LOCK_TTL_S,
    DEFAULT_NAMESPACE,
    DEFAULT_NEGATIVE_TTL_S,
    DEFAULT_STALE_TTL_S,
    DEFAULT_TTL_S,
    MISSING,
    Entry,
    check_ttl,
    new_token,
)
from cache.appcache.decorator import (
    AsyncCachedFunction,
    KeySpec,
    P,
    R,
    check_decorator_arguments,
    check_key_spec,
)
from cache.appcache.stats import CacheStats, flush_counters_async
from cache.appcache.steps import DOWN, CacheCore, FillState
from cache.connections import REDIS_ERRORS
from cache.settings import Settings, get_settings

__all__ = ["AsyncCacheService", "async_cached", "default_async_service"]

Fetcher = Callable[[], Any]  # returns the value, or an awaitable of it


async def _fetched(fetcher: Fetcher) -> Any:
    value = fetcher()
    return await value if inspect.isawaitable(value) else value


class AsyncCacheService(CacheCore):
    """`CacheService` on `redis.asyncio`; same arguments, methods that talk to Redis are coroutines.

    `client` defaults to `breaker.async_cache_client()` (fail-fast, every command
    bounded by `REDIS_CALL_TIMEOUT`), sharing the process's default breaker with the
    sync services on the default client. asyncio clients belong to one event loop: build
    one service per loop, or use `default_async_service()`/`async_cached`, which do.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
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
        self.client = async_cache_client() if client is None else client
        self._acquire = lua.async_script(self.client, "cache_acquire")
        self._store = lua.async_script(self.client, "cache_store")
        self._release_script = lua.async_script(self.client, "cache_release")
        self._set = lua.async_script(self.client, "cache_set")
        self._replaying = asyncio.Lock()  # one replay at a time per service; readers wait for it

    # --- public API (see `CacheService` for each) ------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        return self._got(await self._read(self._entry_key(key)), default)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        script_keys, args = self._set_call(key, value, ttl_s)
        await self._invalidate(lambda: self._set(keys=script_keys, args=args), (key,))

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys_: Iterable[str]) -> None:
        names = self._names(keys_)
        if names:
            await self._invalidate(lambda: self._unlink(names), tuple(names))

    async def clear(self) -> None:
        await self._invalidate(lambda: self.client.set(self._version_key, new_token()), clear=True)

    async def get_or_set(self, key: str, fetcher: Fetcher, ttl_s: float | None = None) -> Any:
        """See `CacheService.get_or_set`; `fetcher()` may return an awaitable."""
        ttl_s = self._ttl(ttl_s)
        self._check_fetcher(fetcher)
        entry_key = self._entry_key(key)
        entry = await self._read(entry_key)
        plan = self._plan(entry)
        if plan == "down":
            return await self._fetch_uncached(fetcher)
        if plan == "fill":
            return await self._fill(key, entry_key, fetcher, ttl_s, corrupt=entry is CORRUPT)
        assert entry is not None
        if plan == "hit":
            return entry.value
        return await self._refresh(key, entry_key, fetcher, ttl_s, entry, plan == "stale")

    def cached(
        self, ttl_s: float | None = None, key: KeySpec | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]:
        """See `CacheService.cached`; decorates a coroutine function, same keys."""
        if ttl_s is not None:
            check_ttl("ttl_s", ttl_s)
        check_key_spec(key)

        def decorate(func: Callable[P, Awaitable[R]]) -> AsyncCachedFunction[P, R]:
            return AsyncCachedFunction(lambda: self, func, ttl_s, key)

        return decorate

    # --- reads and fills -----------------------------------------------------------

    async def _read(self, entry_key: str) -> Entry | None:
        if not await self._ready():
            return DOWN
        try:
            generation, raw = await self.client.mget((self._version_key, entry_key))
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return DOWN
        await self._succeeded()
        return self._decoded(entry_key, generation, raw)

    async def _lease(
        self, entry_key: str, lock_key: str, token: str, mode: str
    ) -> tuple[bytes, bytes | None, bool]:
        script_keys, args = self._lease_call(entry_key, lock_key, token, mode)
        return self._leased(await self._acquire(keys=script_keys, args=args))

    async def _fill(self, key: str, entry_key: str, fetcher: Fetcher, ttl_s: float, *, corrupt: bool) -> Any:
        lock_key = self._lock_key(key)
        token = new_token()
        state = FillState(corrupt=corrupt)
        while True:  # bounded by the wait's deadline
            try:
                generation, raw, taken = await self._lease(entry_key, lock_key, token, state.mode)
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return await self._fetch_uncached(fetcher)
            await self._succeeded()
            if taken:
                return await self._fetch_and_store(entry_key, lock_key, token, generation, fetcher, ttl_s)
            value, delay = self._waited(state, generation, raw)
            if value is not MISSING:
                return value
            if delay is None:
                return await self._fetch_uncached(fetcher)
            await asyncio.sleep(delay)

    async def _refresh(
        self, key: str, entry_key: str, fetcher: Fetcher, ttl_s: float, entry: Entry, stale: bool
    ) -> Any:
        lock_key = self._lock_key(key)
        token = new_token()
        try:
            generation, raw, taken = await self._lease(entry_key, lock_key, token, "always")
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return entry.value
        await self._succeeded()
        step, value = self._refresh_step(entry, stale, generation, raw, taken)
        if step == "release":
            await self._release(lock_key, token)
        if step != "fetch":
            return value
        return await self._fetch_and_store(entry_key, lock_key, token, generation, fetcher, ttl_s)

    async def _fetch_and_store(
        self, entry_key: str, lock_key: str, token: str, generation: bytes, fetcher: Fetcher, ttl_s: float
    ) -> Any:
        self.stats.incr("fetches")
        started = time.perf_counter()
        try:
            value = await _fetched(fetcher)
            envelope, hard_ttl_ms = self._envelope(value, ttl_s, time.perf_counter() - started)
        except BaseException:
            await self._release(lock_key, token)  # the key is not poisoned: the next caller fetches
            raise
        script_keys, args = self._store_call(entry_key, lock_key, token, generation, envelope, hard_ttl_ms)
        try:
            written = await self._store(keys=script_keys, args=args)
        except REDIS_ERRORS as exc:
            self._failed(exc)
        else:
            await self._succeeded()
            self._stored(entry_key, written)
        return self._value_of(envelope)

    async def _fetch_uncached(self, fetcher: Fetcher) -> Any:
        self.stats.incr("fetches")
        return self._uncached(await _fetched(fetcher))

    async def _release(self, lock_key: str, token: str) -> None:
        try:
            await self._release_script(keys=[lock_key], args=[token])
        except REDIS_ERRORS as exc:
            self._failed(exc)  # the lease expires by itself after lock_ttl_s

    # --- writes and failure handling -----------------------------------------------

    async def _unlink(self, names: list[str]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for group in self._unlink_groups(names):
            # Not `pipe.unlink`: on a cluster pipeline it is a coroutine that queues nothing.
            pipe.execute_command("UNLINK", *group)
        await pipe.execute()

    async def _ready(self) -> bool:
        return self._allowed() and (not self._backlog.dirty or await self._replay())

    async def _succeeded(self) -> None:
        if self._recovered():
            with contextlib.suppress(*REDIS_ERRORS):  # the counts are kept for the next flush
                await flush_counters_async(self.client, self.stats)

    async def _invalidate(
        self, send: Callable[[], Awaitable[object]], names: tuple[str, ...] = (), clear: bool = False
    ) -> None:
        if await self._ready():
            try:
                await send()
            except REDIS_ERRORS as exc:
                self._failed(exc)
            else:
                await self._succeeded()
                return
        self._queue(names, clear)

    async def _replay(self) -> bool:
        async with self._replaying:
            names, clear = self._backlog.pending()
            if not names and not clear:
                return True
            try:
                if clear:
                    await self.client.set(self._version_key, new_token())
                else:
                    await self._unlink(names)
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return False
            self._replayed(names, clear)
        return True


_loop_services: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[Settings, dict[str, AsyncCacheService]]
] = weakref.WeakKeyDictionary()


def default_async_service(namespace: str = DEFAULT_NAMESPACE) -> AsyncCacheService:
    """The running loop's `AsyncCacheService(namespace=...)`, built on first use in that loop.

    One per loop because an asyncio client cannot move between loops; so a forking server
    (`gunicorn --preload`) builds its own in each worker, and nothing connects at import.
    Rebuilt when the settings are re-read, as `default_service` is.
    """
    loop = asyncio.get_running_loop()
    settings = get_settings()
    known = _loop_services.get(loop)
    if known is None or known[0] is not settings:
        known = _loop_services[loop] = (settings, {})
    service = known[1].get(namespace)
    if service is None:
        service = known[1][namespace] = AsyncCacheService(namespace=namespace)
    return service


def async_cached(
    ttl_s: float | None = None, key: KeySpec | None = None, *, namespace: str = DEFAULT_NAMESPACE
) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]:
    """`cached` for coroutine functions: `AsyncCacheService.cached` on the running loop's
    `default_async_service(namespace)`, resolved at each call, never at import."""
    check_decorator_arguments(ttl_s, key, namespace)

    def decorate(func: Callable[P, Awaitable[R]]) -> AsyncCachedFunction[P, R]:
        return AsyncCachedFunction(lambda: default_async_service(namespace), func, ttl_s, key)

    return decorate
