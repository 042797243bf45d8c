"""Totals per queue (finished, failed, retried, durations) for the metrics endpoint.

RQ's registries say what is there now, not how many jobs ever finished; each worker
counts its outcomes in memory and adds them to one Redis hash per queue at most every
`FLUSH_INTERVAL_S` (one pipelined round trip), so counting costs nothing per job.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter

import redis

from cache.keys import job_counters

log = logging.getLogger("kryonix.job_stats")

FLUSH_INTERVAL_S = 2.0
# Upper bounds (seconds) of the duration histogram: from a fast email to a long report.
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
OUTCOMES = ("finished", "failed", "retried", "stopped")


def bucket_field(index: int) -> str:
    return f"le:{DURATION_BUCKETS_S[index]}" if index < len(DURATION_BUCKETS_S) else "le:+Inf"


class JobStats:
    """In-process counters of one worker, flushed into Redis in the background of job handling."""

    def __init__(self, connection: redis.Redis, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.connection = connection
        self.flush_interval_s = flush_interval_s
        self._pending: dict[str, Counter[str]] = {}
        self._duration_sum: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def record(self, queue: str, outcome: str, duration_s: float) -> None:
        """Count one job outcome (`finished`, `failed`, `retried`, `stopped`) and its duration."""
        with self._lock:
            counts = self._pending.setdefault(queue, Counter())
            counts[outcome] += 1
            counts[bucket_field(bisect.bisect_left(DURATION_BUCKETS_S, duration_s))] += 1
            self._duration_sum[queue] = self._duration_sum.get(queue, 0.0) + duration_s
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Add pending counts to Redis; on failure they stay pending for the next flush."""
        with self._lock:
            pending, sums = self._pending, self._duration_sum
            self._pending, self._duration_sum = {}, {}
            self._last_flush = time.monotonic()
        if not pending:
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for queue, counts in pending.items():
                    for name, value in counts.items():
                        pipe.hincrby(job_counters(queue), name, value)
                    pipe.hincrbyfloat(job_counters(queue), "duration_sum", sums[queue])
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not flush job counters (kept for the next flush): %s", exc)
            with self._lock:
                for queue, counts in pending.items():
                    self._pending.setdefault(queue, Counter()).update(counts)
                    self._duration_sum[queue] = self._duration_sum.get(queue, 0.0) + sums[queue]


def read_job_stats(connection: redis.Redis, queue: str) -> dict[str, float]:
    """Totals of `queue` as written by every worker (missing fields are 0)."""
    raw = connection.hgetall(job_counters(queue))
    values = {
        (k.decode() if isinstance(k, bytes) else str(k)): float(v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    for outcome in OUTCOMES:
        values.setdefault(outcome, 0.0)
    return values
