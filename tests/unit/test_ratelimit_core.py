"""The limiter's pure core and its failure handling, without Redis (marker `ratelimit`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pytest
import redis

from cache.identifiers import IdentifierKind, InvalidIdentifier
from cache.ratelimit.service import (
    API,
    BY_IP,
    BY_USER,
    FAIL_CLOSED_RETRY_AFTER_S,
    MAX_LIMIT,
    MAX_NOW_MS,
    MAX_WINDOW_S,
    Decision,
    FailurePolicy,
    InvalidRateLimit,
    Preset,
    RateLimiter,
    RateLimitError,
    check_cost,
    check_limit,
    check_now_ms,
    check_scope,
    decision_from_reply,
    is_outage,
    ratelimit_stats,
    ratelimit_stats_by_scope,
    reset_ratelimit_stats,
    resolution_to_ms,
    unavailable_decision,
    window_to_ms,
)

pytestmark = pytest.mark.ratelimit


# --- validation: every bad input has a clear message -------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "limit must be between 1 and 100000, got 0"),
        (-5, "limit must be between 1 and 100000, got -5"),
        (MAX_LIMIT + 1, "limit must be between 1 and 100000, got 100001"),
        (True, "limit must be an int, got True"),
        (1.5, "limit must be an int, got 1.5"),
        ("100", "limit must be an int, got '100'"),
        (None, "limit must be an int, got None"),
    ],
)
def test_bad_limits(value: object, message: str) -> None:
    with pytest.raises(InvalidRateLimit) as info:
        check_limit(value)
    assert str(info.value) == message


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (MAX_LIMIT, MAX_LIMIT)])
def test_good_limits(value: int, expected: int) -> None:
    assert check_limit(value) == expected


@pytest.mark.parametrize(
    ("window_s", "expected_ms"),
    [
        (60, 60_000),
        (0.5, 500),
        (0.0001, 1),
        (1.2345, 1_234),
        (3_600, 3_600_000),
        (MAX_WINDOW_S, MAX_WINDOW_S * 1000),
    ],
)
def test_window_in_ms(window_s: float, expected_ms: int) -> None:
    assert window_to_ms(window_s) == expected_ms


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, MAX_WINDOW_S + 1, True, "60", None])
def test_bad_windows(value: object) -> None:
    with pytest.raises(InvalidRateLimit, match="window_s must be"):
        window_to_ms(value)


@pytest.mark.parametrize(
    ("resolution_s", "window_ms", "expected_ms"),
    [
        (None, 60_000, 1),
        (0.6, 60_000, 600),
        (0.0001, 60_000, 1),
        (60, 60_000, 60_000),
        (36, 3_600_000, 36_000),
        (16.19, 16_190, 16_190),  # 16.19 * 1000 is just above 16190 in floating point
    ],
)
def test_resolution_in_ms(resolution_s: float | None, window_ms: int, expected_ms: int) -> None:
    assert resolution_to_ms(resolution_s, window_ms) == expected_ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "resolution_s must be > 0 and <= the window (60 s), got 0"),
        (-1, "resolution_s must be > 0 and <= the window (60 s), got -1"),
        (61, "resolution_s must be > 0 and <= the window (60 s), got 61"),
        (math.nan, "resolution_s must be > 0 and <= the window (60 s), got nan"),
        (True, "resolution_s must be a number of seconds or None, got True"),
        ("1", "resolution_s must be a number of seconds or None, got '1'"),
    ],
)
def test_bad_resolutions(value: object, message: str) -> None:
    with pytest.raises(InvalidRateLimit) as info:
        resolution_to_ms(value, 60_000)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("cost", "limit", "message"),
    [
        (0, 10, "cost must be between 1 and the limit (10), got 0"),
        (11, 10, "cost must be between 1 and the limit (10), got 11"),
        (-1, 10, "cost must be between 1 and the limit (10), got -1"),
        (2.0, 10, "cost must be an int, got 2.0"),
        (False, 10, "cost must be an int, got False"),
    ],
)
def test_bad_costs(cost: object, limit: int, message: str) -> None:
    with pytest.raises(InvalidRateLimit) as info:
        check_cost(cost, limit)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [-1, MAX_NOW_MS + 1, 1.5, "0", True])
def test_bad_times(value: object) -> None:
    with pytest.raises(InvalidRateLimit, match="now_ms must be"):
        check_now_ms(value)


@pytest.mark.parametrize("scope", ["", "Login", "1ip", "a" * 33, "a:b", "a{b}", "a b", "ünï", None, 5])
def test_bad_scopes(scope: object) -> None:
    with pytest.raises(InvalidRateLimit, match="scope must be 1-32 characters"):
        check_scope(scope)


@pytest.mark.parametrize("scope", ["a", "ip", "login-v2", "api_keys", "a" * 32])
def test_good_scopes(scope: str) -> None:
    assert check_scope(scope) == scope


def test_presets_are_checked_when_built() -> None:
    with pytest.raises(InvalidRateLimit, match="limit must be between"):
        Preset(scope="ip", limit=0, window_s=60)
    with pytest.raises(InvalidRateLimit, match="window_s"):
        Preset(scope="ip", limit=1, window_s=0)
    with pytest.raises(InvalidRateLimit, match="failure_policy must be 'open' or 'closed', got 'sometimes'"):
        Preset(scope="ip", limit=1, window_s=1, failure_policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(
        InvalidRateLimit, match="identifier_kind must be 'ip', 'opaque' or 'secret', got 'mac'"
    ):
        Preset(scope="ip", limit=1, window_s=1, identifier_kind="mac")  # type: ignore[arg-type]


def test_presets_accept_config_strings() -> None:
    preset = Preset(scope="login", limit=5, window_s=300, failure_policy="closed", identifier_kind="ip")  # type: ignore[arg-type]
    assert preset.failure_policy is FailurePolicy.CLOSED
    assert preset.identifier_kind is IdentifierKind.IP
    assert preset.window_ms == 300_000


@pytest.mark.parametrize(
    ("preset", "scope", "limit", "window_s", "policy", "kind"),
    [
        (BY_IP, "ip", 100, 60, FailurePolicy.OPEN, IdentifierKind.IP),
        (BY_USER, "user", 1_000, 60, FailurePolicy.OPEN, IdentifierKind.OPAQUE),
        (API, "api", 10_000, 3_600, FailurePolicy.CLOSED, IdentifierKind.SECRET),
    ],
)
def test_default_presets(
    preset: Preset, scope: str, limit: int, window_s: int, policy: FailurePolicy, kind: IdentifierKind
) -> None:
    assert (preset.scope, preset.limit, preset.window_s) == (scope, limit, window_s)
    # Exact, or 1% of the window: never over the limit, at most 1% late in giving units back.
    assert preset.resolution_s is None or preset.resolution_s == window_s / 100
    assert (preset.failure_policy, preset.identifier_kind) == (policy, kind)


# --- script replies and failure decisions --------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "allowed", "remaining", "retry_s", "reset_s"),
    [
        ([1, 1, 0, 60_000], True, 9, 0.0, 60.0),
        ([1, 10, 0, 60_000], True, 0, 0.0, 60.0),
        ([0, 10, 1_500, 59_000], False, 0, 1.5, 59.0),
        ([0, 8, 30_001, 45_000], False, 2, 30.001, 45.0),
    ],
)
def test_decision_from_reply(
    reply: list[int], allowed: bool, remaining: int, retry_s: float, reset_s: float
) -> None:
    decision = decision_from_reply(reply, scope="ip", limit=10, window_ms=60_000)
    assert (decision.allowed, decision.remaining) == (allowed, remaining)
    assert (decision.retry_after_s, decision.reset_after_s) == (retry_s, reset_s)
    assert decision.window_s == 60.0
    assert not decision.degraded
    assert (decision.reason is None) == allowed


def test_denial_reason_names_scope_limit_and_wait() -> None:
    decision = decision_from_reply([0, 3, 2_500, 9_000], scope="login", limit=3, window_ms=10_000)
    assert decision.reason == "rate limit 'login' exceeded: 3 per 10 s; retry after 2.5 s"


def test_unavailable_decisions() -> None:
    opened = unavailable_decision(FailurePolicy.OPEN, scope="ip", limit=100, window_ms=60_000, error="E: x")
    assert (opened.allowed, opened.degraded, opened.retry_after_s) == (True, True, 0.0)
    assert opened.reason == "rate limit 'ip' not checked, Redis unavailable (E: x); failing open"
    closed = unavailable_decision(FailurePolicy.CLOSED, scope="api", limit=10, window_ms=1_000, error="E: x")
    assert (closed.allowed, closed.degraded, closed.remaining) == (False, True, 0)
    assert closed.retry_after_s == FAIL_CLOSED_RETRY_AFTER_S
    assert closed.reason == (
        "rate limit 'api' could not be checked, Redis unavailable (E: x); failing closed, retry after 5 s"
    )


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (redis.ConnectionError("Connection refused"), True),
        (redis.TimeoutError("Timeout reading from socket"), True),
        (redis.AuthenticationError("invalid password"), True),
        (redis.exceptions.BusyLoadingError("LOADING Redis is loading"), True),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.exceptions.MasterDownError("Link with MASTER is down"), True),
        (redis.ResponseError("NOAUTH Authentication required."), True),
        (redis.ResponseError("NOPERM this user has no permissions to run the 'evalsha' command"), True),
        (redis.ResponseError("BUSY Redis is busy running a script."), True),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (redis.ResponseError("ERR Error running script: attempt to compare nil with number"), False),
        (redis.DataError("Invalid input of type: 'dict'"), False),
    ],
)
def test_what_counts_as_an_outage(error: redis.RedisError, outage: bool) -> None:
    assert is_outage(error) is outage


# --- the shell with a stub client: policy, counters, throttled warnings ------------------------


class StubRedis:
    """Enough of a client for RateLimiter: `register_script` and `evalsha`."""

    def __init__(self) -> None:
        self.error: redis.RedisError | None = None
        self.reply: Sequence[int] = [1, 1, 0, 1_000]
        self.calls: list[tuple[list[str], list[object]]] = []
        self.loaded = True
        self.sha = "0" * 40

    def register_script(self, source: str) -> StubRedis:
        assert "KEYS[1]" in source
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: object) -> Sequence[int]:
        assert sha == self.sha
        if not self.loaded:
            raise redis.exceptions.NoScriptError("No matching script. Please use EVAL.")
        self.calls.append(([str(k) for k in keys_and_args[:numkeys]], list(keys_and_args[numkeys:])))
        if self.error is not None:
            raise self.error
        return self.reply

    def __call__(self, keys: list[str], args: list[object]) -> Sequence[int]:
        """redis-py's Script.__call__: load the script, then EVALSHA."""
        self.loaded = True
        return self.evalsha(self.sha, len(keys), *keys, *args)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stub() -> StubRedis:
    reset_ratelimit_stats()
    return StubRedis()


