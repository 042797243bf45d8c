"""Circuit breaker and log throttle: how the cache fails open without paying for it.

While the cache Redis is down every call would otherwise wait for a connect or socket
timeout before falling back to the fetcher. The breaker turns that into one cheap
check: after a few consecutive failures it opens, calls skip Redis entirely, and one
probe call is let through after a recovery delay that doubles (up to a cap) while
Redis stays down. Pure state plus an injected monotonic clock, so tests need no sleeping.

The other half of failing fast is the client: `default_cache_client()` gives up after
250 ms where the shared clients of `connections` wait seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum

import redis
import redis.asyncio

from cache import connections
from cache.appcache.core import InvalidCacheArgument, InvalidCacheArgumentType
from cache.connections import Role
from cache.settings import Settings, get_settings

DEFAULT_FAILURE_THRESHOLD = 3  # three failures in a row is an outage, not a lost packet
DEFAULT_RECOVERY_S = 1.0  # first probe one second after opening: a restart is noticed quickly
DEFAULT_MAX_RECOVERY_S = 30.0  # a long outage is probed at most every 30 s
DEFAULT_WARN_INTERVAL_S = 30.0  # one warning per 30 s is enough to page someone, not to flood logs
CACHE_SOCKET_TIMEOUT_S = 0.25  # a cache answer slower than this is worse than asking the database
CACHE_CONNECT_TIMEOUT_S = 0.25  # a connect slower than this on a LAN means the host is gone
CACHE_RETRY_ATTEMPTS = 1  # one retry rides over a pooled connection the server closed on restart

Monotonic = Callable[[], float]  # monotonic seconds (`clock`, elsewhere, is epoch seconds)


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls go to Redis
    OPEN = "open"  # calls skip Redis until the recovery delay has passed
    HALF_OPEN = "half_open"  # one probe call is in flight; the others still skip Redis


class CircuitBreaker:
    """Consecutive-failure circuit breaker, safe to share between threads.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        recovery_s: delay before the first probe after opening.
        max_recovery_s: cap of the delay, which doubles after every failed probe.
        enabled: `False` gives a breaker that never opens (the benchmark's baseline).
        monotonic: monotonic seconds; injected by tests.

    Raises:
        ValueError: a threshold below 1 or a delay that is not positive.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        recovery_s: float = DEFAULT_RECOVERY_S,
        max_recovery_s: float = DEFAULT_MAX_RECOVERY_S,
        enabled: bool = True,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise InvalidCacheArgumentType(f"failure_threshold must be an int, got {failure_threshold!r}")
        if failure_threshold < 1:
            raise InvalidCacheArgument(f"failure_threshold must be at least 1, got {failure_threshold}")
        if not recovery_s > 0 or not max_recovery_s >= recovery_s:
            raise InvalidCacheArgument(
                f"need 0 < recovery_s <= max_recovery_s, got recovery_s={recovery_s}, "
                f"max_recovery_s={max_recovery_s}"
            )
        self.failure_threshold = failure_threshold
        self.recovery_s = recovery_s
        self.max_recovery_s = max_recovery_s
        self.enabled = enabled
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._delay_s = recovery_s
        self._retry_at = 0.0
        self.opened = 0  # how often it opened (closed -> open), for counters

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """Whether this call may talk to Redis; `True` at most once per recovery delay while open."""
        if self._state is BreakerState.CLOSED:
            return True  # hot path: one attribute read, no lock
        with self._lock:
            now = self._monotonic()
            if self._state is BreakerState.CLOSED:  # type: ignore[comparison-overlap]  # another thread closed it
                return True
            if now < self._retry_at:
                return False
            # OPEN past its delay, or HALF_OPEN whose probe never reported back (its
            # thread died): let exactly one more caller probe.
            self._state = BreakerState.HALF_OPEN
            self._retry_at = now + self._delay_s
            return True

    def record_success(self) -> bool:
        """A Redis call succeeded. Returns `True` when this closed an open breaker."""
        if self._state is BreakerState.CLOSED and self._failures == 0:
            return False
        with self._lock:
            recovered = self._state is not BreakerState.CLOSED
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._delay_s = self.recovery_s
            return recovered

    def record_failure(self) -> bool:
        """A Redis call failed. Returns `True` when this (re)opened the breaker."""
        if not self.enabled:
            return False
        with self._lock:
            now = self._monotonic()
            if self._state is BreakerState.HALF_OPEN:
                self._delay_s = min(self._delay_s * 2, self.max_recovery_s)
                self._open(now)
                return True
            if self._state is BreakerState.OPEN:
                return False  # a call let through before it opened, failing late
            self._failures += 1
            if self._failures < self.failure_threshold:
                return False
            self.opened += 1
            self._open(now)
            return True

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._retry_at = now + self._delay_s


class LogThrottle:
    """Say "log now" at most once per interval and count what was held back in between."""

    def __init__(
        self, interval_s: float = DEFAULT_WARN_INTERVAL_S, monotonic: Monotonic = time.monotonic
    ) -> None:
        if not interval_s > 0:
            raise InvalidCacheArgument(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._next_at = float("-inf")
        self._suppressed = 0

    def ready(self) -> int | None:
        """`None` while throttled; otherwise the number of events held back since the last log."""
        with self._lock:
            now = self._monotonic()
            if now < self._next_at:
                self._suppressed += 1
                return None
            suppressed, self._suppressed = self._suppressed, 0
            self._next_at = now + self.interval_s
            return suppressed


class InvalidationBacklog:
    """Deletes and clears that could not reach Redis, kept to be replayed when it answers.

    Without this, a delete lost during a network blip would leave the old value in a
    Redis that never restarted, served until its TTL. Bounded: past `max_keys` the
    backlog turns into one clear of the namespace, which invalidates everything anyway.
    """

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.replaying = threading.Lock()  # one replay at a time; readers wait for it
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._clear = False
        self.dirty = False  # read without the lock on the hot path

    def add(self, names: tuple[str, ...], *, clear: bool = False) -> None:
        with self._lock:
            if clear or len(self._keys) + len(names) > self.max_keys:
                self._clear = True
                self._keys.clear()
            else:
                self._keys.update(names)
            self.dirty = True

    def pending(self) -> tuple[list[str], bool]:
        with self._lock:
            return sorted(self._keys), self._clear

    def done(self, names: list[str], *, clear: bool) -> None:
        """Forget what was replayed; anything added meanwhile stays for the next replay."""
        with self._lock:
            if clear:
                self._clear = False
            self._keys.difference_update(names)
            self.dirty = self._clear or bool(self._keys)


_default_lock = threading.Lock()
_default: tuple[Settings, redis.Redis, CircuitBreaker] | None = None


def fail_fast_settings(settings: Settings) -> Settings:
    """`settings` with the cache's short timeouts and single retry.

    connections.cache_redis() waits up to 5 s per command and retries 6 times: right for
    queues, but a cache must give up within a fraction of a request.
    """
    return replace(
        settings,
        socket_timeout_s=min(settings.socket_timeout_s, CACHE_SOCKET_TIMEOUT_S),
        connect_timeout_s=min(settings.connect_timeout_s, CACHE_CONNECT_TIMEOUT_S),
        retry_attempts=CACHE_RETRY_ATTEMPTS,
    )


def _defaults() -> tuple[Settings, redis.Redis, CircuitBreaker]:
    global _default
    settings = get_settings()
    with _default_lock:
        if _default is None or _default[0] is not settings:
            client = connections.build_client(
                Role.CACHE, fail_fast_settings(settings), call_timeout_s=settings.call_timeout_s
            )
            _default = (settings, client, CircuitBreaker())
        return _default


def default_cache_client() -> redis.Redis:
    """The process's fail-fast CACHE-role client (250 ms timeouts, one retry, every call
    bounded by `REDIS_CALL_TIMEOUT`), built on first use.

    Rebuilt when the settings are re-read (`reset_settings`); redis-py replaces its
    pooled sockets in a forked child by itself.
    """
    return _defaults()[1]


def default_breaker() -> CircuitBreaker:
    """The breaker shared by every service on `default_cache_client()`: one outage, one breaker."""
    return _defaults()[2]


def async_cache_client() -> redis.asyncio.Redis:
    """A new fail-fast CACHE-role asyncio client (as `default_cache_client()`, bytes replies);
    asyncio clients belong to one event loop, so build one per loop and close it."""
    settings = fail_fast_settings(get_settings())
    return connections.build_async_client(Role.CACHE, settings, decode_responses=False)
