"""Every Redis call bounded in time: one deadline per call, retries that never nest.

redis-py nests retry loops (command > connect > handshake > health-check PING), each
with the full attempt count; with a server that accepts connections but never answers,
that blocked a call for minutes. Here only the outermost loop retries, within the call's
deadline (`REDIS_CALL_TIMEOUT` for the web tier), and no read or connect outlives it
(docs/reliability.md, "Time bounds"). `cache.connections` builds the clients that use these.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
import redis.connection
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.utils import SENTINEL

T = TypeVar("T")

RETRY_BACKOFF_BASE_S = 0.05  # first retry after ~50 ms
RETRY_BACKOFF_CAP_S = 1.0  # never wait more than 1 s between two attempts


def default_backoff() -> ExponentialWithJitterBackoff:
    """The delay before each retry of every client: jittered, exponential, capped."""
    return ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S)


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


def bounded_connection_class(base: type[Any]) -> type[Any]:
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


class BoundedAsyncRedis(redis.asyncio.Redis):
    """An asyncio client whose every command, connect and retries included, ends within `call_timeout_s`.

    Cancelling a command is safe: redis-py closes a connection interrupted mid-reply.
    """

    call_timeout_s: float | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await bounded_async_call(
            cast(Any, super()).execute_command, self.call_timeout_s, args, options
        )


async def bounded_async_call(
    execute: Callable[..., Awaitable[Any]],
    bound: float | None,
    args: tuple[Any, ...],
    options: dict[str, Any],
) -> Any:
    """`await execute(*args, **options)` within `bound` seconds (plus a blocking command's own wait).

    Shared by the asyncio clients, single server and cluster: the bound is one
    `asyncio.timeout`, and its expiry is raised as redis-py's TimeoutError.
    """
    extra = blocking_s(args)
    if bound is not None and extra is not None:
        bound = None if math.isinf(extra) else bound + extra
    if bound is None:
        return await execute(*args, **options)
    try:
        async with asyncio.timeout(bound):
            return await execute(*args, **options)
    except TimeoutError as exc:  # asyncio's (the builtin), not redis-py's: callers catch RedisError
        raise redis.TimeoutError(f"Timeout: no reply within REDIS_CALL_TIMEOUT ({bound} s)") from exc