def test_script_gets_key_and_arguments(stub: StubRedis) -> None:
    limiter = RateLimiter(stub, scope="login")  # type: ignore[arg-type]
    limiter.check("bob", 5, 30, cost=2, now_ms=1234)
    limiter.check("bob", 5, 30)
    assert stub.calls == [
        (["kx:rl:{login:30000:bob}"], ["1234", 30_000, 5, 2, 1]),
        (["kx:rl:{login:30000:bob}"], ["", 30_000, 5, 1, 1]),
    ]
    stub.calls.clear()
    limiter.check("bob", 5, 30, resolution_s=0.3)
    limiter.limit_api("key")
    assert [args[-1] for _, args in stub.calls] == [300, 36_000]


def test_noscript_loads_the_script_and_retries(stub: StubRedis) -> None:
    stub.loaded = False  # a SCRIPT FLUSH, or a failover to a server that never saw it
    assert RateLimiter(stub).check("bob", 5, 30).allowed  # type: ignore[arg-type]
    assert len(stub.calls) == 1


def test_bad_input_never_reaches_redis(stub: StubRedis) -> None:
    limiter = RateLimiter(stub)  # type: ignore[arg-type]
    with pytest.raises(InvalidRateLimit):
        limiter.check("bob", 5, 30, cost=6)
    with pytest.raises(InvalidRateLimit):
        limiter.check("bob", 0, 30)
    with pytest.raises(InvalidRateLimit):
        limiter.check("bob", 5, -1)
    with pytest.raises(InvalidRateLimit):
        limiter.check("bob", 5, 30, now_ms=-1)
    with pytest.raises(InvalidIdentifier):
        limiter.check("", 5, 30)
    with pytest.raises(InvalidIdentifier):
        limiter.limit_by_ip("localhost")
    assert stub.calls == []


