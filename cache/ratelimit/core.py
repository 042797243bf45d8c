"""The rate limiter's pure core: decisions, outage rules, counters; no Redis calls.

The policies themselves (`Preset`, `FailurePolicy`, their checks) are values in
`cache.limits`, which the settings hold.

Everything here is arithmetic on values the caller or the Lua script supplies, so it
is unit-tested table-driven without a server. `cache.ratelimit.service` is the I/O shell and
re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError

from cache.counters import BufferedCounters
from cache.limits import SCOPE, FailurePolicy, InvalidRateLimit

MAX_NOW_MS = 2**53  # times travel to Lua as doubles, exact up to here
FAIL_CLOSED_RETRY_AFTER_S = 5.0  # clients back off long enough not to hammer a recovering Redis
COUNTERS_FLUSH_INTERVAL_S = 5.0  # shared decision counts lag by at most this; one HINCRBY batch per 5 s
OUTCOMES = ("allowed", "denied", "fail_open", "fail_closed")  # Redis's answers, then the failure policy's

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
        if outcome not in OUTCOMES or not SCOPE.fullmatch(scope):
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
