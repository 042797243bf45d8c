"""The rate limiter's pure core: decisions, outage rules, counters; no Redis calls.

The policies themselves (`Preset`, `FailurePolicy`, their checks) are values in
`cache.limits`, which the settings hold.

Everything here is arithmetic on values the caller or the Lua script supplies, so it
is unit-tested table-driven without a server. `LimiterCore` holds every step of a check
but the script call itself; `cache.ratelimit.service` (sync, re-exporting the public
names) and `cache.ratelimit.async_service` (asyncio) only make that call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError

from cache import keys
from cache.cluster import is_cluster_outage
from cache.counters import BufferedCounters
from cache.identifiers import IdentifierKind, normalize
from cache.limits import (
    SCOPE,
    FailurePolicy,
    InvalidRateLimit,
    Preset,
    RateLimitError,
    Spec,
    check_failure_policy,
    check_identifier_kind,
    check_limit,
    check_scope,
    resolution_to_ms,
    window_to_ms,
)
from cache.ratelimit.outages import OutageLog
from cache.settings import get_settings

logger = logging.getLogger("cache.ratelimit.service")  # one logger for both twins

MAX_NOW_MS = 2**53  # times travel to Lua as doubles, exact up to here
FAIL_CLOSED_RETRY_AFTER_S = 5.0  # clients back off long enough not to hammer a recovering Redis
COUNTERS_FLUSH_INTERVAL_S = 5.0  # shared decision counts lag by at most this; one HINCRBY batch per 5 s
OUTCOMES = ("allowed", "denied", "fail_open", "fail_closed")  # Redis's answers, then the failure policy's
FAILURE_LOG_INTERVAL_S = 60.0  # one warning a minute per scope while Redis is down: pages, not floods
MAX_CACHED_SPECS = 256  # distinct (limit, window, resolution) a limiter remembers as validated

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


def is_outage(exc: Exception) -> bool:
    """Whether `exc` means Redis cannot serve the check now (apply the failure policy).

    Anything else (a script error, WRONGTYPE at our key) is a bug and must be loud.
    """
    if isinstance(exc, _OUTAGE_TYPES) or is_cluster_outage(exc):
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


PROCESS_STATS = DecisionCounters()
"""This process's decisions, sync and asyncio limiters alike (`ratelimit_stats()`)."""

PROCESS_STATS.reset_in_forked_children()


# --- the steps of a check ----------------------------------------------------------------


class LimiterCore:
    """Everything `RateLimiter` and `AsyncRateLimiter` do around their one script call.

    A check is `_prepare` (validate, build the key and ARGV), the script call, then
    `_decided` on a reply or `_unavailable` on a Redis error; `_decided` says whether
    the counters' flush is due, which the shell then sends. Arguments as `RateLimiter`'s.
    """

    def __init__(
        self,
        *,
        scope: str,
        failure_policy: FailurePolicy,
        identifier_kind: IdentifierKind,
        by_ip: Preset | None,
        by_user: Preset | None,
        api: Preset | None,
        ipv6_prefix: int | None,
        monotonic: Callable[[], float],
    ) -> None:
        self.scope = check_scope(scope)
        self.failure_policy = check_failure_policy(failure_policy)
        self.identifier_kind = check_identifier_kind(identifier_kind)
        if by_ip is None or by_user is None or api is None or ipv6_prefix is None:
            settings = get_settings()  # RATELIMIT_BY_IP, _BY_USER, _API, _IPV6_PREFIX
            by_ip = by_ip or settings.ratelimit_by_ip
            by_user = by_user or settings.ratelimit_by_user
            api = api or settings.ratelimit_api
            ipv6_prefix = settings.ratelimit_ipv6_prefix if ipv6_prefix is None else ipv6_prefix
        self.by_ip, self.by_user, self.api = by_ip, by_user, api
        normalize("::1", IdentifierKind.IP, ipv6_prefix=ipv6_prefix)  # a bad prefix fails here, not per check
        self.ipv6_prefix = ipv6_prefix
        self._specs: dict[tuple[object, ...], Spec] = {}
        self._monotonic = monotonic
        self._outages = OutageLog(FAILURE_LOG_INTERVAL_S, monotonic)

    def _spec_for(self, limit: object, window_s: object, resolution_s: object) -> Spec:
        """The checked Spec of `check`'s arguments, validated once per distinct policy.

        The types are part of the cache key: `True == 1` must not pass as a limit of 1.
        """
        cache_key = (limit, window_s, resolution_s, type(limit), type(window_s), type(resolution_s))
        spec = self._specs.get(cache_key)
        if spec is None:
            window_ms = window_to_ms(window_s)
            spec = Spec(
                scope=self.scope,
                failure_policy=self.failure_policy,
                identifier_kind=self.identifier_kind,
                limit=check_limit(limit),
                window_ms=window_ms,
                resolution_ms=resolution_to_ms(resolution_s, window_ms),
            )
            if len(self._specs) >= MAX_CACHED_SPECS:
                self._specs.clear()
            self._specs[cache_key] = spec
        return spec

    def _prepare(
        self, spec: Spec, identifier: object, cost: object, now_ms: object
    ) -> tuple[str, list[str | int]]:
        """The key and ARGV of `ratelimit_check.lua`; validates everything before any I/O."""
        _, _, kind, limit, window_ms, resolution_ms = spec
        units = check_cost(cost, limit)
        now_arg = "" if now_ms is None else str(check_now_ms(now_ms))
        key = keys.rate_limit_log(
            spec.scope, window_ms, normalize(identifier, kind, ipv6_prefix=self.ipv6_prefix)
        )
        return key, [now_arg, window_ms, limit, units, resolution_ms]

    def _unavailable(self, spec: Spec, exc: Exception) -> Decision:
        """The failure policy's decision for an outage, counted and logged.

        Raises:
            RateLimitError: `exc` is no outage (a refused script): a bug, loud.
        """
        scope, policy, _, limit, window_ms, _ = spec
        if not is_outage(exc):
            raise RateLimitError(
                f"rate limit {scope!r}: Redis refused the check: {type(exc).__name__}: {exc}"
            ) from exc
        self._outages.failed(scope, policy, exc)
        decision = unavailable_decision(
            policy, scope=scope, limit=limit, window_ms=window_ms, error=f"{type(exc).__name__}: {exc}"
        )
        PROCESS_STATS.add(scope, "fail_open" if decision.allowed else "fail_closed")
        return decision

    def _decided(self, spec: Spec, reply: Sequence[int]) -> tuple[Decision, float | None]:
        """The decision for the script's reply, counted; and `now` when the counters' flush is due.

        Only after Redis answered: a check during an outage never waits on a flush.
        """
        self._outages.succeeded(spec.scope)
        decision = decision_from_reply(reply, scope=spec.scope, limit=spec.limit, window_ms=spec.window_ms)
        PROCESS_STATS.add(spec.scope, "allowed" if decision.allowed else "denied")
        now = self._monotonic()
        return decision, now if PROCESS_STATS.flush_due(now) else None


def flush_failed(exc: Exception) -> None:
    """A flush piggybacked on a check failed: the counts are kept for the next one, the check stands."""
    logger.debug("rate limit counters not flushed: %s: %s", type(exc).__name__, exc)
