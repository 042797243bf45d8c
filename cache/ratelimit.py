"""Rate limits on the PRIMARY Redis: an exact sliding log, one atomic script, one round trip.

The naive `INCR` then `EXPIRE` leaves a key without TTL when the process dies between
the two calls (that client is locked out for good) and admits twice the limit across a
fixed-window boundary. Here one Lua script (`lua/ratelimit_check.lua`, EVALSHA,
reloaded on NOSCRIPT) trims the identifier's log of admitted requests to the window,
counts what is left, and either admits (ZADD + PEXPIRE in the same atomic step) or
denies with the exact time at which the request would fit. No window of
`window_seconds` ever holds more than `limit` admitted units. docs/ratelimit.md has the
algorithm, the key layout, memory per key, presets, headers and failure policy.

When Redis cannot answer, each limiter follows its failure policy: fail open (admit,
log, count) or fail closed (deny with a reason); `ratelimit_stats()` has the counts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

import redis
from redis import Redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError

from cache import connections, keys
from cache.errors import KryonixError
from cache.identifiers import IdentifierKind, normalize

logger = logging.getLogger(__name__)

MAX_LIMIT = 100_000  # one log member per admitted request: a full key of this size is ~9 MB
MAX_WINDOW_S = 366 * 86_400  # a longer window is a bug, and keeps times far from float limits
MAX_NOW_MS = 2**53  # times travel to Lua as doubles, exact up to here
FAIL_CLOSED_RETRY_AFTER_S = 5.0  # clients back off long enough not to hammer a recovering Redis
FAILURE_LOG_INTERVAL_S = 60.0  # one warning a minute per scope while Redis is down: pages, not floods

_SCOPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Replies that mean "Redis cannot serve us now" rather than "our call is wrong".
_OUTAGE_TYPES = (
    redis.ConnectionError,  # also refused passwords and a server still loading its data
    redis.TimeoutError,
    OutOfMemoryError,  # a full noeviction primary refuses the admission
    ReadOnlyError,  # a replica after failover, before the client follows the new master
    TryAgainError,
    ClusterDownError,
)
_OUTAGE_PREFIXES = ("NOAUTH", "WRONGPASS", "NOPERM", "LOADING", "BUSY", "MASTERDOWN", "NOREPLICAS", "OOM")


class FailurePolicy(StrEnum):
    OPEN = "open"  # Redis down: admit, log, count
    CLOSED = "closed"  # Redis down: deny with a reason and a Retry-After


class InvalidRateLimit(KryonixError, ValueError):
    """A limit, window, cost, scope or time the limiter will not use; the message names it."""


class RateLimitError(KryonixError):
    """Redis rejected the check for a reason that is not an outage (a bug, a foreign value at the key)."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The outcome of one check; times are seconds from the moment of the check.

    `remaining` counts units still available in the window after this request.
    `reset_after_s` is when the whole limit is available again (the window is empty);
    `retry_after_s` is when this request, with its cost, would be admitted (0 when it
    was). `degraded` means Redis was not consulted and the failure policy decided;
    `reason` explains a denial or a degraded answer, for logs rather than clients.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float
    retry_after_s: float
    window_s: float
    scope: str
    reason: str | None = None
    degraded: bool = False


# --- pure core ---------------------------------------------------------------------------


