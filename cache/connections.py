"""The one place that builds Redis clients.

Two roles: PRIMARY (queues, sessions, rate limits, events; must not evict) and CACHE
(evicting, losing it costs misses). Clients are built lazily, once per process, and
rebuilt in a forked child, so nothing connects at import time and no socket is
shared across a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel as RedisSentinel

from cache.errors import ConfigError, RedisUnavailable
from cache.settings import Settings, get_settings, redact_url

T = TypeVar("T")

RETRY_BACKOFF_BASE_S = 0.05  # first retry after ~50 ms
RETRY_BACKOFF_CAP_S = 1.0  # never wait more than 1 s between two attempts


class _NoRetryOnAuth(Retry):
    """redis-py's Retry, except that a refused password fails at once.

    AuthenticationError subclasses ConnectionError, so plain Retry would back off and
    retry a wrong password for seconds before saying anything.
    """

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, redis.AuthenticationError | redis.exceptions.AuthorizationError):
                return False
            return is_retryable(error) if is_retryable else True

        return super().call_with_retry(do, fail, retryable, with_failure_count)


class Role(StrEnum):
    PRIMARY = "primary"
    CACHE = "cache"

    @property
    def setting(self) -> str:
        return "REDIS_URL" if self is Role.PRIMARY else "CACHE_REDIS_URL"


_process_role = "app"
_clients: dict[tuple[Role, bool], redis.Redis] = {}
_lock = threading.Lock()


def set_process_role(name: str) -> None:
    """Name this process in `CLIENT LIST` (e.g. `worker-email`); call before the first client."""
    global _process_role
    _process_role = name
    reset_clients()


def url_for(role: Role, settings: Settings) -> str:
    return settings.redis_url if role is Role.PRIMARY else settings.cache_redis_url


def uses_sentinel(role: Role, settings: Settings) -> bool:
    """The primary follows Sentinel when configured; the cache does too while it shares the primary."""
    if settings.sentinel is None:
        return False
    return role is Role.PRIMARY or settings.cache_redis_url == settings.redis_url


def build_client(
    role: Role,
    settings: Settings | None = None,
    *,
    pubsub: bool = False,
    decode_responses: bool = False,
) -> redis.Redis:
    """A new client for `role`, with timeouts, health checks and retry on connection errors.

    Args:
        role: which Redis to talk to.
        settings: defaults to the process settings.
        pubsub: a client for a subscriber: no socket timeout, since it blocks on reads.
        decode_responses: return `str` instead of `bytes`.

    Raises:
        ConfigError: the URL cannot be used; the message names the setting.
    """
    settings = settings or get_settings()
    kwargs = _client_kwargs(role, settings, pubsub, decode_responses, _NoRetryOnAuth, _process_role)
    if uses_sentinel(role, settings):
        return _sentinel_client(settings, kwargs)
    url = url_for(role, settings)
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{role.setting} cannot be used ({redact_url(url)}): {exc}") from None


def _client_kwargs(
    role: Role, settings: Settings, pubsub: bool, decode_responses: bool, retry_class: Any, process_role: str
) -> dict[str, Any]:
    """What every client of ours gets: timeouts, health checks, retry with backoff, a name."""
    kwargs: dict[str, Any] = {
        "socket_timeout": None if pubsub else settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": settings.health_check_interval_s,
        "retry": retry_class(
            ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S),
            settings.retry_attempts,
        ),
        "client_name": f"kryonix:{role.value}:{process_role}:{os.getpid()}",
        "decode_responses": decode_responses,
    }
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    return kwargs


def _sentinel_client(settings: Settings, kwargs: dict[str, Any]) -> redis.Redis:
    assert settings.sentinel is not None
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.connect_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
    }
    if settings.sentinel.password:
        sentinel_kwargs["password"] = settings.sentinel.password
    sentinel = RedisSentinel(list(settings.sentinel.addresses), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    # The SentinelConnectionPool asks the sentinels for the master on every new
    # connection, so after a failover the same client object follows the new master.
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.sentinel.master_name, **kwargs
    )
    return client


def build_async_client(
    role: Role = Role.PRIMARY,
    settings: Settings | None = None,
    *,
    pubsub: bool = False,
    decode_responses: bool = True,
) -> redis.asyncio.Redis:
    """A `redis.asyncio` client for ASGI code, configured like `build_client` (no Sentinel)."""
    from redis.asyncio.retry import Retry as AsyncRetry

    settings = settings or get_settings()
    url = url_for(role, settings)
    kwargs = _client_kwargs(role, settings, pubsub, decode_responses, AsyncRetry, f"{_process_role}-async")
    try:
        return redis.asyncio.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{role.setting} cannot be used ({redact_url(url)}): {exc}") from None


def get_client(role: Role = Role.PRIMARY, *, decode_responses: bool = False) -> redis.Redis:
    """The process's shared client for `role`, built on first use."""
    key = (role, decode_responses)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = build_client(role, decode_responses=decode_responses)
                _clients[key] = client
    return client


def primary() -> redis.Redis:
    """Shared PRIMARY client (bytes responses, as RQ expects)."""
    return get_client(Role.PRIMARY)


def cache_redis() -> redis.Redis:
    """Shared CACHE client."""
    return get_client(Role.CACHE)


def pubsub_client() -> redis.Redis:
    """A new PRIMARY client for one subscriber: its own connection, never the shared pool's."""
    return build_client(Role.PRIMARY, pubsub=True, decode_responses=True)


def reset_clients() -> None:
    """Drop cached clients (after fork, or when settings change); the next call builds anew."""
    with _lock:
        _clients.clear()


def _after_fork_in_child() -> None:
    # A child must not reuse its parent's sockets; the lock may be held by a thread
    # that no longer exists in the child, so replace it rather than acquire it.
    global _lock
    _lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def ping(
    role: Role = Role.PRIMARY, client: redis.Redis | None = None, *, settings: Settings | None = None
) -> float:
    """PING `role` and return the round trip in milliseconds.

    Raises:
        RedisUnavailable: unreachable, refused, or wrong credentials; the message names the setting.
    """
    import time

    client = client or get_client(role)
    start = time.perf_counter()
    with translate_errors(role, settings):
        client.ping()
    return (time.perf_counter() - start) * 1000


class translate_errors:
    """Turn redis-py connection and auth errors into `RedisUnavailable` naming the setting."""

    def __init__(self, role: Role, settings: Settings | None = None) -> None:
        self.role = role
        self.settings = settings

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, redis.RedisError):
            return
        settings = self.settings or get_settings()
        where = _describe(self.role, settings)
        if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
            message = f"{where}: authentication failed; check REDIS_PASSWORD ({exc})"
            setting = "REDIS_PASSWORD"
        elif isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            message = f"{where}: unreachable ({exc})"
            setting = self.role.setting
        elif isinstance(exc, redis.ResponseError) and "NOAUTH" in str(exc):
            message = f"{where}: the server requires a password; set REDIS_PASSWORD"
            setting = "REDIS_PASSWORD"
        else:
            return
        raise RedisUnavailable(message, role=self.role.value, setting=setting) from exc


def _describe(role: Role, settings: Settings) -> str:
    if uses_sentinel(role, settings):
        assert settings.sentinel is not None
        hosts = ",".join(f"{h}:{p}" for h, p in settings.sentinel.addresses)
        return f"{role.value} Redis (REDIS_SENTINELS={hosts}, master {settings.sentinel.master_name})"
    url = url_for(role, settings)
    parts = urlsplit(url)
    target = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    return f"{role.value} Redis ({role.setting}={redact_url(url)}, {target})"
