"""KRYONIX Redis services: connections, cache, sessions, rate limits, real-time events.

The lowest layer: imports neither `jobs` nor `workers`. Nothing connects at import time.
"""

from cache.connections import Role, cache_redis, primary
from cache.errors import ConfigError, KryonixError, RedisUnavailable
from cache.settings import Settings, get_settings

__all__ = [
    "ConfigError",
    "KryonixError",
    "RedisUnavailable",
    "Role",
    "Settings",
    "cache_redis",
    "get_settings",
    "primary",
]
