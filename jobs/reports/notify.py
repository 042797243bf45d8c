"""Tell people a report is ready: a realtime event and the "report ready" email.

The event is a courtesy: it never fails the job. The email is a promise made at
enqueue: if the email queue cannot take it right now the job is retried (the email's
idempotency key makes sure a retried report sends it once).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from jobs.email.validation import Recipient
from jobs.errors import EnqueueUnavailable, JobValidationError, TransientJobError
from jobs.reports.build import ReportFile
from jobs.reports.writers import CONTENT_TYPES

log = logging.getLogger(__name__)

READY_EVENT = "report.ready"
READY_TEMPLATE = "report_ready"
ATTACH_MAX_BYTES = 5 * 1024 * 1024  # the email queue's attachment limit; larger files go as a path


def download_url(report: ReportFile, base_url: str | None) -> str | None:
    """Where the web tier serves the file (`REPORTS_BASE_URL` + file name), or None. Pure."""
    return None if base_url is None else f"{base_url}/{quote(report.path.name)}"


def event_payload(report: ReportFile, base_url: str | None = None) -> dict[str, Any]:
    """What the web tier needs to offer the download; no file content."""
    result = report.as_result()
    payload = {
        k: result[k] for k in ("report_id", "report_type", "format", "rows", "size_bytes", "sha256", "path")
    }
    payload["download_url"] = download_url(report, base_url)
    if report.note is not None:
        payload["note"] = report.note  # an empty report: which filters matched nothing
    return payload


PROGRESS_EVENT = "report.progress"


def publish_progress(requested_by: str | int, report_id: str, percent: float, done: int, total: int) -> None:
    """Publish `report.progress` to the user's channel; best effort, never fails the report.

    `percent` goes out to one decimal, as `report_progress` stores it (11.1, not 11.11111111111111).
    """
    try:
        from cache.realtime.service import RealtimeService

        data = {"report_id": report_id, "percent": round(percent, 1), "rows_done": done, "rows_total": total}
        RealtimeService().publish_user_event(requested_by, PROGRESS_EVENT, data)
    except Exception as exc:
        log.warning(
            "report %s: %s event for user %s not sent: %s", report_id, PROGRESS_EVENT, requested_by, exc
        )


def publish_ready(requested_by: str | int, report: ReportFile, base_url: str | None = None) -> str | None:
    """Publish `report.ready` to the user's channel; the event id, or None when it could not be sent."""
    try:
        from cache.realtime.service import RealtimeService

        payload = event_payload(report, base_url)
        return RealtimeService().publish_user_event(requested_by, READY_EVENT, payload)
    except Exception as exc:  # events are best effort: the report itself is done
        log.warning(
            "report %s: %s event for user %s not sent: %s", report.report_id, READY_EVENT, requested_by, exc
        )
        return None


def email_context(
    report: ReportFile, title: str, name: str | None = None, base_url: str | None = None
) -> dict[str, Any]:
    """The `report_ready` template context for one recipient. Pure.

    `name` is the recipient's display name, when one is known: the greeting uses it, or
    stays neutral ("Hello,") without one; an address's local part is no name. Small
    files are attached (`download_url` None); larger ones are linked under `base_url`
    (`REPORTS_BASE_URL`), or named by their path when there is none.
    """
    attach = report.size_bytes <= ATTACH_MAX_BYTES
    return {
        **report.as_result(),
        "name": name.strip() if name and name.strip() else None,
        "report_name": title,
        "title": title,
        "download_url": None if attach else (download_url(report, base_url) or str(report.path)),
        "filename": report.path.name,
        "attached": attach,
    }


def ready_email_key(report_id: str, to: str) -> str:
    """One email per report and recipient, however often the report job runs. Pure."""
    return f"report-ready:{report_id}:{hashlib.sha256(to.lower().encode()).hexdigest()[:24]}"


def email_ready(
    recipients: Iterable[Recipient], report: ReportFile, title: str, base_url: str | None = None
) -> list[str]:
    """Enqueue one "report ready" email per recipient; returns the email job ids.

    A recipient is an address, or a `(display name, address)` pair whose name greets them.

    Raises:
        TransientJobError: the email queue is unavailable (the report job is retried).
    """
    recipients = list(recipients)
    if not recipients:
        return []
    try:
        from jobs.email import Attachment, enqueue_email
    except ImportError as exc:
        log.error(
            "report %s: 'report ready' email to %s NOT sent: jobs.email.enqueue_email is unavailable (%s)",
            report.report_id,
            recipients,
            exc,
        )
        return []
    attachments = []
    if report.size_bytes <= ATTACH_MAX_BYTES:
        content = report.path.read_bytes()
        attachments.append(Attachment(report.path.name, content, CONTENT_TYPES[report.format]))
    ids = []
    for to in recipients:
        name, address = to if isinstance(to, tuple) else (None, to)
        try:
            ids.append(
                str(
                    enqueue_email(
                        to,
                        READY_TEMPLATE,
                        email_context(report, title, name, base_url),
                        attachments=attachments,
                        idempotency_key=ready_email_key(report.report_id, address),
                    )
                )
            )
        except EnqueueUnavailable as exc:
            raise TransientJobError(f"report ready, but its email could not be queued: {exc}") from exc
        except JobValidationError as exc:  # a bad address must not throw the finished report away
            log.error("report %s: 'report ready' email to %r refused: %s", report.report_id, to, exc)
    return ids
