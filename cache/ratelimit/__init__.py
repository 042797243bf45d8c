"""Rate limiting per IP, per user and per API key: one sliding-window check per request
in Lua, presets from the environment, IETF RateLimit headers; sync and asyncio limiters.
"""

from typing import TYPE_CHECKING

from cache.exports import lazy_exports

if TYPE_CHECKING:
    from cache.limits import API, BY_IP, BY_USER, FailurePolicy, InvalidRateLimit, Preset, RateLimitError
    from cache.ratelimit.async_service import AsyncRateLimiter
    from cache.ratelimit.core import Decision
    from cache.ratelimit.headers import rate_limit_headers
    from cache.ratelimit.service import (
        RateLimiter,
        flush_ratelimit_stats,
        ratelimit_counters,
        ratelimit_stats,
    )

__all__ = [
    "API",
    "BY_IP",
    "BY_USER",
    "AsyncRateLimiter",
    "Decision",
    "FailurePolicy",
    "InvalidRateLimit",
    "Preset",
    "RateLimitError",
    "RateLimiter",
    "flush_ratelimit_stats",
    "rate_limit_headers",
    "ratelimit_counters",
    "ratelimit_stats",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "RateLimiter": "cache.ratelimit.service",
        "AsyncRateLimiter": "cache.ratelimit.async_service",
        "flush_ratelimit_stats": "cache.ratelimit.service",
        "ratelimit_counters": "cache.ratelimit.service",
        "ratelimit_stats": "cache.ratelimit.service",
        "API": "cache.limits",
        "BY_IP": "cache.limits",
        "BY_USER": "cache.limits",
        "Decision": "cache.ratelimit.core",
        "FailurePolicy": "cache.limits",
        "InvalidRateLimit": "cache.limits",
        "Preset": "cache.limits",
        "RateLimitError": "cache.limits",
        "rate_limit_headers": "cache.ratelimit.headers",
    },
)
