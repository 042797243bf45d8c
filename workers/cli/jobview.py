"""`python -m workers job ID`: status, a progress bar while running, the result when done."""

from __future__ import annotations

from typing import Any

import redis
from rq.exceptions import NoSuchJobError

from cache.text import printable
from workers.cli.failed import reason_of
from workers.job import KryonixJob, attempt_of

BAR_WIDTH = 30


def progress_bar(percent: float, width: int = BAR_WIDTH) -> str:
    filled = round(width * max(0.0, min(100.0, percent)) / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%"


def describe_job(client: redis.Redis, *, job_id: str) -> dict[str, Any]:
    """Raises LookupError when the job does not exist."""
    try:
        job = KryonixJob.fetch(job_id, connection=client)
    except NoSuchJobError:
        raise LookupError(f"no job {job_id!r} (never existed, or its result expired)") from None
    status = job.get_status(refresh=False)
    info: dict[str, Any] = {
        "id": job.id,
        "queue": job.origin,
        "func": job.func_name,
        "status": status.value if status is not None else None,
        "attempt": attempt_of(job),
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "progress": job.meta.get("progress"),
    }
    if info["status"] == "finished":
        info["result"] = job.return_value()
    if info["status"] in ("failed", "stopped"):
        info["failure_kind"], info["failure_reason"] = reason_of(job)
    return info


def _percent(progress: Any) -> float | None:
    """The percentage of a `progress` meta entry, None when it is not one (hand-written meta)."""
    percent = progress.get("percent") if isinstance(progress, dict) else None
    if isinstance(percent, int | float) and not isinstance(percent, bool) and percent == percent:
        return float(percent)
    return None


def render_job(info: dict[str, Any]) -> str:
    """The text of `job ID`, every line escaped: job data cannot drive the operator's terminal."""
    lines = [f"job {info['id']} on {info['queue']}: {info['status']} (attempt {info['attempt']})"]
    lines.append(f"  function: {info['func']}")
    progress = info.get("progress")
    percent = _percent(progress)
    if percent is not None and isinstance(progress, dict):
        lines.append(f"  progress: {progress_bar(percent)} {progress.get('message', '')}")
    if "result" in info:
        lines.append(f"  result: {info['result']!r}")
    if "failure_reason" in info:
        lines.append(f"  failed ({info['failure_kind']}): {info['failure_reason']}")
    return "\n".join(printable(line) for line in lines)
