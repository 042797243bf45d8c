"""Rate limits on the PRIMARY Redis: an exact sliding log, one atomic script, one round trip.

The naive `INCR` then `EXPIRE` leaves a key without TTL when the process dies between
the two calls (that client is locked out for good) and admits twice the limit across a
fixed-window boundary. Here one Lua script (`lua/ratelimit_check.lua`, EVALSHA,
reloaded on NOSCRIPT) keeps a log of admitted units per identifier, counts the units
in the sliding window, and either admits (writing the log and its TTL in the same
atomic step) or denies with the exact time at which the request would fit. No window
of `window_s` ever holds more than `limit` admitted units. docs/ratelimit.md has
the algorithm, the key layout, memory per key, presets, headers and failure policy.

When Redis cannot answer, each limiter follows its failure policy: fail open (admit,
log, count) or fail closed (deny with a reason). Decisions are counted in memory
(`ratelimit_stats()`) and added to one hash on the primary at most every 5 s, inside a
check that already reached Redis, so `ratelimit_counters()` and the metrics exporter see
every process's totals without a second round trip per check.
The pure core (policies, validation, decisions, every step of a check but the script
call) lives in `cache.ratelimit.core`, shared with the asyncio twin
`cache.ratelimit.async_service`, and is re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

from cache import connections, keys, lua
from cache.connections import REDIS_ERRORS, Role
from cache.identifiers import IdentifierKind
from cache.limits import (
    API,
    BY_IP,
    BY_USER,
    MAX_LIMIT,
    MAX_WINDOW_S,
    FailurePolicy,
    InvalidRateLimit,
    Preset,
    RateLimitError,
    Spec,
    check_limit,
    check_scope,
    resolution_to_ms,
    window_to_ms,
)
from cache.ratelimit.core import (
    COUNTERS_FLUSH_INTERVAL_S,
    FAIL_CLOSED_RETRY_AFTER_S,
    MAX_NOW_MS,
    OUTCOMES,
    PROCESS_STATS,
    Decision,
    DecisionCounters,
    LimiterCore,
    check_cost,
    check_now_ms,
    counter_field,
    decision_from_reply,
    flush_failed,
    is_outage,
    parse_counters,
    unavailable_decision,
)
from cache.retry import bounded_call

__all__ = [
    "API",
    "BY_IP",
    "BY_USER",
    "COUNTERS_FLUSH_INTERVAL_S",
    "FAIL_CLOSED_RETRY_AFTER_S",
    "MAX_LIMIT",
    "MAX_NOW_MS",
    "MAX_WINDOW_S",
    "OUTCOMES",
    "Decision",
    "DecisionCounters",
    "FailurePolicy",
    "InvalidRateLimit",
    "Preset",
    "RateLimitError",
    "RateLimiter",
    "check_cost",
    "check_limit",
    "check_now_ms",
    "check_scope",
    "decision_from_reply",
    "flush_ratelimit_stats",
    "is_outage",
    "ratelimit_counters",
    "ratelimit_stats",
    "ratelimit_stats_by_scope",
    "read_ratelimit_counters",
    "reset_ratelimit_stats",
    "resolution_to_ms",
    "unavailable_decision",
    "window_to_ms",
]

# --- counters ------------------------------------------------------------------------------


def ratelimit_stats() -> dict[str, int]:
    """This process's checks since start: allowed, denied (by Redis), fail_open, fail_closed."""
    totals = dict.fromkeys(OUTCOMES, 0)
    for counts in PROCESS_STATS.by_scope().values():
        for outcome, count in counts.items():
            totals[outcome] += count
    return totals


def ratelimit_stats_by_scope() -> dict[str, dict[str, int]]:
    """The same counts per scope (`ip`, `user`, `api`, ...), for this process only."""
    return PROCESS_STATS.by_scope()


def reset_ratelimit_stats() -> None:
    """Zero the counters (tests; a forked child starts from zero on its own, or it would
    flush its parent's counts a second time)."""
    PROCESS_STATS.reset()


def flush_counters(client: Redis, now: float | None = None) -> None:
    """Add this process's unflushed counts to `keys.rate_limit_counters()`: one pipelined
    round trip, none when there is nothing to add.

    Raises:
        redis.RedisError: Redis failed; the counts are kept for the next flush.
    """

    def write(pending: dict[tuple[str, str], int]) -> None:
        pipe = client.pipeline(transaction=False)
        for (scope, outcome), count in pending.items():
            pipe.hincrby(keys.rate_limit_counters(), counter_field(scope, outcome), count)
        pipe.execute()

    PROCESS_STATS.flush(write, now)


def read_ratelimit_counters(client: Redis) -> dict[str, dict[str, int]]:
    """Every process's flushed totals, `{scope: {outcome: count}}`; reads only (metrics scrapes).

    Raises:
        redis.RedisError: Redis failed.
        ValueError: a counter in the hash is not an integer.
    """
    return parse_counters(client.hgetall(keys.rate_limit_counters()))


def ratelimit_counters(client: Redis | None = None) -> dict[str, dict[str, int]]:
    """Decisions per scope summed over every process using this primary (this one flushed first).

    What the status command reads; other processes' checks show up within their flush
    interval (`COUNTERS_FLUSH_INTERVAL_S`) as long as they keep checking, or when they
    call `flush_ratelimit_stats()` (e.g. at the end of a forked job).

    Raises:
        RedisUnavailable: the primary cannot be reached; the message names REDIS_URL.
    """
    redis_client = client if client is not None else connections.primary()
    with connections.translate_errors(Role.PRIMARY):
        flush_counters(redis_client)
        return read_ratelimit_counters(redis_client)


