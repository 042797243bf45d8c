"""Progress for running jobs: percent and message in job meta, readable by `python -m workers job ID`."""

from __future__ import annotations

import time
from typing import Any

from rq import get_current_job


def report_progress(percent: float, message: str = "", **extra: Any) -> None:
    """Record progress of the current job (no-op outside a job).

    Only the `progress` meta key is written (RQ's `save_meta` writes the whole meta), so
    call it at a modest rate: each call is one Redis write.
    """
    job = get_current_job()
    if job is None:
        return
    job.meta["progress"] = {
        "percent": round(max(0.0, min(100.0, float(percent))), 1),
        "message": message,
        "at": time.time(),
        **extra,
    }
    job.save_meta()  # type: ignore[no-untyped-call]
