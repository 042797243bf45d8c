"""Small jobs for operators and tests: prove the pipeline works end to end.

They are ordinary allow-listed jobs: `noop` measures worker overhead, `record` leaves
a mark per run so "ran exactly once" can be checked, `flaky` fails a given number
of times before succeeding, `fail_permanently` never succeeds, `send_email_stalled_once`
holds an email job where a test kills its worker.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from cache.connections import primary
from jobs.errors import PermanentJobError, TransientJobError
from jobs.progress import report_progress


def noop() -> None:
    """Do nothing: the cost of a job is then the worker's own."""


def record(key: str, token: str) -> str:
    """Append `token` to the Redis list `key` (one entry per run) and return it."""
    primary().rpush(key, token)
    return token


def record_slot(key: str) -> int:
    """Append the periodic slot this run belongs to (from job meta) to the Redis list `key`."""
    from rq import get_current_job

    job = get_current_job()
    slot = int(job.meta["slot"]) if job is not None else -1
    primary().rpush(key, slot)
    return slot


def sleep(seconds: float, key: str | None = None, token: str = "done") -> str:  # noqa: S107 - a marker, not a secret
    """Sleep, reporting progress each second; then `record` if `key` is given."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        report_progress(100 * (1 - left / seconds), f"{left:.0f} s left")
        time.sleep(min(1.0, left))
    if key is not None:
        record(key, token)
    return token


def flaky(counter_key: str, failures: int) -> int:
    """Raise a transient error on the first `failures` runs, then succeed; returns the run number."""
    run = int(primary().incr(counter_key))
    if run <= failures:
        raise TransientJobError(f"transient failure {run} of {failures}")
    return run


def fail_permanently(reason: str) -> None:
    """Always fail in a way no retry can fix."""
    raise PermanentJobError(reason)


def crash(message: str) -> None:
    """Raise an unclassified error (treated as transient: retried per policy)."""
    raise RuntimeError(message)


def send_email_stalled_once(
    email: dict[str, Any], stall_at: Literal["after_accept", "after_marker"], seconds: float, once_key: str
) -> dict[str, Any]:
    """`jobs.email.jobs.send_email`, its first run held for `seconds` at `stall_at`.

    `after_accept`: the server said 250, the idempotency marker is not written yet;
    `after_marker`: the marker is written, the job not finished. A test kills the
    worker there. The run that creates `once_key` stalls; every later run (the one
    that recovers the job) goes straight through.
    """
    from jobs.email import jobs as email_jobs

    if not primary().set(once_key, stall_at, nx=True, ex=3600):
        return email_jobs.send_email(email)
    mark = email_jobs._mark

    def stalled_mark(key: str, record: dict[str, Any]) -> None:
        if stall_at == "after_accept":
            time.sleep(seconds)
        mark(key, record)
        if stall_at == "after_marker":
            time.sleep(seconds)

    email_jobs._mark = stalled_mark  # email jobs run inside the worker: put it back below
    try:
        return email_jobs.send_email(email)
    finally:
        email_jobs._mark = mark
