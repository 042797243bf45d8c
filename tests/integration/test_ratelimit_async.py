"""The asyncio limiter against real redis-servers: the sync limiter's decisions, keys and failure policies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from cache import keys
from cache.connections import Role, build_async_client
from cache.limits import API, BY_IP, BY_USER, FailurePolicy, InvalidRateLimit, RateLimitError
from cache.ratelimit import AsyncRateLimiter, Decision, RateLimiter
from cache.ratelimit.service import (
    ratelimit_stats,
    ratelimit_stats_by_scope,
    read_ratelimit_counters,
    reset_ratelimit_stats,
)
from cache.settings import DEFAULT_CALL_TIMEOUT_S, Settings, get_settings
from workers.dev.servers import PRIMARY_CONF, RedisServer, free_port

pytestmark = pytest.mark.ratelimit
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)

T0 = 1_700_000_000_000


def run(body: Callable[[AsyncRateLimiter], Awaitable[Any]], **kwargs: Any) -> Any:
    """`body(limiter)` in a fresh event loop, on a client built from the settings, closed after."""

    async def main() -> Any:
        client = build_async_client(Role.PRIMARY, get_settings())
        # A cluster client reads its slot map on first use, outside the 1 s call bound: a
        # loaded machine's slow start is not a rate-limit outage (as in test_cache_async).
        await client.initialize()
        limiter = AsyncRateLimiter(client, **kwargs)
        try:
            return await body(limiter)
        finally:
            await limiter.client.aclose()

    return asyncio.run(main())


def state(client: redis.Redis) -> dict[bytes, tuple[bytes, bool]]:
    """Every limiter key: its serialized value and whether it expires."""
    found = sorted(client.scan_iter(match="kx:rl:*", count=1000))
    return {key: (client.dump(key), client.pttl(key) > 0) for key in found}  # type: ignore[misc]


def test_sync_and_async_give_the_same_decisions_and_redis_state(primary: redis.Redis) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("check", ("alice", 3, 60), {"now_ms": T0 + i * 1000, "cost": 1 + i % 2}) for i in range(6)
    ]
    calls += [
        ("check", ("bob", 10, 30), {"now_ms": T0, "resolution_s": 5}),
        ("check", ("bob", 10, 30), {"now_ms": T0 + 2_000, "resolution_s": 5}),
        ("limit_by_ip", ("2001:db8:1:2::7",), {"now_ms": T0}),
        ("limit_by_ip", ("2001:db8:1:2::8",), {"now_ms": T0 + 1}),
        ("limit_by_user", (42,), {"now_ms": T0, "cost": 7}),
        ("limit_api", ("key-1",), {"now_ms": T0, "cost": 9_999}),
        ("limit_api", ("key-1",), {"now_ms": T0 + 5, "cost": 2}),
    ]
    sync = RateLimiter(primary, scope="parity")
    expected = [getattr(sync, name)(*args, **kwargs) for name, args, kwargs in calls]
    sync_state = state(primary)
    primary.flushall()

    async def body(limiter: AsyncRateLimiter) -> list[Decision]:
        return [await getattr(limiter, name)(*args, **kwargs) for name, args, kwargs in calls]

    assert run(body, scope="parity") == expected
    assert state(primary) == sync_state
    assert len(sync_state) == 5  # the two IPv6 addresses share their /56
    assert all(expires for _, expires in sync_state.values())
    assert [d.allowed for d in expected[:6]] == [True, True, False, False, False, False]
    assert [d.allowed for d in expected[-2:]] == [True, False]


def test_limit_reached_exactly_and_the_retry_after(primary: redis.Redis) -> None:
    async def body(limiter: AsyncRateLimiter) -> None:
        decisions = [await limiter.check("alice", 5, 60, now_ms=T0 + i) for i in range(7)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
        assert decisions[5].reason == "rate limit 'test' exceeded: 5 per 60 s; retry after 59.995 s"
        assert (await limiter.check("alice", 5, 60, now_ms=T0 + 60_000)).allowed
        assert (await limiter.check("server-clock", 1, 60)).allowed  # the Redis server's clock

    run(body, scope="test")


def test_hundreds_of_concurrent_checks_of_one_client_decide_exactly_none_fail_open(
    redis_env: dict[str, str],
) -> None:
    """400 checks at once on one event loop, as 400 requests of one ASGI process: a pool
    that refused the 101st connection read as an outage and let every request through.

    The pool is what is tested, not the call bound: 400 connections opened at once on a
    loaded machine may outlast 1 s, so this client gets 30 s (the refusal was immediate).
    """
    patient = Settings.from_env({**os.environ, "REDIS_CALL_TIMEOUT": "30"})

    async def main() -> list[Decision]:
        client = build_async_client(Role.PRIMARY, patient)
        await client.initialize()  # concurrent first commands meet a cold cluster client otherwise
        limiter = AsyncRateLimiter(client, scope="burst")
        try:
            return await asyncio.gather(*(limiter.check("203.0.113.9", 100, 60) for _ in range(400)))
        finally:
            await limiter.client.aclose()

    decisions = asyncio.run(main())
    assert not any(d.degraded for d in decisions), [d.reason for d in decisions if d.degraded][:3]
    assert sum(d.allowed for d in decisions) == 100


def test_script_reload_loud_refusals_and_input_checked_before_redis(primary: redis.Redis) -> None:
    primary.set(keys.rate_limit_log("test", 60_000, "ivan"), "not a log")

    async def body(limiter: AsyncRateLimiter) -> None:
        assert (await limiter.check("hank", 2, 60, now_ms=T0)).allowed
        await limiter.client.script_flush()
        assert (await limiter.check("hank", 2, 60, now_ms=T0)).allowed
        assert not (await limiter.check("hank", 2, 60, now_ms=T0)).allowed
        with pytest.raises(RateLimitError, match=r"Redis refused the check: .*WRONGTYPE"):
            await limiter.check("ivan", 2, 60)
        with pytest.raises(InvalidRateLimit, match="cost"):
            await limiter.check("hank", 2, 60, cost=3)
        with pytest.raises(InvalidRateLimit):
            await limiter.check("hank", 0, 60)

    run(body, scope="test")
    assert sorted(primary.scan_iter(match="kx:rl:*")) == sorted(
        [
            keys.rate_limit_log("test", 60_000, "ivan").encode(),
            keys.rate_limit_log("test", 60_000, "hank").encode(),
        ]
    )


def test_decisions_are_counted_and_flushed_to_the_shared_hash(primary: redis.Redis) -> None:
    reset_ratelimit_stats()
    clock = [0.0]

    async def body(limiter: AsyncRateLimiter) -> None:
        for _ in range(3):
            await limiter.check("carol", 2, 60, now_ms=T0)
        clock[0] = 10.0  # past the flush interval: the next check that reaches Redis flushes
        await limiter.check("dave", 2, 60, now_ms=T0)

    try:
        run(body, scope="counted", monotonic=lambda: clock[0])
        assert ratelimit_stats_by_scope()["counted"] == {
            "allowed": 3,
            "denied": 1,
            "fail_open": 0,
            "fail_closed": 0,
        }
        assert read_ratelimit_counters(primary)["counted"]["allowed"] == 3
    finally:
        reset_ratelimit_stats()


def test_redis_down_fails_open_or_closed_per_preset(redis_env: dict[str, str]) -> None:
    reset_ratelimit_stats()
    dead = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_RETRY_ATTEMPTS": "1"})

    async def main() -> list[Decision]:
        limiter = AsyncRateLimiter(build_async_client(Role.PRIMARY, dead), scope="down")
        try:
            return [
                await limiter.limit_by_ip("203.0.113.7"),
                await limiter.limit_by_user(42),
                await limiter.limit_api("key-1"),
                await limiter.check("x", 5, 60),
            ]
        finally:
            await limiter.client.aclose()

    try:
        by_ip, by_user, api, plain = asyncio.run(main())
        assert (by_ip.allowed, by_user.allowed, api.allowed, plain.allowed) == (True, True, False, True)
        assert all(d.degraded for d in (by_ip, by_user, api, plain))
        assert api.retry_after_s == 5.0 and api.scope == API.scope
        assert by_ip.scope == BY_IP.scope and by_user.scope == BY_USER.scope
        assert ratelimit_stats() == {"allowed": 0, "denied": 0, "fail_open": 3, "fail_closed": 1}
    finally:
        reset_ratelimit_stats()


def test_a_stalled_redis_costs_a_check_about_the_call_bound(
    redis_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOPped after the warm-up: the pooled connection gets no reply, the policy answers in time."""
    server = redis_factory(PRIMARY_CONF, name="stalled-async")
    assert server.process is not None
    for name in ("REDIS_CALL_TIMEOUT", "REDIS_SOCKET_TIMEOUT", "REDIS_RETRY_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env({"REDIS_URL": server.url})

    async def main() -> tuple[list[Decision], float]:
        limiter = AsyncRateLimiter(
            build_async_client(Role.PRIMARY, settings), failure_policy=FailurePolicy.CLOSED, scope="stall"
        )
        try:
            assert (await limiter.check("warm", 5, 60)).allowed
            os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            started = time.monotonic()
            decisions = [await limiter.check("eve", 5, 60), await limiter.limit_by_ip("203.0.113.9")]
            return decisions, time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            await limiter.client.aclose()

    try:
        (closed, open_), elapsed = asyncio.run(main())
    finally:
        reset_ratelimit_stats()
    assert (closed.allowed, closed.degraded, open_.allowed, open_.degraded) == (False, True, True, True)
    assert elapsed < 2 * 3 * DEFAULT_CALL_TIMEOUT_S  # two checks, each bounded; minutes would fail
