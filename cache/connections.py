"""The one place that builds Redis clients.

Two roles: PRIMARY (queues, sessions, rate limits, events; must not evict) and CACHE
(evicting, losing it costs misses). Clients are built lazily, once per process, and
rebuilt in a forked child, so nothing connects at import time and no socket is
shared across a fork.

Every call is bounded in time (docs/reliability.md, "Time bounds"; the mechanics are in
`cache.retry`): retries never nest, and the web tier's clients carry a per-call deadline
(`REDIS_CALL_TIMEOUT`) that caps each connect, read and retry, so a Redis that accepts
connections but never answers costs a request about a second.

A role on a Redis Cluster gets a `cache.cluster` client under the same bounds, typed as
`redis.Redis` (same command methods, no `connection_pool`; `is_cluster` tells them apart).
Catch `REDIS_ERRORS`, never `redis.RedisError` alone: some cluster errors are not RedisError.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.connection
from redis.exceptions import RedisClusterException

from cache.cluster import (
    REDIS_ERRORS,
    build_async_cluster_client,
    build_cluster_client,
    cluster_of,
    describe,
    is_cluster,
    is_cluster_outage,
    nodes_setting,
)
from cache.env import redact_url
from cache.errors import ClusterCommandError, ConfigError, KryonixError, RedisUnavailable
from cache.retry import (
    BoundedAsyncRedis,
    BoundedRedis,
    BoundedRetry,
    bounded_connection_class,
    default_backoff,
)
from cache.sentinel import sentinel_client
from cache.settings import Settings, get_settings

__all__ = ["REDIS_ERRORS", "is_cluster"]  # re-exported: callers catch and test through this module


class Role(StrEnum):
    PRIMARY = "primary"
    CACHE = "cache"

    @property
    def setting(self) -> str:
        return "REDIS_URL" if self is Role.PRIMARY else "CACHE_REDIS_URL"


_process_role = "app"
# Process roles off the request path: their shared clients keep riding over a Redis
# restart with the full retries instead of the web tier's REDIS_CALL_TIMEOUT.
BACKGROUND_ROLES = ("worker", "maintenance", "scheduler")
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
    if settings.sentinel is None or (role is Role.CACHE and settings.cache_cluster is not None):
        return False
    return role is Role.PRIMARY or settings.cache_redis_url == settings.redis_url


def build_client(
    role: Role,
    settings: Settings | None = None,
    *,
    pubsub: bool = False,
    decode_responses: bool = False,
    call_timeout_s: float | None = None,
) -> redis.Redis:
    """A new client for `role`, with timeouts, health checks and retry on connection errors.

    Args:
        role: which Redis to talk to.
        settings: defaults to the process settings.
        pubsub: a client for a subscriber: no socket timeout, since it blocks on reads.
        decode_responses: return `str` instead of `bytes`.
        call_timeout_s: bound every command, connect and retries included, to this many
            seconds (the web tier's `REDIS_CALL_TIMEOUT`); None for clients that block on
            purpose (an RQ worker's dequeue), which are bounded by their socket timeout
            times their attempts.

    Raises:
        ConfigError: the URL cannot be used; the message names the setting.
        RedisUnavailable: a cluster, which is read at once, did not answer.
    """
    settings = settings or get_settings()
    if call_timeout_s is not None:
        settings = web_tier_settings(settings, call_timeout_s)
    retry = BoundedRetry(default_backoff(), settings.retry_attempts, call_timeout_s=call_timeout_s)
    kwargs = _client_kwargs(role, settings, pubsub, decode_responses, retry, _process_role)
    cluster = cluster_of(settings, cache=role is Role.CACHE)
    if cluster is not None:
        with translate_errors(role, settings, all_errors=True):
            built = build_cluster_client(
                cluster, kwargs, retry_attempts=settings.retry_attempts, call_timeout_s=call_timeout_s
            )
        return cast(redis.Redis, built)  # the same command methods; see the module docstring
    if uses_sentinel(role, settings):
        client = sentinel_client(settings, kwargs)
    else:
        url = url_for(role, settings)
        try:
            client = BoundedRedis.from_url(url, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"{role.setting} cannot be used ({redact_url(url)}): {exc}") from None
    if call_timeout_s is not None:
        client.call_timeout_s = call_timeout_s  # type: ignore[attr-defined]
        pool = client.connection_pool
        pool.connection_class = bounded_connection_class(pool.connection_class)
    return client


def web_tier_settings(settings: Settings, call_timeout_s: float) -> Settings:
    """`settings` with no single read or connect longer than the whole call may take."""
    return replace(
        settings,
        socket_timeout_s=min(settings.socket_timeout_s, call_timeout_s),
        connect_timeout_s=min(settings.connect_timeout_s, call_timeout_s),
    )


# Connections one pool (one per node on a cluster) may open. redis-py 8.1's default is 100,
# beyond which a command fails at once with MaxConnectionsError: 101 concurrent requests
# of one ASGI process read as a Redis outage (a rate limit failed open). Redis's own
# `maxclients` default: the pool opens what the server would accept.
POOL_MAX_CONNECTIONS = 10_000


def _client_kwargs(
    role: Role, settings: Settings, pubsub: bool, decode_responses: bool, retry: Any, process_role: str
) -> dict[str, Any]:
    """What every client of ours gets: timeouts, health checks, retry with backoff, a name."""
    kwargs: dict[str, Any] = {
        "socket_timeout": None if pubsub else settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": settings.health_check_interval_s,
        "retry": retry,
        "client_name": f"kryonix:{role.value}:{process_role}:{os.getpid()}",
        "decode_responses": decode_responses,
        "max_connections": POOL_MAX_CONNECTIONS,
    }
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if cluster_of(settings, cache=role is Role.CACHE) is None and url_for(role, settings).startswith("unix:"):
        del kwargs["socket_keepalive"]  # a TCP option: redis.asyncio's Unix connection refuses it
    return kwargs


def build_async_client(
    role: Role = Role.PRIMARY,
    settings: Settings | None = None,
    *,
    pubsub: bool = False,
    decode_responses: bool = True,
) -> redis.asyncio.Redis:
    """A `redis.asyncio` client for ASGI code, configured like `build_client` (no Sentinel).

    On a cluster it is a `cache.cluster.BoundedAsyncRedisCluster`, typed as `redis.asyncio.Redis`.

    The web tier's: unless it is a subscriber's (`pubsub`, which blocks on purpose),
    every command ends within `REDIS_CALL_TIMEOUT`, retries included.
    """
    from redis.asyncio.retry import Retry as AsyncRetry

    settings = settings or get_settings()
    call_timeout_s = None if pubsub else settings.call_timeout_s
    url = url_for(role, settings)
    retry = AsyncRetry(default_backoff(), settings.retry_attempts)
    kwargs = _client_kwargs(role, settings, pubsub, decode_responses, retry, f"{_process_role}-async")
    cluster = cluster_of(settings, cache=role is Role.CACHE)
    if cluster is not None:
        built = build_async_cluster_client(cluster, kwargs, call_timeout_s=call_timeout_s)
        return cast(redis.asyncio.Redis, built)
    try:
        client = cast(BoundedAsyncRedis, BoundedAsyncRedis.from_url(url, **kwargs))
    except ValueError as exc:
        raise ConfigError(f"{role.setting} cannot be used ({redact_url(url)}): {exc}") from None
    client.call_timeout_s = call_timeout_s
    return client


def get_client(role: Role = Role.PRIMARY, *, decode_responses: bool = False) -> redis.Redis:
    """The process's shared client for `role`, built on first use.

    In a web process (any role but `BACKGROUND_ROLES`) every command, retries included,
    ends within `REDIS_CALL_TIMEOUT` (default 1 s), so a Redis that never answers costs a
    request about a second, not minutes. Workers and maintenance get no call deadline:
    `REDIS_SOCKET_TIMEOUT` per read and `REDIS_RETRY_ATTEMPTS`, never multiplied.
    """
    key = (role, decode_responses)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                settings = get_settings()
                background = _process_role.startswith(BACKGROUND_ROLES)
                bound = None if background else settings.call_timeout_s
                client = build_client(role, settings, decode_responses=decode_responses, call_timeout_s=bound)
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

    client = client or get_client(role)
    start = time.perf_counter()
    with translate_errors(role, settings):
        client.ping()
    return (time.perf_counter() - start) * 1000


class translate_errors:
    """The one translation of redis-py errors into ours, naming the setting that applies.

    Connection trouble and timeouts name the role's address setting (`REDIS_SENTINELS`
    when the role follows Sentinel, else `REDIS_URL` / `CACHE_REDIS_URL`); a refused
    password names `REDIS_PASSWORD`. Other Redis errors pass through unchanged unless
    the block asks for more (a service that fails closed, one that writes).

    Args:
        role: whose Redis the block talks to.
        settings: defaults to the process settings.
        error_class: what to raise; a service's subclass of `RedisUnavailable`, whose
            `explain` phrases the message for its callers.
        action: what the block does ("read a session"), for the message.
        full: a write refused because the server is full (OOM under noeviction) is
            `error_class` too.
        all_errors: every other Redis error is `error_class` too (fail closed).
        refused_class: every other Redis error becomes this (a refused command is not
            an outage); by default it passes through.
    """

    __slots__ = ("action", "all_errors", "error_class", "full", "refused_class", "role", "settings")

    def __init__(
        self,
        role: Role,
        settings: Settings | None = None,
        *,
        error_class: type[RedisUnavailable] = RedisUnavailable,
        action: str | None = None,
        full: bool = False,
        all_errors: bool = False,
        refused_class: type[KryonixError] | None = None,
    ) -> None:
        self.role = role
        self.settings = settings
        self.error_class = error_class
        self.action = action
        self.full = full
        self.all_errors = all_errors
        self.refused_class = refused_class

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, REDIS_ERRORS):
            return
        translated = self.translated(exc)
        if translated is not None:
            raise translated from exc

    def translated(self, exc: Exception) -> KryonixError | None:
        """The error `exc` (one of `REDIS_ERRORS`) becomes, without raising it; None when it passes through.

        A cluster error that is not a RedisError never passes through: an outage is
        `error_class`, a refused command (keys in several slots) `refused_class` or `ClusterCommandError`.
        """
        settings = self.settings or get_settings()
        setting = address_setting(self.role, settings)
        where = _describe(self.role, settings)
        cause = exc.__cause__
        if isinstance(exc, RedisClusterException) and isinstance(cause, redis.RedisError):
            exc = cause  # "cannot be connected": say why (refused, timed out, bad password)
        if is_cluster_outage(exc):
            detail = f"{where}: cannot serve the command ({type(exc).__name__}: {exc}); check CLUSTER INFO"
        elif isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
            detail = f"{where}: authentication failed; check REDIS_PASSWORD ({exc})"
            setting = "REDIS_PASSWORD"
        elif isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            detail = f"{where}: unreachable ({exc})"
        elif isinstance(exc, redis.ResponseError) and "NOAUTH" in str(exc):
            detail = f"{where}: the server requires a password; set REDIS_PASSWORD"
            setting = "REDIS_PASSWORD"
        elif self.full and is_full(exc):
            detail = f"{where}: full (maxmemory reached, noeviction); free memory or raise maxmemory ({exc})"
        elif self.all_errors:
            detail = f"{where}: {type(exc).__name__}: {exc}"
        elif self.refused_class is not None or isinstance(exc, RedisClusterException):
            doing = "" if self.action is None else f"could not {self.action}: "
            refused = self.refused_class or ClusterCommandError
            return refused(f"{doing}{type(exc).__name__}: {exc}")
        else:
            return None
        message = self.error_class.explain(detail, action=self.action)
        return self.error_class(message, role=self.role.value, setting=setting)


def is_full(exc: Exception) -> bool:
    """Whether Redis refused a write because maxmemory is reached under noeviction."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM" in str(exc)
    )


def address_setting(role: Role, settings: Settings) -> str:
    """The setting that says where `role`'s Redis is: the cluster's nodes, REDIS_SENTINELS, or the URL."""
    if cluster_of(settings, cache=role is Role.CACHE) is not None:
        return nodes_setting(settings, cache=role is Role.CACHE)
    return "REDIS_SENTINELS" if uses_sentinel(role, settings) else role.setting


def _describe(role: Role, settings: Settings) -> str:
    cluster = cluster_of(settings, cache=role is Role.CACHE)
    if cluster is not None:
        return describe(cluster, setting=nodes_setting(settings, cache=role is Role.CACHE), role=role.value)
    if uses_sentinel(role, settings):
        assert settings.sentinel is not None
        hosts = ",".join(f"{h}:{p}" for h, p in settings.sentinel.addresses)
        return f"{role.value} Redis (REDIS_SENTINELS={hosts}, master {settings.sentinel.master_name})"
    url = url_for(role, settings)
    parts = urlsplit(url)
    target = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    return f"{role.value} Redis ({role.setting}={redact_url(url)}, {target})"
