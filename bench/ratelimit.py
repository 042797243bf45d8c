"""RateLimiter.check against the naive pipelined INCR + EXPIRE, on one connection.

`python -m bench ratelimit`. Starts its own PRIMARY redis-server (the shipped
redis.conf) in a temporary directory and measures, in one run:

- checks/s of `check` admitting requests of 1,000 clients vs a pipelined
  `INCR` + `EXPIRE` on as many keys (the original sketch, one round trip; target >= 0.8x);
- checks/s of `check` denying a client that is over its limit (the denial also
  computes Retry-After) vs the same baseline;
- Redis round trips per check, counted by the server (`INFO commandstats`): every
  top-level command the benchmark's checks caused, i.e. all calls minus those the
  Lua script makes inside itself (target 1);
- memory of the fullest key of each preset (`MEMORY USAGE`): a client using its
  whole limit spread evenly over the window; plus the API preset kept exact.

Timed loops are interleaved in 15 short rounds (rotating who goes first) and reported
as the median, so a noisy neighbour hurts both sides alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from cache import keys
from cache.connections import Role, build_client
from cache.identifiers import IdentifierKind, normalize
from cache.ratelimit.service import API, BY_IP, BY_USER, RateLimiter, flush_ratelimit_stats
from cache.settings import Settings
from workers.dev.servers import PRIMARY_CONF, RedisServer

ITERATIONS = 1_000  # per round and side: short rounds, so load swings hit every side alike
ROUNDS = 15
WARMUP = 300
MAX_SECONDS_PER_RUN = 5.0  # bounds each timed loop on a very slow machine
CLIENTS = 1_000  # distinct identifiers in the admitting run: each stays far below its limit
ROUND_TRIP_CHECKS = 2_000
# Commands lua/ratelimit_check.lua issues itself; everything else a client sent.
SCRIPT_COMMANDS = {"zrange", "zremrangebyscore", "zadd", "zrem", "del", "pexpire", "zcard", "time"}
# The INFO/CONFIG of the measurement itself, and the decision counters' flush: one
# pipelined HINCRBY batch per process every COUNTERS_FLUSH_INTERVAL_S, not per check.
# `_round_trips` flushes right before it counts, so no flush falls inside the ~0.1 s
# of counted checks anyway; the exclusion only keeps a very slow machine from counting
# one. tests/integration/test_ratelimit_counters.py proves a check that does not flush
# sends exactly one command.
MEASUREMENT_COMMANDS = {"info", "config|resetstat", "hincrby"}


def _ops_per_s(step: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    done = 0
    while done < ITERATIONS and time.perf_counter() - start < MAX_SECONDS_PER_RUN:
        step(done)
        done += 1
    return done / (time.perf_counter() - start)


def _row(
    metric: str, value: float, unit: str, baseline: float, better: str, target: float | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "bench": "ratelimit",
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 3),
        "better": better,
    }
    if target is not None:
        row["target"] = target
    return row


def _throughput(client: redis.Redis, limiter: RateLimiter) -> list[dict[str, Any]]:
    def naive(i: int) -> None:
        key = f"kx:bench:naive:{i % CLIENTS}"
        pipe = client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 60)
        pipe.execute()

    def admitting(i: int) -> None:
        limiter.check(f"client-{i % CLIENTS}", 100_000, 60)

    limiter.check("hot", 100, 60, cost=100)

    def denying(_: int) -> None:
        limiter.check("hot", 100, 60)

    steps = {"naive": naive, "admit": admitting, "deny": denying}
    for step in steps.values():
        for i in range(WARMUP):
            step(i)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_no in range(ROUNDS):
        for name in names[round_no % 3 :] + names[: round_no % 3]:  # rotate who goes first
            samples[name].append(_ops_per_s(steps[name]))
    baseline = statistics.median(samples["naive"])
    return [
        _row(
            "checks_per_s_admitting", statistics.median(samples["admit"]), "checks/s", baseline, "higher", 0.8
        ),
        _row("checks_per_s_denying", statistics.median(samples["deny"]), "checks/s", baseline, "higher", 0.8),
    ]


def _command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _round_trips(client: redis.Redis, limiter: RateLimiter) -> dict[str, Any]:
    if not flush_ratelimit_stats(client):  # starts a new flush interval (see MEASUREMENT_COMMANDS)
        raise RuntimeError("could not flush the rate-limit counters before counting round trips")
    client.config_resetstat()
    for i in range(ROUND_TRIP_CHECKS):
        # Mostly admitted, every tenth client over its limit: both paths are counted.
        limiter.check(f"rt-{i % 200}", 9, 60)
    calls = _command_calls(client)
    sent = sum(n for name, n in calls.items() if name not in SCRIPT_COMMANDS | MEASUREMENT_COMMANDS)
    # The naive sketch pipelines its two commands: one round trip per check by construction.
    return _row("round_trips_per_check", sent / ROUND_TRIP_CHECKS, "round trips", 1.0, "lower", 1.0)


def _memory(client: redis.Redis, limiter: RateLimiter) -> list[dict[str, Any]]:
    """A client that uses its whole limit, evenly spread over one window: the fullest log."""
    counter = "kx:bench:counter"
    client.set(counter, 0)
    client.incr(counter)
    baseline = float(client.memory_usage(counter, samples=0) or 1)
    exact_api = replace(API, scope="api-exact", resolution_s=None)
    rows = []
    for preset in (BY_IP, BY_USER, API, exact_api):
        measured = replace(preset, scope=f"mem-{preset.scope}")
        identifier = "203.0.113.9" if preset.identifier_kind is IdentifierKind.IP else "someone"
        now_ms = 1_700_000_000_000
        step_ms = max(1, measured.window_ms // measured.limit)
        for i in range(measured.limit):
            limiter.check_preset(measured, identifier, now_ms=now_ms + i * step_ms)
        key_part = normalize(identifier, measured.identifier_kind)
        key = keys.rate_limit_log(measured.scope, measured.window_ms, key_part)
        used = float(client.memory_usage(key, samples=0) or 0)
        metric = f"memory_bytes_full_key_{preset.scope}_{preset.limit}"
        rows.append(_row(metric, used, "bytes", baseline, "lower", None))
    return rows


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kx-bench-ratelimit-") as tmp:
        server = RedisServer(PRIMARY_CONF, Path(tmp) / "primary").start()
        client = build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url}))
        try:
            limiter = RateLimiter(client, scope="bench")
            rows = _throughput(client, limiter)
            rows.append(_round_trips(client, limiter))
            rows.extend(_memory(client, limiter))
            return rows
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    import json

    for line in run():
        print(json.dumps(line))
