"""Rate-limit decision counters shared through the primary (marker `ratelimit`, real redis-servers)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cache.connections import Role, build_client
from cache.errors import RedisUnavailable
from cache.ratelimit.service import (
    COUNTERS_FLUSH_INTERVAL_S,
    RateLimiter,
    flush_ratelimit_stats,
    ratelimit_counters,
    reset_ratelimit_stats,
)
from cache.settings import Settings
from tests.integration.ratelimit_counters_fixtures import decide_and_flush
from workers.cli.status_sections import ratelimit_section
from workers.dev.servers import RedisServer, free_port

pytestmark = pytest.mark.ratelimit

# Commands lua/ratelimit_check.lua runs inside the script: not round trips of the client.
SCRIPT_COMMANDS = {"zrange", "zremrangebyscore", "zadd", "zrem", "del", "pexpire", "zcard", "time"}
MEASUREMENT_COMMANDS = {"info", "config|resetstat"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    reset_ratelimit_stats()
    yield
    reset_ratelimit_stats()


def client_commands(client: redis.Redis) -> dict[str, int]:
    """Commands the server received from clients since CONFIG RESETSTAT, by name."""
    stats: dict[str, Any] = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return {name: n for name, n in calls.items() if name not in SCRIPT_COMMANDS | MEASUREMENT_COMMANDS}


def test_two_processes_counts_are_summed_in_redis(redis_env: dict[str, str], primary: redis.Redis) -> None:
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    children = [
        spawn.Process(target=decide_and_flush, args=(redis_env["REDIS_URL"], dead_url, who, limit, results))
        for who, limit in (("alice", 3), ("bob", 5))
    ]
    try:
        for child in children:
            child.start()
        flushed = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(30)
            assert child.exitcode == 0
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(10)
    assert flushed == [True, True]
    assert ratelimit_counters(primary) == {
        "shared": {"allowed": 3 + 5, "denied": 2 + 2, "fail_open": 1 + 1, "fail_closed": 1 + 1}
    }


def test_a_check_sends_one_command_and_the_due_one_adds_one_batch(primary: redis.Redis) -> None:
    clock = FakeClock()
    limiter = RateLimiter(primary, scope="rt", monotonic=clock)
    limiter.check("warm-up", 100, 60)  # loads the script, opens the connection, starts the interval
    primary.config_resetstat()
    for _ in range(20):
        limiter.check("client", 15, 60)
    assert client_commands(primary) == {"evalsha": 20}, "no check inside the interval pays for the counters"
    assert primary.hgetall("kx:rl-stats") == {}

    clock.now += COUNTERS_FLUSH_INTERVAL_S
    assert not limiter.check("client", 15, 60).allowed
    # hgetall: the test's own read above
    assert client_commands(primary) == {"evalsha": 21, "hgetall": 1, "hincrby": 2}, "one batch, once"
    assert ratelimit_counters(primary) == {
        "rt": {"allowed": 16, "denied": 6, "fail_open": 0, "fail_closed": 0}
    }


def test_status_section_reads_the_shared_totals(primary: redis.Redis) -> None:
    limiter = RateLimiter(primary, scope="login")
    for _ in range(5):
        limiter.check("bob", 4, 60)
    section = ratelimit_section(primary)  # flushes this process's counts, then reads
    assert section["totals"] == {"allowed": 4, "denied": 1, "fail_open": 0, "fail_closed": 0}
    assert section["_text"] == [
        "allowed 4, denied 1, fail_open 0, fail_closed 0 (denied 20.0% of the checks Redis answered)",
        "  login: allowed 4, denied 1, fail_open 0, fail_closed 0",
    ]


def test_unreachable_primary_raises_redis_unavailable_and_keeps_the_counts(
    redis_env: dict[str, str], redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    client = build_client(
        Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "1"})
    )
    try:
        RateLimiter(client, scope="login").check("bob", 4, 60)
        server.stop()
        with pytest.raises(RedisUnavailable, match="REDIS_URL"):
            ratelimit_counters(client)
        assert flush_ratelimit_stats(client) is False
        server.start()
        assert ratelimit_counters(client) == {
            "login": {"allowed": 1, "denied": 0, "fail_open": 0, "fail_closed": 0}
        }
    finally:
        client.close()
