"""KRYONIX Redis services: the application cache, sessions, rate limits, real-time events.

Foundation modules sit here (`settings`, `connections`, `retry`, `keys`, `errors`,
`health`, `identifiers`, `lua`, `counters`, `text`) and import no service; each service
is a subpackage (`appcache`, `sessions`, `ratelimit`, `realtime`) with a pure core and a
thin Redis shell. The lowest layer: imports neither `jobs` nor `workers`. Nothing
connects at import time.
"""

from typing import TYPE_CHECKING

from cache.connections import Role, cache_redis, primary
from cache.errors import ConfigError, KryonixError, RedisUnavailable
from cache.exports import lazy_exports
from cache.settings import Settings, get_settings

if TYPE_CHECKING:
    from cache.appcache import AsyncCacheService, CachedDatabase, CacheService
    from cache.ratelimit import AsyncRateLimiter, RateLimiter
    from cache.realtime import AsyncRealtimeService, RealtimeService
    from cache.sessions import AsyncSessionService, SessionService

__all__ = [
    "AsyncCacheService",
    "AsyncRateLimiter",
    "AsyncRealtimeService",
    "AsyncSessionService",
    "CacheService",
    "CachedDatabase",
    "ConfigError",
    "KryonixError",
    "RateLimiter",
    "RealtimeService",
    "RedisUnavailable",
    "Role",
    "SessionService",
    "Settings",
    "cache_redis",
    "get_settings",
    "primary",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "AsyncCacheService": "cache.appcache",
        "AsyncRateLimiter": "cache.ratelimit",
        "AsyncRealtimeService": "cache.realtime",
        "AsyncSessionService": "cache.sessions",
        "CacheService": "cache.appcache",
        "CachedDatabase": "cache.appcache",
        "RateLimiter": "cache.ratelimit",
        "RealtimeService": "cache.realtime",
        "SessionService": "cache.sessions",
    },
)