def check_scope(scope: object) -> str:
    """Raises InvalidRateLimit unless `scope` is 1-32 of `a-z0-9_-`, starting with a letter."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise InvalidRateLimit(
            f"scope must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter, got {scope!r}"
        )
    return scope


def check_limit(limit: object) -> int:
    """Raises InvalidRateLimit unless `limit` is an int in 1..MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidRateLimit(f"limit must be an int, got {limit!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRateLimit(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def window_to_ms(window_s: object) -> int:
    """A window in seconds, checked, as whole milliseconds (at least 1).

    Raises:
        InvalidRateLimit: not a finite number in (0, MAX_WINDOW_S].
    """
    if isinstance(window_s, bool) or not isinstance(window_s, int | float):
        raise InvalidRateLimit(f"window_seconds must be a number of seconds, got {window_s!r}")
    if not math.isfinite(window_s) or not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidRateLimit(f"window_seconds must be > 0 and <= {MAX_WINDOW_S}, got {window_s!r}")
    return max(1, round(window_s * 1000))


def check_cost(cost: object, limit: int) -> int:
    """Raises InvalidRateLimit unless `cost` is an int in 1..limit (a larger one could never pass)."""
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise InvalidRateLimit(f"cost must be an int, got {cost!r}")
    if not 1 <= cost <= limit:
        raise InvalidRateLimit(f"cost must be between 1 and the limit ({limit}), got {cost}")
    return cost


def check_now_ms(now_ms: object) -> int:
    """Raises InvalidRateLimit unless `now_ms` is an int of milliseconds in 0..MAX_NOW_MS."""
    if isinstance(now_ms, bool) or not isinstance(now_ms, int):
        raise InvalidRateLimit(f"now_ms must be an int of milliseconds, got {now_ms!r}")
    if not 0 <= now_ms <= MAX_NOW_MS:
        raise InvalidRateLimit(f"now_ms must be between 0 and {MAX_NOW_MS}, got {now_ms}")
    return now_ms


def check_failure_policy(policy: object) -> FailurePolicy:
    """Raises InvalidRateLimit unless `policy` is a FailurePolicy or its value ('open', 'closed')."""
    try:
        return FailurePolicy(policy)  # type: ignore[arg-type]  # any value: the enum rejects the bad ones
    except ValueError:
        raise InvalidRateLimit(f"failure_policy must be 'open' or 'closed', got {policy!r}") from None


def check_identifier_kind(kind: object) -> IdentifierKind:
    """Raises InvalidRateLimit unless `kind` is an IdentifierKind or its value ('ip', 'opaque', 'secret')."""
    try:
        return IdentifierKind(kind)  # type: ignore[arg-type]  # any value: the enum rejects the bad ones
    except ValueError:
        raise InvalidRateLimit(f"identifier_kind must be 'ip', 'opaque' or 'secret', got {kind!r}") from None


def decision_from_reply(reply: Sequence[int], *, scope: str, limit: int, window_ms: int) -> Decision:
    """The Decision for the script's reply `{allowed, used, retry_after_ms, reset_after_ms}`."""
    allowed, used, retry_ms, reset_ms = (int(value) for value in reply)
    retry_after_s = max(0, retry_ms) / 1000
    reason = None
    if not allowed:
        reason = (
            f"rate limit {scope!r} exceeded: {limit} per {_seconds(window_ms / 1000)}; "
            f"retry after {_seconds(retry_after_s)}"
        )
    return Decision(
        allowed=bool(allowed),
        limit=limit,
        remaining=max(0, limit - used),
        reset_after_s=max(0, reset_ms) / 1000,
        retry_after_s=retry_after_s,
        window_s=window_ms / 1000,
        scope=scope,
        reason=reason,
    )


def unavailable_decision(
    policy: FailurePolicy, *, scope: str, limit: int, window_ms: int, error: str
) -> Decision:
    """What a limiter answers when Redis cannot: admit (OPEN) or deny (CLOSED), marked degraded."""
    if policy is FailurePolicy.OPEN:
        return Decision(
            allowed=True,
            limit=limit,
            remaining=limit,
            reset_after_s=0.0,
            retry_after_s=0.0,
            window_s=window_ms / 1000,
            scope=scope,
            reason=f"rate limit {scope!r} not checked, Redis unavailable ({error}); failing open",
            degraded=True,
        )
    return Decision(
        allowed=False,
        limit=limit,
        remaining=0,
        reset_after_s=FAIL_CLOSED_RETRY_AFTER_S,
        retry_after_s=FAIL_CLOSED_RETRY_AFTER_S,
        window_s=window_ms / 1000,
        scope=scope,
        reason=(
            f"rate limit {scope!r} could not be checked, Redis unavailable ({error}); "
            f"failing closed, retry after {_seconds(FAIL_CLOSED_RETRY_AFTER_S)}"
        ),
        degraded=True,
    )


def is_outage(exc: redis.RedisError) -> bool:
    """Whether `exc` means Redis cannot serve the check now (apply the failure policy).

    Anything else (a script error, WRONGTYPE at our key) is a bug and must be loud.
    """
    if isinstance(exc, _OUTAGE_TYPES):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_OUTAGE_PREFIXES)


def _seconds(value: float) -> str:
    return f"{value:g} s"