def test_constructor_rejects_bad_scope_and_policy(stub: StubRedis) -> None:
    with pytest.raises(InvalidRateLimit, match="scope must be"):
        RateLimiter(stub, scope="Bad Scope")  # type: ignore[arg-type]
    with pytest.raises(InvalidRateLimit, match="failure_policy must be 'open' or 'closed', got 'sometimes'"):
        RateLimiter(stub, failure_policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidRateLimit, match="identifier_kind must be"):
        RateLimiter(stub, identifier_kind=None)  # type: ignore[arg-type]


def test_outage_follows_each_presets_policy(stub: StubRedis) -> None:
    stub.error = redis.ConnectionError("Connection refused")
    limiter = RateLimiter(stub)  # type: ignore[arg-type]
    assert limiter.limit_by_ip("192.0.2.1").allowed
    assert limiter.limit_by_user(7).allowed
    api = limiter.limit_api("key")
    assert not api.allowed
    assert api.reason is not None and "ConnectionError: Connection refused" in api.reason
    assert ratelimit_stats() == {"allowed": 0, "denied": 0, "fail_open": 2, "fail_closed": 1}
    assert ratelimit_stats_by_scope()["api"] == {"allowed": 0, "denied": 0, "fail_open": 0, "fail_closed": 1}


