"""Bookkeeping of the shared rate-limit decision counters (marker `ratelimit`; no Lua, no server).

The pure `DecisionCounters` and `parse_counters` run table-driven with an explicit
`now`; the flush runs against fakeredis (HINCRBY only), behind a limiter whose script
calls are stubbed, so piggybacking and failure handling are seen call by call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import fakeredis
import pytest
import redis

from cache import keys
from cache.ratelimit.core import counter_field, parse_counters
from cache.ratelimit.service import (
    COUNTERS_FLUSH_INTERVAL_S,
    DecisionCounters,
    FailurePolicy,
    InvalidRateLimit,
    RateLimiter,
    flush_ratelimit_stats,
    ratelimit_stats,
    read_ratelimit_counters,
    reset_ratelimit_stats,
)
from workers.cli.status_sections import ratelimit_section

pytestmark = pytest.mark.ratelimit

ZERO = {"allowed": 0, "denied": 0, "fail_open": 0, "fail_closed": 0}


def counts(**outcomes: int) -> dict[str, int]:
    return {**ZERO, **outcomes}


# --- DecisionCounters (pure) --------------------------------------------------------------


def test_first_flush_due_starts_the_interval() -> None:
    counters = DecisionCounters(5.0)
    assert counters.flush_due(100.0) is False  # a new process waits one interval
    assert counters.flush_due(104.999) is False
    assert counters.flush_due(105.0) is True
    assert counters.flush_due(200.0) is True  # still due until someone takes the counts


def test_take_pending_hands_over_only_the_unflushed_counts_and_restarts_the_interval() -> None:
    counters = DecisionCounters(5.0)
    counters.flush_due(0.0)
    for scope, outcome in [("ip", "allowed"), ("ip", "allowed"), ("ip", "denied"), ("api", "fail_closed")]:
        counters.add(scope, outcome)
    assert counters.take_pending(5.0) == {
        ("ip", "allowed"): 2,
        ("ip", "denied"): 1,
        ("api", "fail_closed"): 1,
    }
    assert counters.flush_due(9.9) is False
    assert counters.take_pending(10.0) == {}, "taken counts are never handed over twice"
    counters.add("ip", "allowed")
    assert counters.take_pending(10.0) == {("ip", "allowed"): 1}
    assert counters.by_scope() == {"api": counts(fail_closed=1), "ip": counts(allowed=3, denied=1)}


def test_restored_counts_go_out_with_the_next_flush_together_with_new_ones() -> None:
    counters = DecisionCounters(5.0)
    counters.add("ip", "allowed")
    failed = counters.take_pending(0.0)
    counters.add("ip", "allowed")  # counted while the flush was in flight
    counters.add("user", "fail_open")
    counters.restore_pending(failed)
    assert counters.take_pending(5.0) == {("ip", "allowed"): 2, ("user", "fail_open"): 1}
    assert counters.by_scope()["ip"] == counts(allowed=2), "totals are not touched by a failed flush"


@pytest.mark.parametrize(
    ("interval", "message"),
    [
        (0, "flush_interval_s must be positive and finite, got 0"),
        (-1.0, "flush_interval_s must be positive and finite, got -1.0"),
        (math.inf, "flush_interval_s must be positive and finite, got inf"),
        (math.nan, "flush_interval_s must be positive and finite, got nan"),
        ("5", "flush_interval_s must be a number of seconds, got '5'"),
        (True, "flush_interval_s must be a number of seconds, got True"),
        (None, "flush_interval_s must be a number of seconds, got None"),
    ],
)
def test_bad_flush_intervals_are_refused(interval: Any, message: str) -> None:
    with pytest.raises(InvalidRateLimit, match=f"^{message}$"):
        DecisionCounters(interval)


# --- hash fields (pure) -------------------------------------------------------------------


def test_counter_field_names_scope_and_outcome() -> None:
    assert counter_field("login", "fail_open") == "login:fail_open"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, {}),
        ({b"ip:allowed": b"3"}, {"ip": counts(allowed=3)}),
        ({"ip:denied": "2", "api:fail_closed": 7}, {"api": counts(fail_closed=7), "ip": counts(denied=2)}),
        # foreign or future fields are skipped, not misread
        ({b"ip:rejected": b"1", b"allowed": b"1", b"Bad Scope:allowed": b"1", b"x:y:allowed": b"4"}, {}),
    ],
)
def test_parse_counters(raw: dict[Any, Any], expected: dict[str, dict[str, int]]) -> None:
    assert parse_counters(raw) == expected


def test_parse_counters_names_a_counter_that_is_not_an_integer() -> None:
    with pytest.raises(ValueError, match=r"^rate-limit counter 'ip:denied' is not an integer: b'lots'$"):
        parse_counters({b"ip:allowed": b"1", b"ip:denied": b"lots"})


# --- the flush, piggybacked on checks (fakeredis for HINCRBY, stubbed script) --------------


class ScriptStub(fakeredis.FakeRedis):
    """fakeredis for the counters' HINCRBY; the check script's reply is stubbed (no Lua here).

    Records every command the limiter sends, in order, to show what a check costs.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reply: Sequence[int] = [1, 1, 0, 1_000]
        self.script_error: redis.RedisError | None = None
        self.sent: list[str] = []
        self.sha = "0" * 40

    def register_script(self, script: Any) -> Any:
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.sent.append("evalsha")
        if self.script_error is not None:
            raise self.script_error
        return self.reply

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.sent.append("pipeline")
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def stub(server: fakeredis.FakeServer) -> Iterator[ScriptStub]:
    reset_ratelimit_stats()
    yield ScriptStub(server=server)
    reset_ratelimit_stats()


