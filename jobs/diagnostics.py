"""Small jobs for operators and tests: prove the pipeline works end to end.

They are ordinary allow-listed jobs: `noop` measures worker overhead, `record` leaves
a mark per run so "ran exactly once" can be checked, `flaky` fails a given number
of times before succeeding, `fail_permanently` never succeeds.
"""

from __future__ import annotations

import time

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
