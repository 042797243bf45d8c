"""The RQ job functions of the `report` queue: thin, they connect validate, build and notify.

Failure classes: an invalid definition is permanent (no retry can fix it); a database
that is unreachable, restarting, deadlocked or busy, and a file that cannot be written,
are transient (retried with the queue's backoff). Whatever happens, no partial file
is left: see `jobs.reports.output`.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rq import get_current_job
from sqlalchemy.exc import SQLAlchemyError

from cache.appcache.platform import make_engine
from cache.errors import ConfigError
from cache.settings import get_settings
from jobs.errors import JobValidationError, PermanentJobError, TransientJobError, refuse_extra_arguments
from jobs.progress import report_progress
from jobs.reports.api import ReportRequest, validate_request
from jobs.reports.build import build_report, progress_percent
from jobs.reports.notify import email_ready, publish_progress, publish_ready
from jobs.reports.output import InvalidReportId, check_report_id, remove_stale_temp_files
from jobs.reports.queries import is_transient_db_error
from jobs.reports.scheduled import window_filters

log = logging.getLogger(__name__)


def generate_report(
    report_type: str,
    filters: Mapping[str, Any] | None = None,
    *,
    format: str = "csv",
    requested_by: str | int | None = None,
    notify_email: str | Sequence[str | Sequence[str]] | None = None,
    throttle_rows_per_s: int | None = None,
    report_id: str | None = None,
    **unknown: Any,
) -> dict[str, Any]:
    """Write one report file; returns path, format, rows, size_bytes, sha256 (and more).

    Enqueue it with `jobs.reports.enqueue_report`, which validates first.

    Raises:
        PermanentJobError: invalid report definition (e.g. a job written into Redis by hand:
            `enqueue_report`'s own check runs again here), or a configuration error.
        TransientJobError: database or disk trouble; the queue retries.
    """
    refuse_extra_arguments("generate_report", (), unknown)
    request = _validated(report_type, filters, format, requested_by, notify_email, throttle_rows_per_s)
    return _run(request, _report_id(report_id))


def generate_scheduled_report(
    name: str,
    report_type: str,
    filters: Mapping[str, Any] | None = None,
    *,
    format: str = "csv",
    recipients: Sequence[str | Sequence[str]] = (),
    window_days: int | None = None,
    **unknown: Any,
) -> dict[str, Any]:
    """One run of a scheduled report (see `jobs.reports.scheduled.scheduled_report`).

    With `window_days`, the report covers the `window_days` whole UTC days before the
    slot that fired it (a daily 06:00 run with window_days=1 reports yesterday).
    """
    refuse_extra_arguments("generate_scheduled_report", (), unknown)
    if not isinstance(recipients, list | tuple):
        raise PermanentJobError(f"scheduled report {name!r}: recipients must be a list")
    job = get_current_job()
    slot = job.meta.get("slot") if job is not None else None
    fired = dt.datetime.fromtimestamp(slot, dt.UTC) if isinstance(slot, int) else dt.datetime.now(dt.UTC)
    try:
        filled = window_filters(report_type, filters, window_days, fired.date())
    except JobValidationError as exc:
        raise PermanentJobError(f"scheduled report {name!r}: {exc}") from None
    request = _validated(report_type, filled, format, None, list(recipients) or None, None)
    return _run(request, _report_id(None))


def _validated(
    report_type: str,
    filters: Mapping[str, Any] | None,
    fmt: str,
    requested_by: str | int | None,
    notify_email: object,
    throttle_rows_per_s: int | None,
) -> ReportRequest:
    try:
        return validate_request(
            report_type,
            filters,
            format=fmt,
            requested_by=requested_by,
            notify_email=notify_email,
            throttle_rows_per_s=throttle_rows_per_s,
        )
    except JobValidationError as exc:
        raise PermanentJobError(f"invalid report definition: {exc}") from None


def _run(request: ReportRequest, report_id: str) -> dict[str, Any]:
    try:
        return _build_and_notify(request, report_id)
    except ConfigError as exc:  # e.g. a templates directory is missing: no retry can fix it
        raise PermanentJobError(f"configuration error: {exc}") from None


def _report_id(given: str | None) -> str:
    """The report id names the file: the job id inside a job, a fresh uuid outside one."""
    job = get_current_job()
    report_id = given or (job.id if job is not None else uuid.uuid4().hex)
    try:
        return check_report_id(report_id)
    except InvalidReportId as exc:
        raise PermanentJobError(str(exc)) from None


PROGRESS_EVENT_INTERVAL_S = 1.0  # at most one `report.progress` event a second per report


def _progress_reporter(request: ReportRequest, report_id: str) -> Callable[[int, int], None]:
    """Progress into job meta every batch; to the requesting user at most once a second."""
    last_event = 0.0

    def on_progress(done: int, total: int) -> None:
        nonlocal last_event
        percent = progress_percent(done, total)
        report_progress(percent, f"{done:,} / {total:,} rows", rows_done=done, rows_total=total)
        now = time.monotonic()
        if request.requested_by is not None and now - last_event >= PROGRESS_EVENT_INTERVAL_S:
            last_event = now
            publish_progress(request.requested_by, report_id, percent, done, total)

    return on_progress


def _build_and_notify(request: ReportRequest, report_id: str) -> dict[str, Any]:
    settings = get_settings()
    directory = Path(settings.reports_dir)
    remove_stale_temp_files(directory, report_id)  # a SIGKILLed earlier attempt cannot clean up itself
    report_progress(0, "querying", rows_done=0)
    try:
        engine = make_engine(settings.database_url)
    except (SQLAlchemyError, OSError) as exc:  # e.g. the SQLite file's directory cannot be created
        raise TransientJobError(f"database unavailable: {type(exc).__name__}: {exc}") from exc
    try:
        with _sigterm_raises():
            built = build_report(
                engine,
                request.report,
                request.filters,
                request.format,
                directory,
                report_id,
                on_progress=_progress_reporter(request, report_id),
                rows_per_s=request.rows_per_s,
            )
    except SQLAlchemyError as exc:
        if is_transient_db_error(exc):
            raise TransientJobError(f"database unavailable: {_first_line(exc)}") from exc
        raise
    except OSError as exc:
        raise TransientJobError(f"report file could not be written in {directory}: {exc}") from exc
    finally:
        engine.dispose()
    report_progress(100, f"{built.rows:,} rows written", rows_done=built.rows, rows_total=built.rows)
    log.info(
        "report %s (%s, %s): %d rows, %d bytes -> %s%s",
        report_id,
        request.report.name,
        request.format,
        built.rows,
        built.size_bytes,
        built.path,
        "" if built.note is None else f" ({built.note})",
    )
    if request.requested_by is not None:
        publish_ready(request.requested_by, built, settings.reports_base_url)
    email_ready(request.recipients, built, request.report.title, settings.reports_base_url)
    return built.as_result()


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's own message; SQLAlchemy appends the SQL and a docs link, noise in a failure reason."""
    origin = getattr(exc, "orig", None) or exc
    text = str(origin).strip().splitlines()
    return f"{type(origin).__name__}: {text[0] if text else ''}"


class ReportInterrupted(TransientJobError):
    """SIGTERM reached the work horse: clean up (no partial file) and let the queue retry."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception while the report is written, so `finally` blocks run.

    RQ's stop command SIGKILLs instead; then the anonymous file dies with the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise ReportInterrupted(f"report interrupted by signal {signum}; it will be retried")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