def stored(server: fakeredis.FakeServer) -> dict[str, dict[str, int]]:
    return read_ratelimit_counters(fakeredis.FakeRedis(server=server))


def test_checks_flush_at_most_once_per_interval_and_only_when_due(
    stub: ScriptStub, server: fakeredis.FakeServer
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(stub, scope="login", monotonic=clock)
    for _ in range(3):
        limiter.check("bob", 5, 60)
    clock.now += COUNTERS_FLUSH_INTERVAL_S - 0.001
    stub.reply = [0, 5, 1_000, 60_000]
    limiter.check("bob", 5, 60)
    assert stub.sent == ["evalsha"] * 4, "no check before the interval is over pays for the counters"
    assert stored(server) == {}

    clock.now += 0.001
    limiter.check("bob", 5, 60)
    assert stub.sent[4:] == ["evalsha", "pipeline"], "the flush comes after the check's own round trip"
    assert stored(server) == {"login": counts(allowed=3, denied=2)}
    assert server.connected

    limiter.check("bob", 5, 60)
    assert stub.sent[6:] == ["evalsha"], "a new interval started"
    assert ratelimit_stats() == counts(allowed=3, denied=3)


def test_a_failed_flush_never_fails_the_check_and_keeps_the_counts(
    stub: ScriptStub, server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(stub, scope="login", monotonic=clock)
    limiter.check("bob", 5, 60)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Connection reset by peer")

    clock.now += COUNTERS_FLUSH_INTERVAL_S
    with monkeypatch.context() as patch:
        patch.setattr(ScriptStub, "pipeline", refuse)
        decision = limiter.check("bob", 5, 60)
    assert decision.allowed and not decision.degraded
    assert stored(server) == {}

    limiter.check("bob", 5, 60)
    assert stored(server) == {}, "a failed flush waits for the next interval, it does not retry per check"
    clock.now += COUNTERS_FLUSH_INTERVAL_S
    limiter.check("bob", 5, 60)
    assert stored(server) == {"login": counts(allowed=4)}, "every count, including the failed flush's"


def test_a_check_during_an_outage_never_tries_to_flush(
    stub: ScriptStub, server: fakeredis.FakeServer
) -> None:
    clock = FakeClock()
    fail_open = RateLimiter(stub, scope="open", monotonic=clock)
    fail_closed = RateLimiter(
        stub,
        scope="closed",
        failure_policy=FailurePolicy.CLOSED,
        monotonic=clock,
    )
    fail_open.check("bob", 5, 60)
    clock.now += 10 * COUNTERS_FLUSH_INTERVAL_S
    stub.script_error = redis.ConnectionError("Connection refused")
    assert fail_open.check("bob", 5, 60).degraded
    assert not fail_closed.check("bob", 5, 60).allowed
    assert stub.sent == ["evalsha"] * 3
    assert stored(server) == {}

    stub.script_error = None
    fail_open.check("bob", 5, 60)
    assert stub.sent[3:] == ["evalsha", "pipeline"], "the first check Redis answers carries the flush"
    assert stored(server) == {"closed": counts(fail_closed=1), "open": counts(allowed=2, fail_open=1)}


def test_flush_ratelimit_stats_sums_into_the_hash_and_reports_failure(
    stub: ScriptStub, server: fakeredis.FakeServer
) -> None:
    limiter = RateLimiter(stub, scope="login")
    limiter.check("bob", 5, 60)
    client = fakeredis.FakeRedis(server=server)
    assert flush_ratelimit_stats(client) is True
    assert flush_ratelimit_stats(client) is True  # nothing pending: adds nothing
    assert client.hgetall(keys.rate_limit_counters()) == {b"login:allowed": b"1"}

    limiter.check("bob", 5, 60)
    server.connected = False
    assert flush_ratelimit_stats(client) is False, "best effort: never raises"
    server.connected = True
    assert flush_ratelimit_stats(client) is True
    assert client.hgetall(keys.rate_limit_counters()) == {b"login:allowed": b"2"}


def test_status_section_renders_totals_and_scopes(stub: ScriptStub, server: fakeredis.FakeServer) -> None:
    client = fakeredis.FakeRedis(server=server)
    assert ratelimit_section(client) == {
        "totals": ZERO,
        "scopes": {},
        "_text": ["no rate-limit checks recorded"],
    }
    client.hset(
        keys.rate_limit_counters(),
        mapping={"ip:allowed": 6, "ip:denied": 2, "api:allowed": 2, "api:fail_closed": 1},
    )
    limiter = RateLimiter(stub, scope="login")
    limiter.check("bob", 5, 60)  # this process's count is flushed by the status read
    section = ratelimit_section(client)
    assert section["totals"] == counts(allowed=9, denied=2, fail_closed=1)
    assert section["scopes"]["login"] == counts(allowed=1)
    assert section["_text"] == [
        "allowed 9, denied 2, fail_open 0, fail_closed 1 (denied 18.2% of the checks Redis answered)",
        "  api: allowed 2, denied 0, fail_open 0, fail_closed 1",
        "  ip: allowed 6, denied 2, fail_open 0, fail_closed 0",
        "  login: allowed 1, denied 0, fail_open 0, fail_closed 0",
    ]
