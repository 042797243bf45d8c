"""The `cached` decorator: a function's results through `CacheService.get_or_set`, one key per call.

`AsyncCacheService.cached` gives `AsyncCachedFunction`, the same keys for a coroutine function.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

import orjson

from cache.appcache.core import (
    InvalidCacheArgument,
    InvalidCacheArgumentType,
    check_key,
    check_namespace,
    check_ttl,
)

MAX_READABLE_ARGS = 128  # default keys show the JSON of short argument lists and hash longer ones

P = ParamSpec("P")
R = TypeVar("R")
KeySpec = str | Callable[..., str]
"""A key template such as `"user:{user_id}"`, or a callable taking the function's arguments."""


class ResultStore(Protocol):
    """What a cached function needs of its cache (`CacheService` is one)."""

    def get_or_set(self, key: str, fetcher: Callable[[], Any], ttl_s: float | None = None) -> Any: ...

    def delete(self, key: str) -> None: ...


def check_key_spec(key: object) -> None:
    if key is not None and not isinstance(key, str) and not callable(key):
        raise InvalidCacheArgumentType(
            f"key must be a template string or a callable, got {type(key).__name__}"
        )


def check_decorator_arguments(ttl_s: float | None, key: object, namespace: object) -> None:
    """The checks of the module-level `cached`/`async_cached`, at decoration time."""
    if ttl_s is not None:
        check_ttl("ttl_s", ttl_s)
    check_key_spec(key)
    check_namespace(namespace)


class AsyncResultStore(Protocol):
    """What an asyncio cached function needs of its cache (`AsyncCacheService` is one)."""

    async def get_or_set(self, key: str, fetcher: Callable[[], Any], ttl_s: float | None = None) -> Any: ...

    async def delete(self, key: str) -> None: ...


class _KeyedFunction:
    """What the sync and asyncio cached functions share: the function, its TTL and its keys."""

    def __init__(
        self,
        service: Callable[[], Any],
        func: Callable[..., Any],
        ttl_s: float | None,
        key: KeySpec | None,
    ) -> None:
        self._service = service
        self.uncached = func
        self._ttl_s = ttl_s
        self._key = key
        self._signature = inspect.signature(func)
        self._name = f"{func.__module__}.{func.__qualname__}"
        functools.update_wrapper(cast(Any, self), func)  # name and docs of the function, on either twin

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of a call with these arguments.

        Raises:
            TypeError: the arguments do not fit the function, or (default key) are not JSON.
            ValueError: a key template names something that is not a parameter.
        """
        if callable(self._key):
            return check_key(self._key(*args, **kwargs))
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if isinstance(self._key, str):
            try:
                return check_key(self._key.format(**bound.arguments))
            except (KeyError, IndexError) as exc:
                raise InvalidCacheArgument(
                    f"key template {self._key!r} of {self._name} names unknown {exc}"
                ) from None
        params = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
        try:
            blob = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError as exc:
            raise InvalidCacheArgumentType(
                f"cannot derive a cache key for {self._name} ({exc}); pass key="
            ) from None
        text = (
            blob.decode() if len(blob) <= MAX_READABLE_ARGS else "sha256:" + hashlib.sha256(blob).hexdigest()
        )
        return check_key(f"{self._name}:{text}")


class CachedFunction(_KeyedFunction, Generic[P, R]):
    """A function whose results go through `CacheService.get_or_set`.

    Results are JSON round trips (a tuple comes back as a list). Also offers
    `invalidate(*args, **kwargs)`, `key_for(*args, **kwargs)` and `uncached`.
    On a method the instance is not part of the default key: pass `key=` to include it.
    """

    uncached: Callable[P, R]

    def __init__(
        self,
        service: Callable[[], ResultStore],
        func: Callable[P, R],
        ttl_s: float | None,
        key: KeySpec | None,
    ) -> None:
        super().__init__(service, func, ttl_s, key)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        value = self.service.get_or_set(
            self.key_for(*args, **kwargs), lambda: self.uncached(*args, **kwargs), self._ttl_s
        )
        return cast(R, value)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundCachedFunction(self, instance)

    @property
    def service(self) -> ResultStore:
        """The service the results go to (resolved per call: the default one is built lazily)."""
        return cast(ResultStore, self._service())

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Forget the cached result for these arguments."""
        self.service.delete(self.key_for(*args, **kwargs))


class AsyncCachedFunction(_KeyedFunction, Generic[P, R]):
    """`CachedFunction` for a coroutine function, through `AsyncCacheService.get_or_set`:
    awaiting a call (or `invalidate`) does what the sync one does, with the same keys."""

    uncached: Callable[P, Awaitable[R]]

    def __init__(
        self,
        service: Callable[[], AsyncResultStore],
        func: Callable[P, Awaitable[R]],
        ttl_s: float | None,
        key: KeySpec | None,
    ) -> None:
        super().__init__(service, func, ttl_s, key)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        value = await self.service.get_or_set(
            self.key_for(*args, **kwargs), lambda: self.uncached(*args, **kwargs), self._ttl_s
        )
        return cast(R, value)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundCachedFunction(self, instance)

    @property
    def service(self) -> AsyncResultStore:
        """The service the results go to."""
        return cast(AsyncResultStore, self._service())

    async def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Forget the cached result for these arguments."""
        await self.service.delete(self.key_for(*args, **kwargs))


class _BoundCachedFunction:
    def __init__(
        self, function: CachedFunction[Any, Any] | AsyncCachedFunction[Any, Any], instance: object
    ) -> None:
        self._function = function
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return self._function.invalidate(self._instance, *args, **kwargs)  # a coroutine for the async one

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        return self._function.key_for(self._instance, *args, **kwargs)
