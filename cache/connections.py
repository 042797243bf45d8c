"""The one place that builds Redis clients.

Two roles: PRIMARY (queues, sessions, rate limits, events; must not evict) and CACHE
(evicting, losing it costs misses). Clients are built lazily, once per process, and
rebuilt in a forked child, so nothing connects at import time and no socket is
shared across a fork.

Every call is bounded in time (README, "Time bounds"): retries never nest, and the web
tier's clients carry a per-call deadline (`REDIS_CALL_TIMEOUT`) that caps each connect,
read and retry, so a Redis that accepts connections but never answers costs a request
about a second.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import replace
from enum import StrEnum
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.connection
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel as RedisSentinel
from redis.utils import SENTINEL

from cache.errors import ConfigError, KryonixError, RedisUnavailable
from cache.settings import Settings, get_settings, redact_url

T = TypeVar("T")

RETRY_BACKOFF_BASE_S = 0.05  # first retry after ~50 ms
RETRY_BACKOFF_CAP_S = 1.0  # never wait more than 1 s between two attempts


# The deadline of the Redis call running in this thread (or task), and whether a retry
# loop is already running in it. redis-py nests retry loops (command > connect > handshake
# > health-check PING), each with the full attempt count: with a server that accepts
# connections but never answers, 7 x 7 attempts of a 5 s read each blocked a call for
# minutes. With these, only the outermost loop retries, and only within the deadline.
_deadline: ContextVar[float | None] = ContextVar("kryonix_redis_deadline", default=None)
_retrying: ContextVar[bool] = ContextVar("kryonix_redis_retrying", default=False)
# Set while a blocking command (WAIT, BLPOP ...) runs: its reads may use all the time left.
_blocking: ContextVar[bool] = ContextVar("kryonix_redis_blocking", default=False)

MIN_ATTEMPT_S = 0.01  # a retry with less time left than this cannot succeed: fail now


def remaining_s() -> float | None:
    """Seconds left before the running call's deadline; None outside a bounded call."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


class call_deadline:
    """Bound every Redis read, connect and retry inside to `seconds` in total.

    A deadline already running (an outer call) is kept: nested calls never extend it.
    A class, not a generator: it wraps every command, and costs a fraction of one.
    """

    __slots__ = ("seconds", "token")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.token: Token[float | None] | None = None

    def __enter__(self) -> None:
        if self.seconds is not None and _deadline.get() is None:
            self.token = _deadline.set(time.monotonic() + self.seconds)

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            _deadline.reset(self.token)
            self.token = None


_NO_DEADLINE = nullcontext()


def bounded_call(client: object) -> AbstractContextManager[None]:
    """One deadline, `client.call_timeout_s`, for a service call of several round trips.

    E.g. a session's HGET then its script, or EVALSHA then the script load after
    NOSCRIPT: together, not each, within the bound. A no-op for clients without one.
    """
    seconds = getattr(client, "call_timeout_s", None)
    return _NO_DEADLINE if seconds is None else call_deadline(seconds)


class BoundedRetry(Retry):
    """redis-py's Retry, with three changes that keep a call bounded in time.

    A refused password fails at once (AuthenticationError subclasses ConnectionError, so
    plain Retry would back off and retry it); a loop nested in another runs its operation
    once and lets the outer loop retry, so attempts never multiply; and with a
    `call_timeout_s`, no retry starts that the call's deadline cannot fit.

    Args:
        backoff: the delay before each retry.
        retries: retries after the first attempt.
        call_timeout_s: the total bound of one call, all attempts included; None for
            clients whose calls may block on purpose (workers, subscribers).
    """

    def __init__(
        self, backoff: AbstractBackoff, retries: int, *, call_timeout_s: float | None = None
    ) -> None:
        super().__init__(backoff, retries)
        self.call_timeout_s = call_timeout_s

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

        if _retrying.get():
            return self._once(do, fail, retryable, with_failure_count)
        token = _retrying.set(True)
        try:
            if self.call_timeout_s is None:
                return self._loop(do, fail, retryable, with_failure_count)
            with call_deadline(self.call_timeout_s):
                return self._loop(do, fail, retryable, with_failure_count)
        finally:
            _retrying.reset(token)

    def _once(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        retryable: Callable[[Exception], bool],
        count: bool,
    ) -> T:
        try:
            return do()
        except self._supported_errors as error:
            if retryable(error):
                fail(error, 1) if count else fail(error)
            raise

    def _loop(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        retryable: Callable[[Exception], bool],
        count: bool,
    ) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if not retryable(error):
                    raise
                failures += 1
                fail(error, failures) if count else fail(error)
                if failures > self._retries:
                    raise
                backoff = self._backoff.compute(failures)
                left = remaining_s()
                if left is not None and backoff + MIN_ATTEMPT_S >= left:
                    raise
                if backoff > 0:
                    time.sleep(backoff)


