"""Pure parts of diagnose, metrics and backup: percentiles, grouping, buckets, rendering, bad input."""

from __future__ import annotations

import itertools
import math
from typing import Any

import fakeredis
import pytest

from cache import keys
from cache.errors import ConfigError
from workers.cli.backup import check_timeout, render_backup
from workers.cli.diagnose import (
    INFO_FIELDS,
    MAX_PINGS,
    PatternUsage,
    diagnose,
    group_by_pattern,
    info_summary,
    latency_samples,
    percentile,
    summarize_latency,
)
from workers.cli.metrics import check_port, count_ratelimit_keys, cumulative_buckets
from workers.cli.status_sections import human_bytes, render_diagnose
from workers.job_stats import DURATION_BUCKETS_S, bucket_field

pytestmark = pytest.mark.ops


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0], 50, 1.0),
        ([1.0, 2.0], 51, 2.0),
        ([float(v) for v in range(1, 101)], 50, 50.0),
        ([float(v) for v in range(1, 101)], 99, 99.0),
        ([float(v) for v in range(1, 101)], 100, 100.0),
        ([float(v) for v in range(1, 101)], 0, 1.0),
        ([float(v) for v in range(1, 11)], 99, 10.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("values", "q", "message"), [([], 50, "no values"), ([1.0], 101, "between 0 and 100")]
)
def test_percentile_rejects(values: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, q)


def test_summarize_latency() -> None:
    summary = summarize_latency([0.3, 0.1, 0.2, 5.0])
    assert summary == {"samples": 4, "min_ms": 0.1, "p50_ms": 0.2, "p99_ms": 5.0, "max_ms": 5.0}
    with pytest.raises(ValueError, match="no latency samples"):
        summarize_latency([])


def test_latency_samples_with_a_fake_clock() -> None:
    # Each PING "takes" 1, 2, 3, ... ms on the injected clock: the summary is exact.
    ticks = itertools.count()
    now = {"t": 0.0}

    def clock() -> float:
        step = next(ticks)
        if step % 2:  # end of a ping
            now["t"] += (step // 2 + 1) / 1000
        return now["t"]

    summary = latency_samples(fakeredis.FakeRedis(), pings=100, monotonic=clock)
    assert summary == {"samples": 100, "min_ms": 1.0, "p50_ms": 50.0, "p99_ms": 99.0, "max_ms": 100.0}


@pytest.mark.parametrize("pings", [0, -1, MAX_PINGS + 1, 1.5, True, "10", None])
def test_latency_samples_rejects_bad_counts(pings: Any) -> None:
    with pytest.raises(ValueError, match="pings must be an int between 1 and"):
        latency_samples(fakeredis.FakeRedis(), pings=pings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pings": 0}, "pings must be"),
        ({"sample_keys": 0}, "sample_keys must be"),
        ({"sample_keys": "all"}, "sample_keys must be"),
        ({"top": 0}, "top must be a positive int"),
        ({"top": 2.5}, "top must be a positive int"),
    ],
)
def test_diagnose_checks_counts_before_any_io(kwargs: dict[str, Any], message: str) -> None:
    class NoIO:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"Redis was called ({name}) before the arguments were checked")

    with pytest.raises(ValueError, match=message):
        diagnose(NoIO(), **kwargs)  # type: ignore[arg-type]


def test_group_by_pattern_sums_maxes_and_orders() -> None:
    sizes: list[tuple[str | bytes, int]] = [
        (b"session:" + b"A1" * 20, 100),
        (b"session:" + b"B2" * 20, 300),
        ("session:" + "C3" * 20, 200),
        ("rq:job:11111111-2222-3333-4444-555555555555", 1000),
        ("rq:queue:email", 50),
        ("config", 50),
    ]
    assert group_by_pattern(sizes, top=10) == [
        PatternUsage("rq:job:*", keys=1, total_bytes=1000, max_bytes=1000),
        PatternUsage("session:*", keys=3, total_bytes=600, max_bytes=300),
        PatternUsage("config", keys=1, total_bytes=50, max_bytes=50),  # ties: alphabetical
        PatternUsage("rq:queue:email", keys=1, total_bytes=50, max_bytes=50),
    ]
    assert [row.pattern for row in group_by_pattern(sizes, top=2)] == ["rq:job:*", "session:*"]
    assert group_by_pattern([], top=3) == []


