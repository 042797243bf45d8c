"""The failed-jobs digest for operators: what failed on every queue, once a day.

`send_failed_jobs_digest` is a job: it reads the failed registries and enqueues one
`failed_jobs_digest` email (idempotency key per period, so a repeated run of the same
period sends nothing new). `OPS_EMAIL` schedules it daily (`jobs.periodic.declared`).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job
from rq.registry import FailedJobRegistry

from cache.connections import primary
from jobs.email.validation import EmailValidationError, parse_recipients
from jobs.errors import JobValidationError, PermanentJobError, refuse_extra_arguments
from jobs.queues import QUEUES
from jobs.serialization import JSONSerializer

MAX_LISTED = 50  # the email lists the newest failures; the total is always exact
MAX_REASON_CHARS = 300
MAX_HOURS = 31 * 24  # the failed registry keeps a job for a week by default; a month is plenty


def collect_failures(
    client: redis.Redis, *, since: float, limit: int = MAX_LISTED
) -> tuple[list[dict[str, Any]], int]:
    """(newest `limit` failures since `since`, total count) over every queue's failed registry."""
    rows: list[dict[str, Any]] = []
    for queue in QUEUES:
        registry = FailedJobRegistry(queue, connection=client, serializer=JSONSerializer)
        ids = registry.get_job_ids()
        for job in Job.fetch_many(ids, connection=client, serializer=JSONSerializer):
            if job is None or job.ended_at is None or job.ended_at.timestamp() < since:
                continue
            rows.append(_row(job, queue))
    rows.sort(key=lambda row: row["failed_at"], reverse=True)
    return rows[:limit], len(rows)


def _row(job: Job, queue: str) -> dict[str, Any]:
    failure = job.meta.get("failure") if isinstance(job.meta, dict) else None
    failure = failure if isinstance(failure, dict) else {}
    try:
        func = str(job.func_name)
    except Exception:  # a payload we cannot decode (e.g. pickle written by hand)
        func = "<undecodable>"
    reason = str(failure.get("reason") or "no reason recorded")
    assert job.ended_at is not None
    return {
        "id": job.id,
        "queue": queue,
        "func": func,
        "kind": str(failure.get("kind", "unknown")),
        "reason": reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…",
        "attempts": int(failure.get("attempt", 1)),
        "failed_at": job.ended_at.replace(tzinfo=dt.UTC) if job.ended_at.tzinfo is None else job.ended_at,
    }


def send_failed_jobs_digest(to: list[str], since_hours: int = 24, **unknown: Any) -> str | None:
    """Job: email `to` the jobs that failed in the last `since_hours`; None when there were none.

    The arguments are checked first, whether or not anything failed, so a digest job written
    into Redis by hand with a bad address fails permanently instead of waiting for a failure.

    Returns:
        The id of the digest email's job.

    Raises:
        PermanentJobError: a bad address or `since_hours`, or an unexpected argument.
    """
    from jobs.email.api import enqueue_email

    refuse_extra_arguments("send_failed_jobs_digest", (), unknown)
    try:
        parse_recipients(to)
        if (
            isinstance(since_hours, bool)
            or not isinstance(since_hours, int)
            or not 1 <= since_hours <= MAX_HOURS
        ):
            raise EmailValidationError(
                f"since_hours must be an integer from 1 to {MAX_HOURS}, got {since_hours!r}"
            )
        now = time.time()
        failures, total = collect_failures(primary(), since=now - since_hours * 3600)
        if total == 0:
            return None
        job = get_current_job()
        period = job.meta.get("slot") if job is not None and isinstance(job.meta, dict) else None
        period = period if period is not None else int(now // 3600)
        return enqueue_email(
            to,
            "failed_jobs_digest",
            {"failures": failures, "total": total, "since_hours": since_hours},
            idempotency_key=f"failed-jobs-digest-{period}",
        )
    except JobValidationError as exc:
        raise PermanentJobError(f"invalid digest job: {exc}") from None
