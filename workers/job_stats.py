"""Totals per queue (finished, failed, retried, durations) for the metrics endpoint.

RQ's registries say what is there now, not how many jobs ever finished; each worker
counts its outcomes in memory and adds them to one Redis hash per queue at most every
`FLUSH_INTERVAL_S` (one pipelined round trip), so counting costs nothing per job.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.queue import Queue

from cache.connections import REDIS_ERRORS
from cache.counters import BufferedCounters
from cache.keys import job_counters
from workers import bookkeeping
from workers.job import runs_of

log = logging.getLogger("kryonix.job_stats")

FLUSH_INTERVAL_S = 2.0
# Upper bounds (seconds) of the duration histogram: from a fast email to a long report.
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
OUTCOMES = ("finished", "failed", "retried", "stopped")
DURATION_SUM = "duration_sum"  # seconds spent on the jobs of one queue (HINCRBYFLOAT)


def bucket_field(index: int) -> str:
    return f"le:{DURATION_BUCKETS_S[index]}" if index < len(DURATION_BUCKETS_S) else "le:+Inf"


class JobStats:
    """In-process counters of one worker, flushed into Redis in the background of job handling."""

    def __init__(self, connection: redis.Redis, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.connection = connection
        # (queue, field) -> count, and (queue, "duration_sum") -> seconds
        self._counts = BufferedCounters[tuple[str, str], float](flush_interval_s)

    @property
    def flush_interval_s(self) -> float:
        return self._counts.flush_interval_s

    def record(self, queue: str, outcome: str, duration_s: float) -> None:
        """Count one job outcome (`finished`, `failed`, `retried`, `stopped`) and its duration."""
        bucket = bucket_field(bisect.bisect_left(DURATION_BUCKETS_S, duration_s))
        increments = [((queue, outcome), 1.0), ((queue, bucket), 1.0), ((queue, DURATION_SUM), duration_s)]
        self._counts.incr_many(increments)
        if self._counts.flush_due():
            self.flush()

    def flush(self) -> None:
        """Add pending counts to Redis; on failure they stay pending for the next flush."""
        try:
            self._counts.flush(self._write)
        except REDIS_ERRORS as exc:
            log.warning("could not flush job counters (kept for the next flush): %s", exc)

    def _write(self, pending: dict[tuple[str, str], float]) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            for (queue, name), value in pending.items():
                if name == DURATION_SUM:
                    pipe.hincrbyfloat(job_counters(queue), name, value)
                else:
                    pipe.hincrby(job_counters(queue), name, int(value))
            pipe.execute()


def read_job_counters(connection: redis.Redis, queue: str) -> dict[str, float]:
    """Totals of `queue` as written by every worker (missing fields are 0)."""
    raw = connection.hgetall(job_counters(queue))
    values = {
        (k.decode() if isinstance(k, bytes) else str(k)): float(v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    for outcome in OUTCOMES:
        values.setdefault(outcome, 0.0)
    return values


# RQ status after a run -> the counter it adds to (a retry is scheduled or requeued).
_OUTCOMES = {
    "finished": "finished",
    "failed": "failed",
    "stopped": "stopped",
    "scheduled": "retried",
    "queued": "retried",
}


def log_started(job: Job) -> None:
    """The job's start line, once its run is registered (and counted: `workers.job.runs_of`).

    With the end line of `logged_run`, all a worker logs for a job at INFO (`workers.logs`
    leaves out RQ's).
    """
    attempt = runs_of(job)
    log.info(
        "job %s queue=%s func=%s attempt=%d status=started",
        job.id,
        job.origin,
        _func_name(job),
        attempt,
        extra={"job_id": job.id, "queue": job.origin, "attempt": attempt, "status": "started"},
    )


@contextmanager
def logged_run(stats: JobStats, job: Job, queue: Queue, *, in_process: bool) -> Iterator[None]:
    """Time the run; then (unless it raised) count its outcome and log its end line."""
    started = time.monotonic()
    yield
    log_outcome(stats, job, queue, time.monotonic() - started, in_process=in_process)


def _func_name(job: Job) -> str | None:
    try:
        return job.func_name
    except DeserializationError:
        return "<not a JSON job>"


def log_outcome(stats: JobStats, job: Job, queue: Queue, duration_s: float, *, in_process: bool) -> None:
    """Count the job's outcome and log its end line."""
    try:
        status = bookkeeping.final_status(job, in_process=in_process)
    except Exception:
        status = None
    outcome = _OUTCOMES.get(status.value if status is not None else "", "finished")
    stats.record(queue.name, outcome, duration_s)
    attempt = runs_of(job)
    log.info(
        "job %s queue=%s func=%s attempt=%d status=%s duration_ms=%.1f",
        job.id,
        queue.name,
        _func_name(job),
        attempt,
        status.value if status is not None else "gone",
        duration_s * 1000,
        extra={
            "job_id": job.id,
            "queue": queue.name,
            "attempt": attempt,
            "status": status.value if status is not None else "gone",
            "duration_ms": round(duration_s * 1000, 1),
        },
    )
