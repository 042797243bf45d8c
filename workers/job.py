"""The RQ job class our workers run: JSON only, allow-listed functions, classified failures.

Export `RQ_JOB_CLASS=workers.job.KryonixJob`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus

from cache.settings import get_settings
from jobs.allowlist import JobNotAllowed, resolve
from jobs.errors import PermanentJobError
from jobs.queues import QUEUES, JsonJob

PERMANENT = "permanent"
TRANSIENT = "transient"


RUNS = "runs"  # job meta: how many times a worker started the job, requeues included


def runs_of(job: Job) -> int:
    """How many times the job was started (requeues included): during a run, that run's number.

    RQ counts only the retries left of one retry budget, which a permanent failure zeroes
    and a requeue does not renew, so the count is kept in the job's meta (`count_run`).
    """
    runs = job.meta.get(RUNS) if isinstance(job.meta, dict) else None
    return runs if type(runs) is int and runs >= 0 else 0  # a hand-written meta may hold anything


def count_run(job: Job) -> None:
    """Count one more start of `job` in its meta (in memory; the caller writes the meta)."""
    if isinstance(job.meta, dict) and getattr(job, "_unreadable_meta", None) is None:
        job.meta[RUNS] = runs_of(job) + 1


def not_a_json_job(exc: DeserializationError) -> JobNotAllowed:
    """The refusal of a job whose data does not decode (pickle, garbage, a wrong shape)."""
    cause = exc.__cause__ or exc
    return JobNotAllowed(
        f"job data is not a JSON job [function, null, args, kwargs]: {type(cause).__name__}: {cause}"
    )


class KryonixJob(JsonJob):
    """An RQ job that can only be JSON and can only run functions under `jobs.`.

    A job written straight into Redis that names `os.system`, carries pickle, sets a
    callback outside the allow-list, carries webhooks (unless ALLOW_JOB_WEBHOOKS) or
    depends on a job that never finished fails permanently with a readable reason;
    nothing of it runs and no URL is contacted.
    """

    @property
    def func(self) -> Callable[..., Any]:
        try:
            instance, name = self.instance, self.func_name
        except DeserializationError as exc:
            raise not_a_json_job(exc) from None
        if instance is not None:
            raise JobNotAllowed("jobs bound to an instance are refused; name a function under 'jobs.'")
        return resolve(str(name))

    def refuse_unsafe(self) -> None:
        """Refuse, before anything runs, what a job written straight into Redis may carry.

        Raises:
            JobNotAllowed: meta that is not JSON, webhooks while they are off, no timeout or
                one past the queue's (RQ's -1 would hold the worker for ever), a function
                or callback outside the allow-list, or a dependency that does not exist
                or has not finished.
        """
        if self._unreadable_meta is not None:
            # Dropped, so the refusal can be recorded in a JSON meta of its own.
            self.meta, self._unreadable_meta = {}, None
            raise JobNotAllowed("job meta is not JSON (pickle or garbage written by hand); refused")
        if self.webhooks and not get_settings().allow_job_webhooks:
            urls = ", ".join(sorted({hook.url for hook in self.webhooks}))[:200]
            raise JobNotAllowed(
                f"job carries webhooks ({urls}); refused, nothing contacted (ALLOW_JOB_WEBHOOKS is off)"
            )
        self._refuse_unbounded_timeout()
        self.func  # noqa: B018 - resolves (and refuses) the function before anything else
        for kind, name in (
            ("success", self._success_callback_name),
            ("failure", self._failure_callback_name),
            ("stopped", self._stopped_callback_name),
        ):
            if name:
                try:
                    resolve(name)
                except JobNotAllowed as exc:
                    raise JobNotAllowed(f"{kind} callback refused: {exc}") from None
        self._refuse_unmet_dependencies()

    def _refuse_unbounded_timeout(self) -> None:
        """A job of our queues runs within its queue's timeout, never without one (RQ's -1)."""
        spec = QUEUES.get(str(self.origin))
        timeout = self.timeout
        if spec is None or timeout is None or 0 < timeout <= spec.job_timeout_s:
            return  # None: RQ applies the queue class's default, itself bounded
        raise JobNotAllowed(
            f"job timeout {timeout!r} s is outside 1..{spec.job_timeout_s} s of queue {spec.name!r}; refused"
        )

    def _refuse_unmet_dependencies(self) -> None:
        """A queued job's dependencies have finished (RQ queues dependents only then)."""
        ids = list(self._dependency_ids)
        if not ids:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.key_for(job_id), "status")
            statuses = pipe.execute()
        allowed = {JobStatus.FINISHED.value} | (
            {JobStatus.FAILED.value} if self.allow_dependency_failures else set()
        )
        for job_id, status in zip(ids, statuses, strict=True):
            if status is None:
                raise JobNotAllowed(f"job depends on {job_id!r}, which does not exist")
            if status.decode(errors="replace") not in allowed:
                raise JobNotAllowed(f"job depends on {job_id!r}, which is {status.decode(errors='replace')}")

    def send_webhooks(self, status: str | JobStatus, *, exc_string: str | None = None) -> None:
        """RQ's webhooks, only with ALLOW_JOB_WEBHOOKS: otherwise nothing is ever contacted."""
        if self.webhooks and get_settings().allow_job_webhooks:
            super().send_webhooks(status, exc_string=exc_string)

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
            self.refuse_unsafe()
            return super().perform()
        except (PermanentJobError, JobNotAllowed) as exc:
            # Retrying cannot help: fail now, with the reason readable on the failed job.
            self._record_failure(PERMANENT, exc)
            self.retries_left = 0
            raise
        except Exception as exc:
            self._record_failure(TRANSIENT, exc)
            raise

    def fail_permanently(self, exc: BaseException) -> None:
        """Record `exc` as a permanent failure (no retry), for refusals outside `perform`."""
        self._record_failure(PERMANENT, exc)
        self.retries_left = 0

    def _record_failure(self, kind: str, exc: BaseException) -> None:
        self.meta["failure"] = {
            "kind": kind,
            "type": type(exc).__name__,
            "reason": str(exc) or type(exc).__name__,
            "attempt": runs_of(self),
            "at": time.time(),
        }
        self.save_meta()  # type: ignore[no-untyped-call]
