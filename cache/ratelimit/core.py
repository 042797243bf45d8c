"""The rate limiter's pure core: policies, validation, decisions; no Redis calls.

Everything here is arithmetic on values the caller or the Lua script supplies, so it
is unit-tested table-driven without a server. `cache.ratelimit.service` is the I/O shell and
re-exports the public names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError

from cache.counters import BufferedCounters
from cache.errors import KryonixError
from cache.identifiers import IdentifierKind

MAX_LIMIT = 100_000  # an exact log keeps a member per admission: ~13 MB for a full key this size
MAX_WINDOW_S = 366 * 86_400  # a longer window is a bug, and keeps times far from float limits
MAX_NOW_MS = 2**53  # times travel to Lua as doubles, exact up to here
FAIL_CLOSED_RETRY_AFTER_S = 5.0  # clients back off long enough not to hammer a recovering Redis
COUNTERS_FLUSH_INTERVAL_S = 5.0  # shared decision counts lag by at most this; one HINCRBY batch per 5 s
OUTCOMES = ("allowed", "denied", "fail_open", "fail_closed")  # Redis's answers, then the failure policy's

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


class Decision(NamedTuple):
    """The outcome of one check; times are seconds from the moment of the check.

    An immutable record (a NamedTuple: built on every request, it costs a third of a
    frozen dataclass). Build it with keywords.

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


def resolution_to_ms(resolution_s: object, window_ms: int) -> int:
    """A log resolution in seconds (None: exact), checked, as whole milliseconds.

    Raises:
        InvalidRateLimit: not None or a finite number in (0, window].
    """
    if resolution_s is None:
        return 1
    if isinstance(resolution_s, bool) or not isinstance(resolution_s, int | float):
        raise InvalidRateLimit(
            f"resolution_seconds must be a number of seconds or None, got {resolution_s!r}"
        )
    message = (
        f"resolution_seconds must be > 0 and <= the window ({window_ms / 1000:g} s), got {resolution_s!r}"
    )
    if not math.isfinite(resolution_s) or resolution_s <= 0:
        raise InvalidRateLimit(message)
    # Compare whole milliseconds: 16.19 * 1000 is 16190.000000000002 in floating point.
    resolution_ms = max(1, round(resolution_s * 1000))
    if resolution_ms > window_ms:
        raise InvalidRateLimit(message)
    return resolution_ms


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
    allowed, used, retry_ms, reset_ms = reply  # Lua numbers arrive as Python ints
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


# --- decision counters ---------------------------------------------------------------------


class DecisionCounters(BufferedCounters[tuple[str, str], int]):
    """One process's checks by `(scope, outcome)`: totals since start and counts not yet flushed.

    The first interval starts at the first `flush_due`: times are the caller's monotonic
    clock (`now`, a limiter's injected clock), not this module's.
    """

    def __init__(self, flush_interval_s: float = COUNTERS_FLUSH_INTERVAL_S) -> None:
        if isinstance(flush_interval_s, bool) or not isinstance(flush_interval_s, int | float):
            raise InvalidRateLimit(f"flush_interval_s must be a number of seconds, got {flush_interval_s!r}")
        if not 0 < flush_interval_s < math.inf:
            raise InvalidRateLimit(f"flush_interval_s must be positive and finite, got {flush_interval_s!r}")
        super().__init__(float(flush_interval_s), lazy_start=True)

    def add(self, scope: str, outcome: str) -> None:
        self.incr((scope, outcome))

    def by_scope(self) -> dict[str, dict[str, int]]:
        """Totals since start: `{scope: {outcome: count}}`, every outcome present."""
        return _by_scope(list(self.totals().items()))


def counter_field(scope: str, outcome: str) -> str:
    """The field of `keys.rate_limit_counters()` for one scope and outcome: `<scope>:<outcome>`."""
    return f"{scope}:{outcome}"


def parse_counters(raw: Mapping[bytes | str, bytes | str | int]) -> dict[str, dict[str, int]]:
    """`{scope: {outcome: count}}` from the hash's fields (`HGETALL`), every outcome present.

    Fields that are not `<scope>:<outcome>` are skipped (a newer version may add some).

    Raises:
        ValueError: a counter that is not an integer; the message names the field.
    """
    items: list[tuple[tuple[str, str], int]] = []
    for name, value in raw.items():
        field_name = name.decode() if isinstance(name, bytes) else name
        scope, _, outcome = field_name.rpartition(":")
        if outcome not in OUTCOMES or not _SCOPE.fullmatch(scope):
            continue
        try:
            items.append(((scope, outcome), int(value)))
        except ValueError:
            raise ValueError(f"rate-limit counter {field_name!r} is not an integer: {value!r}") from None
    return _by_scope(items)


def _by_scope(items: Sequence[tuple[tuple[str, str], int]]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for (scope, outcome), count in sorted(items):
        result.setdefault(scope, dict.fromkeys(OUTCOMES, 0))[outcome] = count
    return result


# --- presets -----------------------------------------------------------------------------


class Spec(NamedTuple):
    """A checked policy in the units the script takes (what `Preset` and `check` hand the shell)."""

    scope: str
    failure_policy: FailurePolicy
    identifier_kind: IdentifierKind
    limit: int
    window_ms: int
    resolution_ms: int


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named policy: who is limited (scope, identifier kind), how much, how precisely,
    and what happens when Redis is down. Checked when built, so a bad configuration
    fails at start-up.

    `resolution_s=None` keeps the log exact; a number lets admissions less than that
    apart share one log member (see the README, "Rate limiting", key layout and memory).
    """

    scope: str
    limit: int
    window_s: float
    resolution_s: float | None = None
    failure_policy: FailurePolicy = FailurePolicy.OPEN
    identifier_kind: IdentifierKind = IdentifierKind.OPAQUE
    spec: Spec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window_ms = window_to_ms(self.window_s)
        spec = Spec(
            scope=check_scope(self.scope),
            # Accept the plain strings a config file holds ("closed", "ip").
            failure_policy=check_failure_policy(self.failure_policy),
            identifier_kind=check_identifier_kind(self.identifier_kind),
            limit=check_limit(self.limit),
            window_ms=window_ms,
            resolution_ms=resolution_to_ms(self.resolution_s, window_ms),
        )
        object.__setattr__(self, "failure_policy", spec.failure_policy)
        object.__setattr__(self, "identifier_kind", spec.identifier_kind)
        object.__setattr__(self, "spec", spec)

    @property
    def window_ms(self) -> int:
        return self.spec.window_ms


# Anonymous traffic: a Redis outage must not become a site outage, so open.
BY_IP = Preset(
    scope="ip", limit=100, window_s=60, failure_policy=FailurePolicy.OPEN, identifier_kind=IdentifierKind.IP
)
# Signed-in users: sessions already fail closed without Redis; the limit adds nothing then.
# Resolution 1% of the window: at most ~100 log members (~3 KB) instead of 1,000 (~100 KB).
BY_USER = Preset(scope="user", limit=1_000, window_s=60, resolution_s=0.6, failure_policy=FailurePolicy.OPEN)
# API keys: a quota clients pay for, and machine clients honour Retry-After; closed.
# Resolution 1% of the window: at most ~100 log members (~3 KB) instead of 10,000 (~1.1 MB).
API = Preset(
    scope="api",
    limit=10_000,
    window_s=3_600,
    resolution_s=36,
    failure_policy=FailurePolicy.CLOSED,
    identifier_kind=IdentifierKind.SECRET,
)