def flush_ratelimit_stats(client: Redis | None = None) -> bool:
    """Push this process's unflushed counts now (before exit, at the end of a forked job).

    Returns:
        `False` instead of raising when Redis is unavailable; the counts are kept.
    """
    try:
        flush_counters(client if client is not None else connections.primary())
    except REDIS_ERRORS:
        return False
    return True


# --- I/O shell ---------------------------------------------------------------------------


class RateLimiter(LimiterCore):
    """Sliding-window rate limits on the PRIMARY Redis; see docs/ratelimit.md.

    Args:
        client: a PRIMARY client (never the evicting cache); defaults to `connections.primary()`.
            Its timeouts and retries bound how long a check waits while Redis is down.
        scope: names the limits `check` keeps (part of every key), e.g. `login`.
        failure_policy: what `check` answers when Redis is unreachable.
        identifier_kind: how `check` normalises identifiers (IP, opaque, secret).
        by_ip, by_user, api: the presets behind `limit_by_ip`, `limit_by_user`, `limit_api`;
            by default the settings' (`RATELIMIT_BY_IP`, `RATELIMIT_BY_USER`, `RATELIMIT_API`).
        ipv6_prefix: native IPv6 clients of one block of this many bits share a limit;
            by default `RATELIMIT_IPV6_PREFIX` (56).
        monotonic: clock for throttling outage warnings and for the counters' flush
            interval; injected by tests.

    Raises:
        InvalidRateLimit: a bad scope or policy.
    """

    def __init__(
        self,
        client: Redis | None = None,
        *,
        scope: str = "default",
        failure_policy: FailurePolicy = FailurePolicy.OPEN,
        identifier_kind: IdentifierKind = IdentifierKind.OPAQUE,
        by_ip: Preset | None = None,
        by_user: Preset | None = None,
        api: Preset | None = None,
        ipv6_prefix: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            scope=scope,
            failure_policy=failure_policy,
            identifier_kind=identifier_kind,
            by_ip=by_ip,
            by_user=by_user,
            api=api,
            ipv6_prefix=ipv6_prefix,
            monotonic=monotonic,
        )
        self.client = client if client is not None else connections.primary()
        self._script = lua.script(self.client, "ratelimit_check")

    def check(
        self,
        identifier: str | int,
        limit: int,
        window_s: float,
        *,
        cost: int = 1,
        now_ms: int | None = None,
        resolution_s: float | None = None,
    ) -> Decision:
        """Count one request of `identifier` against `limit` units per `window_s`.

        Args:
            identifier: who is limited; normalised by the limiter's identifier kind.
            limit: most units admitted in any window (1..MAX_LIMIT).
            window_s: the sliding window; limits of one scope with different
                windows are kept apart.
            cost: units this request uses (1..limit); a denied request uses none.
            now_ms: the time of the request on the caller's clock, for tests and
                replays; by default the Redis server's clock, shared by every process.
            resolution_s: None keeps the log exact; a number (at most the window)
                bounds its memory to about window / resolution members, holding units
                back at most that much longer. Never admits more than `limit` either way.

        Returns:
            The decision; never raises for an unreachable Redis (see the failure policy).

        Raises:
            InvalidRateLimit: a bad limit, window, cost, time or resolution.
            InvalidIdentifier: an identifier that cannot be normalised.
            RateLimitError: Redis refused the script for a reason other than an outage.
        """
        return self._check(self._spec_for(limit, window_s, resolution_s), identifier, cost, now_ms)

    def check_preset(
        self, preset: Preset, identifier: str | int, *, cost: int = 1, now_ms: int | None = None
    ) -> Decision:
        """`check` under `preset`'s scope, limit, window, resolution, identifier kind and failure policy."""
        return self._check(preset.spec, identifier, cost, now_ms)

    def limit_by_ip(self, ip: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """The per-address limit (default 100/min, IPv6 by /56, embedded IPv4 by itself, fails open)."""
        return self.check_preset(self.by_ip, ip, cost=cost, now_ms=now_ms)

    def limit_by_user(self, user_id: str | int, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """The per-user limit (default 1000/min, fails open)."""
        return self.check_preset(self.by_user, user_id, cost=cost, now_ms=now_ms)

    def limit_api(self, api_key: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """The per-API-key quota (default 10,000/hour, key hashed, fails closed)."""
        return self.check_preset(self.api, api_key, cost=cost, now_ms=now_ms)

    def _check(self, spec: Spec, identifier: object, cost: object, now_ms: object) -> Decision:
        key, args = self._prepare(spec, identifier, cost, now_ms)
        try:
            with bounded_call(self.client):  # EVALSHA and, after NOSCRIPT, the reload
                reply: list[int] = self._script((key,), args)
        except REDIS_ERRORS as exc:
            return self._unavailable(spec, exc)
        decision, flush_at = self._decided(spec, reply)
        if flush_at is not None:
            try:
                flush_counters(self.client, flush_at)
            except REDIS_ERRORS as exc:
                flush_failed(exc)
        return decision