# --- presets -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named policy: who is limited (scope, identifier kind), how much, and what happens
    when Redis is down. Checked when built, so a bad configuration fails at start-up."""

    scope: str
    limit: int
    window_s: float
    failure_policy: FailurePolicy = FailurePolicy.OPEN
    identifier_kind: IdentifierKind = IdentifierKind.OPAQUE

    def __post_init__(self) -> None:
        check_scope(self.scope)
        check_limit(self.limit)
        window_to_ms(self.window_s)
        # Accept the plain strings a config file holds ("closed", "ip").
        object.__setattr__(self, "failure_policy", check_failure_policy(self.failure_policy))
        object.__setattr__(self, "identifier_kind", check_identifier_kind(self.identifier_kind))

    @property
    def window_ms(self) -> int:
        return window_to_ms(self.window_s)


# Anonymous traffic: a Redis outage must not become a site outage, so open.
BY_IP = Preset(
    scope="ip", limit=100, window_s=60, failure_policy=FailurePolicy.OPEN, identifier_kind=IdentifierKind.IP
)
# Signed-in users: sessions already fail closed without Redis; the limit adds nothing then.
BY_USER = Preset(scope="user", limit=1_000, window_s=60, failure_policy=FailurePolicy.OPEN)
# API keys: a quota clients pay for, and machine clients honour Retry-After; closed.
API = Preset(
    scope="api",
    limit=10_000,
    window_s=3_600,
    failure_policy=FailurePolicy.CLOSED,
    identifier_kind=IdentifierKind.SECRET,
)


# --- counters and outage logging -----------------------------------------------------------

OUTCOMES = ("allowed", "denied", "fail_open", "fail_closed")


class _Stats:
    """Per-process counters by scope and outcome, safe to share between threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, scope: str, outcome: str) -> None:
        with self.lock:
            self.counts[scope, outcome] = self.counts.get((scope, outcome), 0) + 1

    def by_scope(self) -> dict[str, dict[str, int]]:
        with self.lock:
            items = list(self.counts.items())
        result: dict[str, dict[str, int]] = {}
        for (scope, outcome), count in items:
            result.setdefault(scope, dict.fromkeys(OUTCOMES, 0))[outcome] = count
        return result


_stats = _Stats()


def ratelimit_stats() -> dict[str, int]:
    """This process's checks since start: allowed, denied (by Redis), fail_open, fail_closed."""
    totals = dict.fromkeys(OUTCOMES, 0)
    for counts in _stats.by_scope().values():
        for outcome, count in counts.items():
            totals[outcome] += count
    return totals


def ratelimit_stats_by_scope() -> dict[str, dict[str, int]]:
    """The same counts per scope (`ip`, `user`, `api`, ...), for labelled metrics."""
    return _stats.by_scope()


def reset_ratelimit_stats() -> None:
    """Zero the counters (tests; a forked child starts from zero on its own)."""
    global _stats
    _stats = _Stats()


os.register_at_fork(after_in_child=reset_ratelimit_stats)


