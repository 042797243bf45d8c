"""`python -m workers job ID`: status, a progress bar while running, the result when done."""

from __future__ import annotations

from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from cache.text import printable
from jobs.quarantine import UnreadableJob
from workers.cli.failed import error_text, func_name_of, iso_utc, reason_of
from workers.job import KryonixJob, runs_of

BAR_WIDTH = 30


def progress_bar(percent: float, width: int = BAR_WIDTH) -> str:
    filled = round(width * max(0.0, min(100.0, percent)) / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%"


def describe_job(client: redis.Redis, *, job_id: str) -> dict[str, Any]:
    """Raises LookupError when the job does not exist or cannot be read (the reason given)."""
    try:
        job = KryonixJob.fetch(job_id, connection=client)
    except UnreadableJob as exc:  # a NoSuchJobError too: caught first
        raise LookupError(f"job {job_id!r} cannot be shown: {exc.reason}") from None
    except NoSuchJobError:
        raise LookupError(f"no job {job_id!r} (never existed, or its result expired)") from None
    status = job.get_status(refresh=False)
    info: dict[str, Any] = {
        "id": job.id,
        "queue": job.origin,
        "func": func_name_of(job),
        "status": status.value if status is not None else None,
        "attempts": runs_of(job),
        "enqueued_at": iso_utc(job.enqueued_at),
        "started_at": iso_utc(job.started_at),
        "ended_at": iso_utc(job.ended_at),
        "progress": job.meta.get("progress"),
    }
    if info["status"] == "finished":
        info.update(_result_of(job))
    if info["status"] in ("failed", "stopped"):
        info["failure_kind"], info["failure_reason"] = reason_of(job)
    if info["status"] == "scheduled":
        if info["attempts"]:
            info["failure_kind"], info["failure_reason"] = _last_exception(job)
        info.update(_next_run(client, job))
    return info


def _result_of(job: Job) -> dict[str, Any]:
    """{"result": value}, or {"result_unreadable": why} for a result entry written by hand."""
    try:
        return {"result": job.return_value()}
    except redis.RedisError:
        raise
    except Exception as exc:
        return {"result_unreadable": error_text(exc)}


def _last_exception(job: Job) -> tuple[str, str]:
    """(kind, `Type: message`) of the run that failed last, as its traceback ends."""
    kind, reason = reason_of(job)
    failure = job.meta.get("failure") if isinstance(job.meta, dict) else None
    name = failure.get("type") if isinstance(failure, dict) else None
    return kind, f"{name}: {reason}" if isinstance(name, str) and name and reason != name else reason


def _next_run(client: redis.Redis, job: Job) -> dict[str, Any]:
    """When a scheduled job runs next and, for a retry, which one of its budget it is."""
    registry = ScheduledJobRegistry(job.origin, connection=client, job_class=KryonixJob)  # type: ignore[no-untyped-call]
    try:
        found: dict[str, Any] = {"next_run_at": iso_utc(registry.get_scheduled_time(job.id))}
    except NoSuchJobError:
        found = {"next_run_at": None}
    budget, left = len(job.retry_intervals or ()), job.retries_left
    if runs_of(job) and left is not None and 0 <= left < budget:
        found.update(retry=budget - left, retries=budget)
    return found


def job_percent(progress: Any) -> float | None:
    """The percentage of a `progress` meta entry, None when it is not one (hand-written meta)."""
    percent = progress.get("percent") if isinstance(progress, dict) else None
    if isinstance(percent, int | float) and not isinstance(percent, bool) and percent == percent:
        return float(percent)
    return None


def render_job(info: dict[str, Any]) -> str:
    """The text of `job ID`, every line escaped: job data cannot drive the operator's terminal."""
    runs = info["attempts"]
    lines = [f"job {info['id']} on {info['queue']}: {info['status']} ({_runs_text(runs)})"]
    lines.append(f"  function: {info['func']}")
    progress = info.get("progress")
    percent = job_percent(progress)
    if percent is not None and isinstance(progress, dict):
        lines.append(f"  progress: {progress_bar(percent)} {progress.get('message', '')}")
    if "result" in info:
        lines.append(f"  result: {info['result']!r}")
    if "result_unreadable" in info:
        lines.append(f"  result: <unreadable: {info['result_unreadable']}>")
    if "failure_reason" in info:
        failed = "failed" if info["status"] != "scheduled" else "last failure"
        lines.append(f"  {failed} ({info['failure_kind']}): {info['failure_reason']}")
    if "next_run_at" in info:
        retry = f" (retry {info['retry']} of {info['retries']})" if "retry" in info else ""
        lines.append(f"  next run: {info['next_run_at'] or 'unknown'}{retry}")
    return "\n".join(printable(line) for line in lines)


def _runs_text(runs: int) -> str:
    return f"attempt {runs}" if runs else "not run yet"