class _BoundedConnection(redis.connection.AbstractConnection):
    """Mixed into the pool's connection class: no read or connect outlives the call's deadline."""

    def read_response(self, *args: Any, timeout: Any = SENTINEL, **kwargs: Any) -> Any:
        left = remaining_s()
        if left is not None and timeout is SENTINEL:
            if left <= 0:
                self.disconnect()  # type: ignore[no-untyped-call]  # a late reply must not meet the next command
                raise redis.TimeoutError("Timeout: the call's deadline (REDIS_CALL_TIMEOUT) has passed")
            # Tighten only when it matters: settimeout costs a system call per read, and a
            # read that starts with 90 % of the budget left may use its own socket timeout.
            if self.socket_timeout is None or left < 0.9 * self.socket_timeout or _blocking.get():
                timeout = left
        return cast(Any, super()).read_response(*args, timeout=timeout, **kwargs)

    def _connect(self) -> Any:
        left = remaining_s()
        if left is None:
            return cast(Any, super())._connect()
        if left <= 0:
            raise TimeoutError("the call's deadline (REDIS_CALL_TIMEOUT) has passed")  # -> redis TimeoutError
        configured = self.socket_connect_timeout
        self.socket_connect_timeout = left if configured is None else min(configured, left)
        try:
            return cast(Any, super())._connect()
        finally:
            self.socket_connect_timeout = configured


_bounded_classes: dict[type[Any], type[Any]] = {}


def _bounded_connection_class(base: type[Any]) -> type[Any]:
    bounded = _bounded_classes.get(base)
    if bounded is None:
        bounded = type(f"Bounded{base.__name__}", (_BoundedConnection, base), {})
        _bounded_classes[base] = bounded
    return bounded


# Commands that wait on the server on purpose: where their own timeout is (seconds or ms).
_BLOCK_LAST_ARG_S = frozenset({"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX"})
_BLOCK_FIRST_ARG_S = frozenset({"BLMPOP", "BZMPOP"})


def blocking_s(args: tuple[Any, ...]) -> float | None:
    """How long a command may block on the server by design (inf: forever), or None.

    A call's deadline is its bound plus this: `WAIT 1 2000` must get its 2 s, and a
    blocking read without a timeout gets no deadline at all.
    """
    if not args:
        return None
    name = (args[0].decode() if isinstance(args[0], bytes) else str(args[0])).upper()
    try:
        if name in _BLOCK_LAST_ARG_S:
            seconds = float(args[-1])
        elif name in _BLOCK_FIRST_ARG_S:
            seconds = float(args[1])
        elif name == "WAIT":
            seconds = float(args[2]) / 1000
        elif name == "WAITAOF":
            seconds = float(args[3]) / 1000
        elif name in ("XREAD", "XREADGROUP"):
            words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
            upper = [w.upper() for w in words]
            if "BLOCK" not in upper:
                return None
            seconds = float(words[upper.index("BLOCK") + 1]) / 1000
        else:
            return None
    except (IndexError, ValueError):
        return None  # malformed: Redis refuses it, at once
    return math.inf if seconds == 0 else seconds