def test_info_summary_picks_fields_and_marks_missing_ones() -> None:
    info = {"used_memory": 10, "maxmemory_policy": "noeviction", "aof_enabled": 1, "unrelated": "x"}
    summary = info_summary(info)
    assert set(summary) == set(INFO_FIELDS)
    assert summary["memory"]["used_memory"] == 10
    assert summary["memory"]["maxmemory_policy"] == "noeviction"
    assert summary["persistence"]["aof_enabled"] == 1
    assert summary["stats"]["evicted_keys"] is None
    assert "unrelated" not in str(summary)


def test_render_diagnose_shows_errors_in_place_of_parts() -> None:
    report = {
        "latency": {"error": "ResponseError: NOPERM"},
        "latency_events": {"error": "ResponseError: NOPERM latency"},
        "info": {"error": "ResponseError: NOPERM info"},
        "keys": {"error": "ResponseError: NOPERM memory"},
    }
    lines = render_diagnose(report)
    assert lines == [
        "latency: ResponseError: NOPERM",
        "latency events: ResponseError: NOPERM latency",
        "info: ResponseError: NOPERM info",
        "biggest keys: ResponseError: NOPERM memory",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (4 * 1024**3, "4.0 GiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_human_bytes(value: int | None, text: str) -> None:
    assert human_bytes(value) == text


def test_cumulative_buckets_from_per_bucket_counts() -> None:
    # One job in the first bucket, two in the 1 s bucket, one above every bound.
    one_second = DURATION_BUCKETS_S.index(1.0)
    stats = {bucket_field(0): 1.0, bucket_field(one_second): 2.0, "le:+Inf": 1.0, "finished": 4.0}
    buckets = cumulative_buckets(stats)
    assert [le for le, _ in buckets] == [repr(float(b)) for b in DURATION_BUCKETS_S] + ["+Inf"]
    counts = dict(buckets)
    assert counts["0.01"] == 1.0
    assert counts["0.5"] == 1.0
    assert counts["1.0"] == 3.0
    assert counts["1800.0"] == 3.0
    assert counts["+Inf"] == 4.0
    assert [c for _, c in buckets] == sorted(c for _, c in buckets), "buckets must never decrease"


def test_cumulative_buckets_of_nothing_are_zero() -> None:
    assert all(count == 0.0 for _, count in cumulative_buckets({}))


def test_count_ratelimit_keys_by_scope_and_window() -> None:
    names: list[bytes | str] = [
        keys.rate_limit_log("ip", 60_000, "203.0.113.7").encode(),
        keys.rate_limit_log("ip", 60_000, "203.0.113.8"),
        keys.rate_limit_log("ip", 3_600_000, "203.0.113.8"),
        keys.rate_limit_log("api", 3_600_000, "h:" + "a" * 32),
        "kx:rl:not-a-log",
        "kx:rl:{ip:notanumber:x}",
        "session:abc",
    ]
    assert count_ratelimit_keys(names) == {("ip", 60_000): 2, ("ip", 3_600_000): 1, ("api", 3_600_000): 1}


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        (keys.rate_limit_log("user", 60_000, "42"), ("user", 60_000)),
        (keys.rate_limit_log("api", 1, "h:" + "0" * 32), ("api", 1)),
        ("kx:rl:{ip:60000:}", None),
        ("kx:rl:{ip:60000:x", None),
        ("kx:rl:{:60000:x}", None),
        ("kx:cache:{ip:60000:x}", None),
    ],
)
def test_rate_limit_log_scope_inverts_rate_limit_log(key: str, parsed: tuple[str, int] | None) -> None:
    assert keys.rate_limit_log_scope(key) == parsed


@pytest.mark.parametrize("port", [-1, 65536, 1.5, "9182", True, None])
def test_check_port_rejects(port: Any) -> None:
    with pytest.raises(ConfigError, match="metrics port must be an int between 0 and 65535"):
        check_port(port)


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, "10", True, None])
def test_backup_timeout_rejects(timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout_s must be"):
        check_timeout(timeout)


def test_render_backup() -> None:
    result = {
        "lastsave": 1_700_000_000,
        "previous_lastsave": 1_699_999_000,
        "rdb_path": None,
        "size_bytes": None,
        "waited_for_running_save": True,
        "duration_s": 1.25,
        "warning": "CONFIG GET refused",
    }
    lines = render_backup(result)
    assert lines[0].startswith("backup done in 1.2 s: LASTSAVE 1700000000 (")
    assert lines[1] == "RDB file: unknown path (unknown size)"
    assert "already running" in lines[2]
    assert lines[3] == "WARNING: CONFIG GET refused"
