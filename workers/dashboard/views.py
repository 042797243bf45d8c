"""The rq-dashboard 0.9 functions that read job fields, made safe for hostile job data.

`job_info` (the job page's JSON) is replaced because, under rq 3, it fails with HTTP
500 on any job with dependencies (it calls `.decode()` on the `str` ids rq 3 returns)
and on any meta/result that does not decode. `serialize_job` (every job list) and
`serialize_current_job` (the workers page: the job's call string needs its data) are
replaced so one undecodable field cannot fail a whole page, and the list pages fetch
through `DashboardQueue`, so an entry whose job cannot be read at all (a malformed id,
a garbled hash) is one "undecodable" row instead of a 500 for the whole list. All
return plain data; escaping is the templates' job (`workers.dashboard.templates`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, jsonify
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.queue import Queue

from workers.dashboard.serializer import UNDECODABLE, decoded


def install(app: Flask) -> None:
    """Put our versions of the job views in place on `app` (and rq-dashboard's module)."""
    import rq_dashboard.web as dashboard_web

    app.view_functions["rq_dashboard.job_info"] = job_info
    # rq-dashboard's views look both up in their module at call time.
    dashboard_web.serialize_job = serialize_job
    dashboard_web.serialize_current_job = serialize_current_job
    dashboard_web.Queue = DashboardQueue
    app.register_error_handler(NoSuchJobError, _no_such_job)
    for error in UNREADABLE_ERRORS:
        app.register_error_handler(error, _unreadable_job)


# What reading a garbled job hash or a malformed job id raises inside RQ (its
# `parse_timeout` asserts: a hand-written `timeout` of `1.5` raises AssertionError).
UNREADABLE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    LookupError,
    AssertionError,
    ArithmeticError,
    DeserializationError,
)


@dataclass(frozen=True)
class UnreadableJob:
    """A queue or registry entry whose job RQ cannot read; shown as a row saying so."""

    id: str
    reason: str


class DashboardQueue(Queue):
    """rq-dashboard's Queue, whose `fetch_job` turns an unreadable job into an UnreadableJob."""

    def fetch_job(self, job_id: str) -> Job | None:
        try:
            return super().fetch_job(job_id)
        except UNREADABLE_ERRORS as exc:
            return UnreadableJob(job_id, type(exc).__name__)  # type: ignore[return-value]


def serialize_job(job: Job | UnreadableJob, latest: Any = None) -> dict[str, Any]:
    """One row of a job list, as rq-dashboard's own, with unreadable fields marked.

    Args:
        job: the job of the row.
        latest: its latest result (or UNDECODABLE) when the caller read it already.
    """
    import rq_dashboard.web as dashboard_web

    if isinstance(job, UnreadableJob):
        empty = dict.fromkeys(("created_at", "started_at", "ended_at", "exc_info"))
        return {"id": job.id, **empty, "description": f"{UNDECODABLE} ({job.reason})"}
    latest = latest if latest is not None else decoded(job.latest_result)
    return {
        "id": job.id,
        "created_at": dashboard_web.serialize_date(job.created_at),
        "started_at": dashboard_web.serialize_date(job.started_at),
        "ended_at": dashboard_web.serialize_date(job.ended_at),
        "exc_info": _exc_string(latest),
        "description": decoded(lambda: dashboard_web.format_job_description(job)),
    }


def serialize_current_job(job: Job | None) -> dict[str, Any] | str:
    """A worker's current job, as rq-dashboard's own, with an unreadable call string marked."""
    import rq_dashboard.web as dashboard_web

    if job is None:
        return "idle"
    return {
        "job_id": job.id,
        "description": decoded(lambda: dashboard_web.format_job_description(job)),
        "created_at": dashboard_web.serialize_date(job.created_at),
        "call_string": decoded(job.get_call_string),
    }


def job_info(instance_number: int, job_id: str) -> tuple[Response, dict[str, str]]:
    """The job page's data: rq-dashboard's fields, dependencies read as rq 3 stores them."""
    import rq_dashboard.web as dashboard_web

    del instance_number  # the connection was chosen by rq-dashboard's before_request
    connection = current_app.redis_conn  # type: ignore[attr-defined]
    job = Job.fetch(job_id, connection=connection)
    latest = decoded(job.latest_result)
    row = serialize_job(job, latest)
    row.update(
        enqueued_at=dashboard_web.serialize_date(job.enqueued_at),
        origin=job.origin,
        status=decoded(job.get_status),
        result=_result(latest),
        metadata=_metadata(job),
    )
    dependency_ids = sorted(job.dependency_ids)  # rq 3: already `str`, not bytes
    if dependency_ids:
        row["depends_on"] = dependency_ids
        row["depends_on_status"] = [
            "active" if connection.exists(Job.key_for(dep)) else "expired" for dep in dependency_ids
        ]
    return jsonify(row), {"Cache-Control": "no-store"}


def _exc_string(latest: Any) -> str | None:
    if latest is None or latest is UNDECODABLE:
        return latest
    return str(latest.exc_string) if latest.exc_string else None


def _result(latest: Any) -> Any:
    if latest is None or latest is UNDECODABLE:
        return latest
    return decoded(lambda: _jsonable(latest.return_value))


def _metadata(job: Job) -> str:
    """The meta shown as JSON text; a meta RQ could not decode holds only the raw bytes."""
    if getattr(job, "_unreadable_meta", None) is not None:  # RQ 3 keeps the raw bytes here
        return json.dumps(UNDECODABLE)
    return json.dumps(job.meta, default=str)


def _jsonable(value: Any) -> Any:
    """`value` if `jsonify` can send it, else its `str` (datetimes, Decimals from our tags)."""
    return json.loads(json.dumps(value, default=str))


def _no_such_job(error: NoSuchJobError) -> tuple[Response, int]:
    return jsonify(status="ERROR", error=f"no such job: {error}"), 404


def _unreadable_job(error: Exception) -> tuple[Response, int]:
    reason = f"job data is {UNDECODABLE} ({type(error).__name__})"
    return jsonify(status="ERROR", error=reason), 422