class BoundedRedis(redis.Redis):
    """A client whose every command, connect and retry included, ends within `call_timeout_s`.

    A blocking command (`WAIT`, `BLPOP`, `XREAD BLOCK` ...) gets its own timeout on top.
    """

    call_timeout_s: float | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        bound = self.call_timeout_s
        if bound is None:
            return cast(Any, super()).execute_command(*args, **options)
        extra = blocking_s(args)
        if extra is None:
            with call_deadline(bound):
                return cast(Any, super()).execute_command(*args, **options)
        token = _blocking.set(True)
        try:
            with call_deadline(None if math.isinf(extra) else bound + extra):
                return cast(Any, super()).execute_command(*args, **options)
        finally:
            _blocking.reset(token)


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
    if settings.sentinel is None:
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
    """
    settings = settings or get_settings()
    if call_timeout_s is not None:
        settings = web_tier_settings(settings, call_timeout_s)
    retry = BoundedRetry(_backoff(), settings.retry_attempts, call_timeout_s=call_timeout_s)
    kwargs = _client_kwargs(role, settings, pubsub, decode_responses, retry, _process_role)
    if uses_sentinel(role, settings):
        client = _sentinel_client(settings, kwargs)
    else:
        url = url_for(role, settings)
        try:
            client = BoundedRedis.from_url(url, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"{role.setting} cannot be used ({redact_url(url)}): {exc}") from None
    if call_timeout_s is not None:
        client.call_timeout_s = call_timeout_s  # type: ignore[attr-defined]
        pool = client.connection_pool
        pool.connection_class = _bounded_connection_class(pool.connection_class)
    return client


def web_tier_settings(settings: Settings, call_timeout_s: float) -> Settings:
    """`settings` with no single read or connect longer than the whole call may take."""
    return replace(
        settings,
        socket_timeout_s=min(settings.socket_timeout_s, call_timeout_s),
        connect_timeout_s=min(settings.connect_timeout_s, call_timeout_s),
    )


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S)


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
    }
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    return kwargs


def _sentinel_client(settings: Settings, kwargs: dict[str, Any]) -> redis.Redis:
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


def build_async_client(
    role: Role = Role.PRIMARY,
    settings: Settings | None = None,
    *,
    pubsub: bool = False,
    decode_responses: bool = True,
) -> redis.asyncio.Redis:
    """A `redis.asyncio` client for ASGI code, configured like `build_client` (no Sentinel).

    The web tier's: unless it is a subscriber's (`pubsub`, which blocks on purpose),
    every command ends within `REDIS_CALL_TIMEOUT`, retries included.
    """
    from redis.asyncio.retry import Retry as AsyncRetry

    settings = settings or get_settings()
    call_timeout_s = None if pubsub else settings.call_timeout_s
    url = url_for(role, settings)
    retry = AsyncRetry(_backoff(), settings.retry_attempts)
    kwargs = _client_kwargs(role, settings, pubsub, decode_responses, retry, f"{_process_role}-async")
    try:
        client = cast(BoundedAsyncRedis, BoundedAsyncRedis.from_url(url, **kwargs))
    except ValueError as exc:
        raise ConfigError(f"{role.setting} cannot be used ({redact_url(url)}): {exc}") from None
    client.call_timeout_s = call_timeout_s
    return client


class BoundedAsyncRedis(redis.asyncio.Redis):
    """An asyncio client whose every command, connect and retries included, ends within `call_timeout_s`.

    Cancelling a command is safe: redis-py closes a connection interrupted mid-reply.
    """

    call_timeout_s: float | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        parent = cast(Any, super())
        bound, extra = self.call_timeout_s, blocking_s(args)
        if bound is not None and extra is not None:
            bound = None if math.isinf(extra) else bound + extra
        if bound is None:
            return await parent.execute_command(*args, **options)
        try:
            async with asyncio.timeout(bound):
                return await parent.execute_command(*args, **options)
        except TimeoutError as exc:  # asyncio's (the builtin), not redis-py's: callers catch RedisError
            raise redis.TimeoutError(f"Timeout: no reply within REDIS_CALL_TIMEOUT ({bound} s)") from exc


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
    import time

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
        if exc is None or not isinstance(exc, redis.RedisError):
            return
        translated = self.translated(exc)
        if translated is not None:
            raise translated from exc

    def translated(self, exc: redis.RedisError) -> KryonixError | None:
        """The error `exc` becomes, without raising it; None when it passes through."""
        settings = self.settings or get_settings()
        setting = address_setting(self.role, settings)
        where = _describe(self.role, settings)
        if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
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
        elif self.refused_class is not None:
            doing = "" if self.action is None else f"could not {self.action}: "
            return self.refused_class(f"{doing}{type(exc).__name__}: {exc}")
        else:
            return None
        message = self.error_class.explain(detail, action=self.action)
        return self.error_class(message, role=self.role.value, setting=setting)


def is_full(exc: redis.RedisError) -> bool:
    """Whether Redis refused a write because maxmemory is reached under noeviction."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM" in str(exc)
    )


def address_setting(role: Role, settings: Settings) -> str:
    """The setting that says where `role`'s Redis is: REDIS_SENTINELS under Sentinel."""
    return "REDIS_SENTINELS" if uses_sentinel(role, settings) else role.setting


def _describe(role: Role, settings: Settings) -> str:
    if uses_sentinel(role, settings):
        assert settings.sentinel is not None
        hosts = ",".join(f"{h}:{p}" for h, p in settings.sentinel.addresses)
        return f"{role.value} Redis (REDIS_SENTINELS={hosts}, master {settings.sentinel.master_name})"
    url = url_for(role, settings)
    parts = urlsplit(url)
    target = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    return f"{role.value} Redis ({role.setting}={redact_url(url)}, {target})"
