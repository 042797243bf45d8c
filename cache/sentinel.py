"""The Sentinel-discovered PRIMARY client; `cache.connections` decides when to build it."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel as RedisSentinel

from cache.retry import BoundedRedis
from cache.settings import Settings


def sentinel_client(settings: Settings, kwargs: dict[str, Any]) -> redis.Redis:
    """The PRIMARY master found (and followed) through `REDIS_SENTINELS`, built with `kwargs`."""
    assert settings.sentinel is not None
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.connect_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        # No retry: discovery moves on to the next Sentinel, and retries would multiply
        # the time a new connection waits on a Sentinel that never answers.
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.sentinel.password:
        sentinel_kwargs["password"] = settings.sentinel.password
    sentinel = RedisSentinel(list(settings.sentinel.addresses), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    # The SentinelConnectionPool asks the sentinels for the master on every new
    # connection, so after a failover the same client object follows the new master.
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.sentinel.master_name, redis_class=BoundedRedis, **kwargs
    )
    return client