def test_non_outage_errors_are_raised_not_hidden(stub: StubRedis) -> None:
    stub.error = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    limiter = RateLimiter(stub, failure_policy=FailurePolicy.OPEN)  # type: ignore[arg-type]
    with pytest.raises(
        RateLimitError, match="rate limit 'default': Redis refused the check: ResponseError: WRONGTYPE"
    ):
        limiter.check("bob", 5, 30)
    assert ratelimit_stats()["fail_open"] == 0


def test_counters_count_redis_decisions(stub: StubRedis) -> None:
    limiter = RateLimiter(stub, scope="s")  # type: ignore[arg-type]
    limiter.check("a", 5, 30)
    stub.reply = [0, 5, 100, 200]
    limiter.check("a", 5, 30)
    limiter.check("a", 5, 30)
    assert ratelimit_stats() == {"allowed": 1, "denied": 2, "fail_open": 0, "fail_closed": 0}
    reset_ratelimit_stats()
    assert ratelimit_stats() == {"allowed": 0, "denied": 0, "fail_open": 0, "fail_closed": 0}


def test_outage_warnings_are_throttled_and_recovery_logged(
    stub: StubRedis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(stub, scope="s", monotonic=clock)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="cache.ratelimit.service")
    stub.error = redis.ConnectionError("Connection refused")
    for _ in range(10):
        limiter.check("a", 5, 30)
    clock.now += 59
    limiter.check("a", 5, 30)
    clock.now += 2
    limiter.check("a", 5, 30)
    stub.error = None
    limiter.check("a", 5, 30)
    limiter.check("a", 5, 30)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "WARNING", "INFO"]
    assert "failing open (0 more failures since the last warning): ConnectionError" in messages[0][1]
    assert "(10 more failures since the last warning)" in messages[1][1]
    assert messages[2][1] == "rate limit 's': Redis reachable again"
    assert ratelimit_stats()["fail_open"] == 12


def test_decision_is_immutable() -> None:
    decision = Decision(
        allowed=True, limit=1, remaining=0, reset_after_s=1, retry_after_s=0, window_s=1, scope="s"
    )
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]
