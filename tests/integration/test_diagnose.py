"""Latency samples, biggest key patterns and the `diagnose` status section on real Redis (marker `ops`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
import redis

from cache import connections, keys
from cache.connections import Role
from cache.errors import RedisUnavailable
from cache.settings import Settings
from jobs.enqueue import enqueue
from workers.cli.diagnose import biggest_patterns, diagnose, latency_latest, latency_samples, sample_key_sizes
from workers.cli.status_sections import diagnose_section
from workers.dev.servers import PRIMARY_CONF, RedisServer

pytestmark = pytest.mark.ops


def test_latency_samples_are_sane_numbers(primary: redis.Redis) -> None:
    summary = latency_samples(primary, pings=30)
    assert summary["samples"] == 30
    assert 0 < summary["min_ms"] <= summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


def test_latency_latest_lists_recorded_spikes(primary: redis.Redis) -> None:
    primary.execute_command("LATENCY", "RESET")  # type: ignore[no-untyped-call]
    assert latency_latest(primary) == []


def _fill(primary: redis.Redis) -> list[str]:
    session_ids = [secrets.token_urlsafe(32) for _ in range(40)]
    for index, session_id in enumerate(session_ids):
        primary.hset(keys.session(session_id), mapping={"uid": str(index), "d:cart": "x" * 200})
    for user in range(10):
        primary.set(keys.user_sessions(str(user)), "y" * 10)
    primary.set("kx:big:blob", "z" * 100_000)
    for _ in range(3):
        enqueue("email", "jobs.diagnostics.noop")
    return session_ids


def test_sessions_group_into_one_pattern(primary: redis.Redis) -> None:
    session_ids = _fill(primary)
    report = biggest_patterns(primary, sample_keys=10_000, top=50)
    rows = {row["pattern"]: row for row in report["patterns"]}

    assert report["dbsize"] == primary.dbsize()
    assert report["sampled"] == report["dbsize"], "a small keyspace is sampled completely"
    assert rows["session:{sessions}:*"]["keys"] == 40
    sizes = [int(primary.memory_usage(keys.session(s)) or 0) for s in session_ids]
    assert rows["session:{sessions}:*"]["max_bytes"] == max(sizes)
    assert rows["session:{sessions}:*"]["total_bytes"] == sum(sizes)
    assert rows["session:{sessions}:*"]["estimated_total_bytes"] == sum(sizes)
    assert rows["kx:{sessions}:user:*"]["keys"] == 10
    assert rows["rq:job:*"]["keys"] == 3
    assert report["patterns"][0]["pattern"] == "kx:big:blob", "largest total first"
    assert not any(s in str(report) for s in session_ids), "session ids are secrets: never reported"


def test_sample_is_bounded(primary: redis.Redis) -> None:
    primary.mset({f"item:{i}": "v" for i in range(2_000)})
    sizes = sample_key_sizes(primary, sample_keys=300)
    assert len(sizes) == 300
    report = biggest_patterns(primary, sample_keys=300, top=5)
    assert report["sampled"] == 300
    assert report["dbsize"] == 2_000
    (row,) = report["patterns"]
    assert row["pattern"] == "item:*"
    assert row["estimated_total_bytes"] == round(row["total_bytes"] * 2_000 / 300)


def test_empty_database(primary: redis.Redis) -> None:
    report = biggest_patterns(primary)
    assert report == {"dbsize": 0, "sampled": 0, "patterns": []}


def test_diagnose_section_text_and_json(primary: redis.Redis) -> None:
    _fill(primary)
    section = diagnose_section(primary, pings=10, top=3)
    assert set(section) == {"latency", "latency_events", "info", "keys", "_text"}
    assert section["info"]["memory"]["maxmemory_policy"] == "noeviction"
    assert section["info"]["persistence"]["aof_enabled"] == 1
    assert len(section["keys"]["patterns"]) == 3
    text = "\n".join(section["_text"])
    assert "latency: 10 PINGs" in text
    assert "policy noeviction" in text
    assert "AOF on" in text
    assert "session:{sessions}:*  40 key(s)" in text


def test_refused_probe_is_reported_in_place(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(PRIMARY_CONF, "--rename-command", "MEMORY", "", "--rename-command", "LATENCY", "")
    client = connections.build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url}))
    client.set("k", "v")
    report = diagnose(client, pings=5)
    assert "unknown command" in report["keys"]["error"]
    assert "unknown command" in report["latency_events"]["error"]
    assert report["latency"]["samples"] == 5, "the other probes still answer"
    assert report["info"]["memory"]["used_memory"] > 0


def test_unreachable_redis_raises(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    client = connections.build_client(
        Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "1"})
    )
    server.kill()
    with pytest.raises(RedisUnavailable, match=r"cache Redis .*unreachable"):
        diagnose(client, pings=1, role=Role.CACHE)