class _OutageLog:
    """Warns on the first failure of a scope, then at most once per interval, and once on recovery."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.lock = threading.Lock()
        self.down: dict[str, tuple[float, int]] = {}  # scope -> (last warning at, failures since)

    def failed(self, scope: str, policy: FailurePolicy, exc: BaseException) -> None:
        now = self.clock()
        with self.lock:
            last, count = self.down.get(scope, (-math.inf, 0))
            if now - last < self.interval_s:
                self.down[scope] = (last, count + 1)
                return
            self.down[scope] = (now, 0)
        logger.warning(
            "rate limit %r: Redis unavailable, failing %s (%d more failures since the last warning): %s: %s",
            scope,
            policy.value,
            count,
            type(exc).__name__,
            exc,
        )

    def succeeded(self, scope: str) -> None:
        if scope not in self.down:  # the common case, without taking the lock
            return
        with self.lock:
            if self.down.pop(scope, None) is None:
                return
        logger.info("rate limit %r: Redis reachable again", scope)


# --- I/O shell ---------------------------------------------------------------------------


@cache
def _lua(name: str) -> str:
    return (resources.files("cache") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class RateLimiter:
    """Sliding-window rate limits on the PRIMARY Redis; see docs/ratelimit.md.

    Args:
        redis: a PRIMARY client (never the evicting cache); defaults to `connections.primary()`.
            Its timeouts and retries bound how long a check waits while Redis is down.
        scope: names the limits `check` keeps (part of every key), e.g. `login`.
        failure_policy: what `check` answers when Redis is unreachable.
        identifier_kind: how `check` normalises identifiers (IP, opaque, secret).
        by_ip, by_user, api: the presets behind `limit_by_ip`, `limit_by_user`, `limit_api`.
        monotonic: clock for throttling outage warnings; injected by tests.

    Raises:
        InvalidRateLimit: a bad scope or policy.
    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        scope: str = "default",
        failure_policy: FailurePolicy = FailurePolicy.OPEN,
        identifier_kind: IdentifierKind = IdentifierKind.OPAQUE,
        by_ip: Preset = BY_IP,
        by_user: Preset = BY_USER,
        api: Preset = API,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scope = check_scope(scope)
        self.failure_policy = check_failure_policy(failure_policy)
        self.identifier_kind = check_identifier_kind(identifier_kind)
        self.by_ip, self.by_user, self.api = by_ip, by_user, api
        self.redis = redis if redis is not None else connections.primary()
        self._script = self.redis.register_script(_lua("ratelimit_check"))
        self._outages = _OutageLog(FAILURE_LOG_INTERVAL_S, monotonic)

    def check(
        self,
        identifier: str | int,
        limit: int,
        window_seconds: float,
        *,
        cost: int = 1,
        now_ms: int | None = None,
    ) -> Decision:
        """Count one request of `identifier` against `limit` units per `window_seconds`.

        Args:
            identifier: who is limited; normalised by the limiter's identifier kind.
            limit: most units admitted in any window (1..MAX_LIMIT).
            window_seconds: the sliding window; limits of one scope with different
                windows are kept apart.
            cost: units this request uses (1..limit); a denied request uses none.
            now_ms: the time of the request on the caller's clock, for tests and
                replays; by default the Redis server's clock, shared by every process.

        Returns:
            The decision; never raises for an unreachable Redis (see the failure policy).

        Raises:
            InvalidRateLimit: a bad limit, window, cost or time.
            InvalidIdentifier: an identifier that cannot be normalised.
            RateLimitError: Redis refused the script for a reason other than an outage.
        """
        window_ms = window_to_ms(window_seconds)
        limit = check_limit(limit)
        return self._check(
            self.scope, self.failure_policy, self.identifier_kind, identifier, limit, window_ms, cost, now_ms
        )

    def check_preset(
        self, preset: Preset, identifier: str | int, *, cost: int = 1, now_ms: int | None = None
    ) -> Decision:
        """`check` under `preset`'s scope, limit, window, identifier kind and failure policy."""
        return self._check(
            preset.scope,
            preset.failure_policy,
            preset.identifier_kind,
            identifier,
            preset.limit,
            preset.window_ms,
            cost,
            now_ms,
        )

    def limit_by_ip(self, ip: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """The per-address limit (default 100/min, IPv6 by /64, fails open)."""
        return self.check_preset(self.by_ip, ip, cost=cost, now_ms=now_ms)

    def limit_by_user(self, user_id: str | int, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """The per-user limit (default 1000/min, fails open)."""
        return self.check_preset(self.by_user, user_id, cost=cost, now_ms=now_ms)

    def limit_api(self, api_key: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """The per-API-key quota (default 10,000/hour, key hashed, fails closed)."""
        return self.check_preset(self.api, api_key, cost=cost, now_ms=now_ms)

    def _check(
        self,
        scope: str,
        policy: FailurePolicy,
        kind: IdentifierKind,
        identifier: object,
        limit: int,
        window_ms: int,
        cost: object,
        now_ms: object,
    ) -> Decision:
        units = check_cost(cost, limit)
        now_arg = "" if now_ms is None else str(check_now_ms(now_ms))
        key = keys.rate_limit_log(scope, window_ms, normalize(identifier, kind))
        try:
            reply = self._script(keys=[key], args=[now_arg, window_ms, limit, units])
        except redis.RedisError as exc:
            if not is_outage(exc):
                raise RateLimitError(
                    f"rate limit {scope!r}: Redis refused the check: {type(exc).__name__}: {exc}"
                ) from exc
            self._outages.failed(scope, policy, exc)
            decision = unavailable_decision(
                policy, scope=scope, limit=limit, window_ms=window_ms, error=f"{type(exc).__name__}: {exc}"
            )
            _stats.add(scope, "fail_open" if decision.allowed else "fail_closed")
            return decision
        self._outages.succeeded(scope)
        decision = decision_from_reply(reply, scope=scope, limit=limit, window_ms=window_ms)
        _stats.add(scope, "allowed" if decision.allowed else "denied")
        return decision
