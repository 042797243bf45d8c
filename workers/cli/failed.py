"""The failed-job registry, for operators: list, show, requeue, purge (per queue).

`list` and `purge` cover the quarantine too (entries too broken for the registry), and
an entry of the registry that cannot be read is listed with its reason, never raised.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from cache.text import printable
from jobs.quarantine import UnreadableJob, list_quarantined, purge_quarantined, raw_ids
from jobs.queues import QUEUES
from jobs.serialization import JSONSerializer
from workers.job import KryonixJob, runs_of


def iso_utc(moment: float | dt.datetime | None) -> str | None:
    """`2026-12-01T21:05:09Z` for an epoch or a datetime (naive ones are UTC, as RQ's are)."""
    if moment is None:
        return None
    if isinstance(moment, dt.datetime):
        when = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
    else:
        when = dt.datetime.fromtimestamp(moment, dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class FailedJob:
    id: str
    queue: str
    func: str
    failed_at: float | None
    attempts: int  # runs in total, requeues included (`workers.job.runs_of`)
    kind: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"failed_at": iso_utc(self.failed_at)}


def _registry(client: redis.Redis, *, queue: str) -> FailedJobRegistry:
    return FailedJobRegistry(queue, connection=client, job_class=KryonixJob, serializer=JSONSerializer)


def _queues(queue: str | None) -> Iterable[str]:
    if queue is not None and queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    return [queue] if queue else list(QUEUES)


TRACEBACK_MAX_LINES = 200  # `failed show` prints the end of a longer traceback (--json keeps it whole)
TRACEBACK_MAX_CHARS = 64 * 1024


def error_text(exc: BaseException) -> str:
    """`Type: message`, or the type alone: some exceptions (RQ's, asserts) carry no message."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def traceback_of(job: Job) -> str:
    """The traceback RQ stored with the job's latest failed result ('' if none).

    A result-stream entry written by hand may not parse: its reason is returned instead,
    so one bad entry cannot stop `failed list` or `job`.
    """
    try:
        result = job.latest_result()
    except redis.RedisError:
        raise
    except Exception as exc:
        return f"result stream entry unreadable: {error_text(exc)}"
    return (result.exc_string or "") if result is not None else ""


def reason_of(job: Job) -> tuple[str, str]:
    """(kind, readable reason): what the job recorded, else the last line of its traceback."""
    failure = job.meta.get("failure") if isinstance(job.meta, dict) else None
    if isinstance(failure, dict) and failure.get("reason"):
        return str(failure.get("kind", "unknown")), str(failure["reason"])
    exc_info = traceback_of(job).strip()
    last_line = exc_info.splitlines()[-1] if exc_info else "no reason recorded"
    kind = "abandoned" if "AbandonedJobError" in exc_info else "unknown"
    return kind, last_line


def func_name_of(job: Job) -> str:
    """The job's function, or `<undecodable>` for a payload that does not load (pickle by hand)."""
    try:
        return str(job.func_name)
    except Exception:
        return "<undecodable>"


def _describe(job: Job, queue: str) -> FailedJob:
    kind, reason = reason_of(job)
    func = func_name_of(job)
    ended = job.ended_at.timestamp() if job.ended_at else None
    return FailedJob(job.id, queue, func, ended, runs_of(job), kind, reason)


def list_failed(client: redis.Redis, *, queue: str | None = None) -> list[FailedJob]:
    """Failed and quarantined jobs of `queue` (or all), newest first; unreadable entries included."""
    rows = []
    for name in _queues(queue):
        registry = _registry(client, queue=name)
        for raw_id in raw_ids(client.zrange(registry.key, 0, -1)):
            try:
                job = KryonixJob.fetch(raw_id, connection=client)
            except UnreadableJob as exc:
                rows.append(
                    FailedJob(printable(raw_id), name, "<unreadable>", None, 0, "unreadable", exc.reason)
                )
                continue
            except NoSuchJobError:
                continue
            rows.append(_describe(job, name))
    rows.extend(
        FailedJob(entry.id, entry.queue, "<unreadable>", entry.at, 0, "quarantined", entry.reason)
        for entry in list_quarantined(client)
        if entry.queue in _queues(queue) or (queue is None and entry.queue not in QUEUES)
    )
    return sorted(rows, key=lambda row: row.failed_at or 0, reverse=True)


def show_failed(client: redis.Redis, *, job_id: str) -> dict[str, Any]:
    """Everything about one failed job, including arguments and the traceback.

    Raises:
        LookupError: no such job, or it is not in its queue's failed registry (its status named).
    """
    try:
        job = KryonixJob.fetch(job_id, connection=client)
    except UnreadableJob as exc:
        raise LookupError(f"job {job_id!r} cannot be shown: {exc.reason}") from None
    except NoSuchJobError:
        raise LookupError(f"no job {job_id!r} (never existed, or expired)") from None
    status = job.get_status(refresh=False)
    queue = failed_queue(client, job_id=job.id)
    if queue is None:
        shown = status.value if status is not None else "unknown"
        if shown == "failed":
            raise LookupError(
                f"job {job_id!r} says it failed, but no failed registry lists it (see `job {job.id}`)"
            )
        raise LookupError(f"job {job_id!r} has not failed: it is {shown} (see `job {job.id}`)")
    details = _describe(job, queue).as_dict()
    try:
        details.update(args=job.args, kwargs=job.kwargs)
    except Exception as exc:
        details.update(args=f"<undecodable: {error_text(exc)}>", kwargs=None)
    details.update(
        status=status.value if status is not None else None,
        meta=job.meta,
        traceback=traceback_of(job),
    )
    if job.origin != queue:
        details.update(origin=job.origin)  # what the hash says: `failed requeue` sets it to `queue`
    return details


def failed_queue(client: redis.Redis, *, job_id: str) -> str | None:
    """The queue whose failed registry lists `job_id` (the job's own `origin` may say anything)."""
    return next((name for name in QUEUES if job_id in _registry(client, queue=name)), None)


def render_failed(details: dict[str, Any]) -> str:
    """The text of `failed show ID`: one field a line, then the traceback as text; all escaped."""
    lines = [
        f"job {details['id']} on {details['queue']}: {details['status']} ({details['kind']})",
        f"  function: {details['func']}",
        f"  args: {details['args']!r}  kwargs: {details['kwargs']!r}",
        f"  failed at: {details['failed_at'] or '-'}",
        f"  attempts: {details['attempts']}",
        f"  reason: {details['reason']}",
    ]
    if "origin" in details:
        lines.append(f"  origin: {details['origin']!r} (not {details['queue']}; requeue sets it)")
    traceback = str(details.get("traceback") or "").rstrip()
    if traceback:
        shown = _traceback_tail(traceback)
        cut = len(traceback) - len("\n".join(shown))
        lines.append("  traceback:")
        if cut:
            dropped = len(traceback.splitlines()) - len(shown)
            lines.append(
                f"    [{cut:,} earlier characters ({dropped:,} lines) cut; "
                f"`failed show {details['id']} --json` prints it whole]"
            )
        lines += [f"    {line}" for line in shown]
    return "\n".join(printable(line) for line in lines)


def _traceback_tail(traceback: str) -> list[str]:
    """The last TRACEBACK_MAX_LINES lines, within TRACEBACK_MAX_CHARS: the end says what failed."""
    lines = traceback[-TRACEBACK_MAX_CHARS:].splitlines()
    if len(traceback) > TRACEBACK_MAX_CHARS and len(lines) > 1:
        lines = lines[1:]  # it begins mid-line
    return lines[-TRACEBACK_MAX_LINES:]


def requeue(client: redis.Redis, *, job_id: str) -> tuple[str, str | None]:
    """Put one failed job back at the end of the queue whose failed registry lists it.

    Its failure record is cleared, and its `origin` set to that queue if it said another
    (RQ requeues onto `origin`: a hand-written one would name a queue no worker serves).
    Returns the queue and the `origin` it replaced (None if it was right).

    Raises:
        LookupError: not in any failed registry, or listed there but unreadable.
    """
    name = failed_queue(client, job_id=job_id)
    if name is not None:
        registry = _registry(client, queue=name)
        try:
            job = KryonixJob.fetch(job_id, connection=client)
        except UnreadableJob as exc:
            raise LookupError(
                f"job {job_id!r} is in the {name} failed registry but cannot be requeued: {exc.reason} "
                f"(`failed purge --queue {name}` deletes it with that queue's other failed jobs)"
            ) from None
        except NoSuchJobError:
            raise LookupError(
                f"job {job_id!r} is in the {name} failed registry but its hash is gone"
            ) from None
        former = job.origin if job.origin != name else None
        job.origin = name
        job.meta.pop("failure", None)
        if former is not None:
            client.hset(job.key, "origin", name)
        job.save_meta()  # type: ignore[no-untyped-call]
        try:
            registry.requeue(job)
            return name, former
        except InvalidJobOperation:
            pass  # requeued concurrently by someone else
    raise LookupError(f"job {job_id!r} is not in a failed registry")


def requeue_all(client: redis.Redis, *, queue: str | None = None) -> list[str]:
    done = []
    for name in _queues(queue):
        for raw_id in raw_ids(client.zrange(_registry(client, queue=name).key, 0, -1)):
            job_id = printable(raw_id)
            try:
                requeue(client, job_id=job_id)
                done.append(job_id)
            except LookupError:
                continue
    return done


def purge(client: redis.Redis, *, queue: str | None = None, older_than_s: float | None = None) -> list[str]:
    """Delete failed jobs (all, or those that failed more than `older_than_s` ago)."""
    cutoff = None if older_than_s is None else time.time() - older_than_s
    purged = []
    for name in _queues(queue):
        registry = _registry(client, queue=name)
        for raw_id in raw_ids(client.zrange(registry.key, 0, -1)):
            job_id = printable(raw_id)
            try:
                job = KryonixJob.fetch(job_id, connection=client)
            except NoSuchJobError:  # unreadable ones too: nothing to keep
                client.zrem(registry.key, raw_id)
                continue
            if cutoff is not None and job.ended_at and job.ended_at.timestamp() > cutoff:
                continue
            registry.remove(job, delete_job=True)
            purged.append(job_id)
        if cutoff is None:
            purge_quarantined(client, queue=name)
    return purged
