"""Application cache: cache-aside `get_or_set`, the `@cached` decorator, a circuit breaker
for the CACHE role, an asyncio twin, cached database queries and the platform tables they read.
"""

from typing import TYPE_CHECKING

from cache.exports import lazy_exports

if TYPE_CHECKING:
    from cache.appcache.async_service import AsyncCacheService, async_cached, default_async_service
    from cache.appcache.breaker import BreakerState, CircuitBreaker
    from cache.appcache.cached_db import CachedDatabase, Project, User
    from cache.appcache.core import CacheSerializationError
    from cache.appcache.decorator import AsyncCachedFunction, CachedFunction
    from cache.appcache.service import (
        MISSING,
        CacheService,
        cache_counters,
        cache_stats,
        cached,
        default_service,
        flush_cache_stats,
    )

__all__ = [
    "MISSING",
    "AsyncCacheService",
    "AsyncCachedFunction",
    "BreakerState",
    "CacheSerializationError",
    "CacheService",
    "CachedDatabase",
    "CachedFunction",
    "CircuitBreaker",
    "Project",
    "User",
    "async_cached",
    "cache_counters",
    "cache_stats",
    "cached",
    "default_async_service",
    "default_service",
    "flush_cache_stats",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "CacheService": "cache.appcache.service",
        "AsyncCacheService": "cache.appcache.async_service",
        "async_cached": "cache.appcache.async_service",
        "default_async_service": "cache.appcache.async_service",
        "MISSING": "cache.appcache.service",
        "cache_counters": "cache.appcache.service",
        "cache_stats": "cache.appcache.service",
        "cached": "cache.appcache.service",
        "default_service": "cache.appcache.service",
        "flush_cache_stats": "cache.appcache.service",
        "CacheSerializationError": "cache.appcache.core",
        "CachedFunction": "cache.appcache.decorator",
        "AsyncCachedFunction": "cache.appcache.decorator",
        "BreakerState": "cache.appcache.breaker",
        "CircuitBreaker": "cache.appcache.breaker",
        "CachedDatabase": "cache.appcache.cached_db",
        "Project": "cache.appcache.cached_db",
        "User": "cache.appcache.cached_db",
    },
)
