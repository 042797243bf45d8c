"""The limiter across processes, under SIGKILL, and with Redis stopped (marker `ratelimit`)."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess

import pytest
import redis

from cache.connections import Role, build_client
from cache.ratelimit.headers import rate_limit_headers
from cache.ratelimit.service import (
    FAIL_CLOSED_RETRY_AFTER_S,
    FailurePolicy,
    RateLimiter,
    ratelimit_stats,
    ratelimit_stats_by_scope,
    reset_ratelimit_stats,
)
from cache.settings import Settings
from tests.integration.ratelimit_fixtures import admit_many, burst_until_killed
from tests.waiting import wait_until
from workers.dev.servers import RedisServer, free_port

pytestmark = pytest.mark.ratelimit

Factory = Callable[..., RedisServer]
ClientFor = Callable[[RedisServer], redis.Redis]


@pytest.fixture
def spawn() -> Iterator[SpawnContext]:
    """A spawn context whose children are all gone after the test, whatever happened."""
    ctx = multiprocessing.get_context("spawn")
    yield ctx
    for child in multiprocessing.active_children():
        child.kill()
        child.join(10)


def test_four_processes_share_one_limit_exactly(
    spawn: SpawnContext, redis_env: dict[str, str], primary: redis.Redis
) -> None:
    start = spawn.Event()
    ready = spawn.Queue()
    results = spawn.Queue()
    url = redis_env["REDIS_URL"]
    children: list[SpawnProcess] = [
        spawn.Process(target=admit_many, args=(url, start, 200, ready, results)) for _ in range(4)
    ]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=120)  # every child has its client and the script loaded
    start.set()
    admitted = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert sum(admitted) == 100, admitted
    after = RateLimiter(primary, scope="test").check("shared", 100, 60)
    assert (after.allowed, after.remaining) == (False, 0)


def test_every_key_keeps_a_ttl_after_a_client_is_killed_mid_burst(
    spawn: SpawnContext, redis_env: dict[str, str], primary: redis.Redis
) -> None:
    child = spawn.Process(target=burst_until_killed, args=(redis_env["REDIS_URL"], 1_000_000, 120.0))
    child.start()
    wait_until(lambda: primary.dbsize() >= 500, 60, "the burst to write 500 keys")
    child.kill()  # SIGKILL: no cleanup, no finally
    child.join(10)
    assert child.exitcode == -9
    names = list(primary.scan_iter(match="kx:rl:*", count=1000))
    assert len(names) >= 500
    without_ttl = [name for name in names if primary.pttl(name) <= 0]
    assert without_ttl == []
    assert all(primary.pttl(name) <= 60_000 for name in names)  # at most two 30 s windows


@pytest.fixture
def client_for() -> Iterator[Callable[[RedisServer], redis.Redis]]:
    """Clients for private servers, retrying once, closed after the test."""
    built: list[redis.Redis] = []

    def build(server: RedisServer) -> redis.Redis:
        settings = Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "1"})
        built.append(build_client(Role.PRIMARY, settings))
        return built[-1]

    yield build
    for client in built:
        client.close()


def test_stopped_redis_fail_open_and_fail_closed_then_recover(
    redis_factory: Factory, client_for: ClientFor, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()
    client = client_for(server)
    fail_open = RateLimiter(client, scope="open", failure_policy=FailurePolicy.OPEN)
    fail_closed = RateLimiter(client, scope="closed", failure_policy=FailurePolicy.CLOSED)
    reset_ratelimit_stats()
    assert fail_open.check("u", 1, 60).allowed
    assert fail_closed.check("u", 1, 60).allowed
    assert not fail_open.check("u", 1, 60).degraded

    server.stop()
    caplog.set_level(logging.WARNING, logger="cache.ratelimit.service")
    opened = [fail_open.check("u", 1, 60) for _ in range(3)]
    assert all(d.allowed and d.degraded for d in opened), "limit used up, yet admitted: Redis was not asked"
    assert opened[0].reason is not None and "Redis unavailable" in opened[0].reason
    assert "failing open" in opened[0].reason
    closed = fail_closed.check("v", 1, 60)
    assert not closed.allowed and closed.degraded
    assert closed.reason is not None
    assert "rate limit 'closed' could not be checked, Redis unavailable (ConnectionError" in closed.reason
    assert "failing closed" in closed.reason
    assert closed.retry_after_s == FAIL_CLOSED_RETRY_AFTER_S
    assert rate_limit_headers(closed) == {
        "RateLimit-Policy": '"closed";q=1;w=60',
        "X-RateLimit-Limit": "1",
        "Retry-After": "5",
    }
    assert ratelimit_stats() == {"allowed": 2, "denied": 1, "fail_open": 3, "fail_closed": 1}
    assert ratelimit_stats_by_scope()["closed"]["fail_closed"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, "one warning per scope, not one per request"
    assert any("'open'" in w and "failing open" in w for w in warnings)

    server.start()
    recovered = fail_open.check("u", 1, 60)
    assert not recovered.degraded
    assert not recovered.allowed, "the entry written before the outage survived the restart"
    assert fail_closed.check("w", 1, 60).allowed
    assert not fail_closed.check("w", 1, 60).degraded


def test_refused_writes_apply_the_failure_policy(redis_factory: Factory, client_for: ClientFor) -> None:
    """A demoted master (a replica until the client follows the failover) refuses writes
    with READONLY: an outage, not a bug."""
    server = redis_factory()
    client = client_for(server)
    fail_closed = RateLimiter(client, scope="closed", failure_policy=FailurePolicy.CLOSED)
    fail_open = RateLimiter(client, scope="open", failure_policy=FailurePolicy.OPEN)
    client.replicaof("127.0.0.1", str(free_port()))
    try:
        closed = fail_closed.check("u", 5, 60)
        opened = fail_open.check("u", 5, 60)
    finally:
        client.replicaof("NO", "ONE")
    assert not closed.allowed and closed.degraded
    assert closed.reason is not None and "ReadOnlyError" in closed.reason
    assert opened.allowed and opened.degraded
    assert fail_closed.check("u", 5, 60).allowed
    assert list(client.scan_iter(match="kx:rl:*")) == [b"kx:rl:{closed:60000:u}"]
