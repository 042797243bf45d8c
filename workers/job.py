"""The RQ job class our workers run: JSON only, allow-listed functions, classified failures.

Export `RQ_JOB_CLASS=workers.job.KryonixJob`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rq.job import Job

from jobs.allowlist import JobNotAllowed, resolve
from jobs.errors import PermanentJobError
from jobs.queues import JsonJob

PERMANENT = "permanent"
TRANSIENT = "transient"


def attempt_of(job: Job) -> int:
    """1 for the first run, 2 for the first retry, ... (RQ counts only the retries left)."""
    failure = job.meta.get("failure") if isinstance(job.meta, dict) else None
    if isinstance(failure, dict) and failure.get("kind") == PERMANENT:
        return int(failure["attempt"])  # its retry budget was zeroed: the count is in the record
    if job.retry_intervals and job.retries_left is not None:
        return len(job.retry_intervals) - job.retries_left + 1
    return 1


class KryonixJob(JsonJob):
    """An RQ job that can only be JSON and can only run functions under `jobs.`.

    A job written straight into Redis that names `os.system`, carries pickle, or sets a
    callback outside the allow-list fails with a readable reason; nothing of it runs.
    """

    @property
    def func(self) -> Callable[..., Any]:
        if self.instance is not None:
            raise JobNotAllowed("jobs bound to an instance are refused; name a function under 'jobs.'")
        return resolve(str(self.func_name))

    # Callbacks are imported by name too: the same allow-list applies.
    def _allowed_callback(self, name: str | None) -> Callable[..., Any] | None:
        return resolve(name) if name else None

    @property
    def success_callback(self) -> Callable[..., Any] | None:
        return self._allowed_callback(self._success_callback_name)

    @property
    def failure_callback(self) -> Callable[..., Any] | None:
        return self._allowed_callback(self._failure_callback_name)

    @property
    def stopped_callback(self) -> Callable[..., Any] | None:
        return self._allowed_callback(self._stopped_callback_name)

    def perform(self) -> Any:
        try:
            return super().perform()
        except (PermanentJobError, JobNotAllowed) as exc:
            # Retrying cannot help: fail now, with the reason readable on the failed job.
            self._record_failure(PERMANENT, exc)
            self.retries_left = 0
            raise
        except Exception as exc:
            self._record_failure(TRANSIENT, exc)
            raise

    def _record_failure(self, kind: str, exc: BaseException) -> None:
        self.meta["failure"] = {
            "kind": kind,
            "type": type(exc).__name__,
            "reason": str(exc) or type(exc).__name__,
            "attempt": attempt_of(self),
            "at": time.time(),
        }
        self.save_meta()  # type: ignore[no-untyped-call]
