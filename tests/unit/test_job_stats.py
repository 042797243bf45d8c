"""Job counters: counted in memory, flushed in one round trip, never lost on a failed flush."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from workers.job_stats import JobStats, bucket_field, read_job_counters


def test_outcomes_and_duration_buckets_are_flushed(fake_redis: fakeredis.FakeRedis) -> None:
    stats = JobStats(fake_redis, flush_interval_s=3600)
    stats.record("email", "finished", 0.003)
    stats.record("email", "finished", 0.2)
    stats.record("email", "failed", 7.0)
    stats.record("report", "retried", 100.0)
    assert read_job_counters(fake_redis, "email")["finished"] == 0, "nothing written before a flush"
    stats.flush()
    email = read_job_counters(fake_redis, "email")
    assert (email["finished"], email["failed"], email["retried"]) == (2, 1, 0)
    assert email["le:0.01"] == 1 and email["le:0.25"] == 1 and email["le:10.0"] == 1
    assert email["duration_sum"] == pytest.approx(7.203)
    assert read_job_counters(fake_redis, "report")["le:300.0"] == 1


def test_overflow_bucket() -> None:
    assert bucket_field(99) == "le:+Inf"


def test_failed_flush_keeps_counts(fake_redis: fakeredis.FakeRedis) -> None:
    class Down:
        def pipeline(self, transaction: bool = True) -> None:
            raise redis.ConnectionError("down")

    stats = JobStats(Down(), flush_interval_s=3600)  # type: ignore[arg-type]
    stats.record("email", "finished", 0.1)
    stats.flush()
    stats.connection = fake_redis
    stats.flush()
    assert read_job_counters(fake_redis, "email")["finished"] == 1
