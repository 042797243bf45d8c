"""`enqueue_report`: the web tier's one call. Everything is checked before Redis sees it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from cache.realtime.envelope import validate_user_id
from cache.settings import get_settings
from jobs.email.validation import Mailbox, Recipient, parse_mailbox
from jobs.enqueue import enqueue
from jobs.errors import JobValidationError
from jobs.queues import REPORT
from jobs.reports.registry import (
    ReportDefinitionError,
    ReportType,
    check_format,
    get_report_type,
    validate_filters,
)
from jobs.retry import RetryPolicy

JOB_FUNCTION = "jobs.reports.jobs.generate_report"
MAX_RECIPIENTS = 50  # a report mail is for a team, not a mailing list
MAX_ROWS_PER_S = 10_000_000


@dataclass(frozen=True, kw_only=True)
class ReportRequest:
    """A fully validated report request."""

    report: ReportType
    filters: dict[str, Any]
    format: str
    requested_by: str | None
    recipients: tuple[Mailbox, ...]
    rows_per_s: int | None

    def job_kwargs(self) -> dict[str, Any]:
        return {
            "filters": self.filters,
            "format": self.format,
            "requested_by": self.requested_by,
            "notify_email": recipients_as_json(self.recipients) or None,
            "throttle_rows_per_s": self.rows_per_s,
        }


def recipients_as_json(recipients: Sequence[Mailbox]) -> list[str | list[str]]:
    """The job's JSON form: a bare address, or `[display name, address]`. Pure."""
    return [[mailbox.name, mailbox.address] if mailbox.name else mailbox.address for mailbox in recipients]


def _recipients(notify_email: object, allowed_domains: Sequence[str]) -> tuple[Mailbox, ...]:
    """The recipients as the email queue will check them, within `allowed_domains` when set.

    As `enqueue_email`'s `to`: a tuple is one `(name, address)` recipient, several come as
    a list; inside a list, a two-item list is a pair too (the job's JSON form).
    """
    if notify_email is None:
        return ()
    items = [notify_email] if isinstance(notify_email, str | tuple) else notify_email
    if not isinstance(items, list) or len(items) > MAX_RECIPIENTS:
        raise ReportDefinitionError(f"notify_email must be an address or a list of at most {MAX_RECIPIENTS}")
    clean: dict[str, Mailbox] = {}
    for item in items:
        try:
            mailbox = parse_mailbox(item, "notify_email")
        except JobValidationError as exc:
            raise ReportDefinitionError(str(exc)) from None
        if allowed_domains and not in_domains(mailbox.address, allowed_domains):
            allowed = ", ".join(allowed_domains)
            raise ReportDefinitionError(
                f"notify_email {mailbox.address!r} is outside REPORTS_NOTIFY_DOMAINS ({allowed})"
            )
        clean.setdefault(mailbox.address.lower(), mailbox)
    return tuple(clean.values())


def in_domains(address: str, domains: Sequence[str]) -> bool:
    """Whether the address's domain is one of `domains` or a subdomain of one. Pure."""
    domain = address.rpartition("@")[2].lower()
    return any(domain == allowed or domain.endswith(f".{allowed}") for allowed in domains)


def _rows_per_s(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS_PER_S:
        raise ReportDefinitionError(
            f"throttle_rows_per_s must be an integer 1..{MAX_ROWS_PER_S}, got {value!r}"
        )
    return value


def validate_request(
    report_type: object,
    filters: Mapping[str, Any] | None,
    *,
    format: object = "csv",
    requested_by: str | int | None = None,
    notify_email: object = None,
    throttle_rows_per_s: object = None,
) -> ReportRequest:
    """Check a report request completely; the job runs this same check again in the worker.

    `notify_email` recipients are checked as the email queue checks them and, when
    `REPORTS_NOTIFY_DOMAINS` is set, must be in one of those domains.

    Raises:
        ReportDefinitionError: with a message naming what is wrong and what is expected.
    """
    report = get_report_type(report_type)
    clean = validate_filters(report, filters)
    fmt = check_format(format)
    user = None
    if requested_by is not None:
        try:
            user = validate_user_id(requested_by)
        except ValueError as exc:
            raise ReportDefinitionError(f"requested_by: {exc}") from None
    return ReportRequest(
        report=report,
        filters=clean,
        format=fmt,
        requested_by=user,
        recipients=_recipients(notify_email, get_settings().reports_notify_domains),
        rows_per_s=_rows_per_s(throttle_rows_per_s),
    )


def enqueue_report(
    report_type: str,
    filters: Mapping[str, Any] | None = None,
    *,
    format: str = "csv",
    requested_by: str | int | None = None,
    notify_email: Recipient | Sequence[Recipient] | None = None,
    idempotency_key: str | None = None,
    throttle_rows_per_s: int | None = None,
    retry: RetryPolicy | None = None,
    client: redis.Redis | None = None,
) -> str:
    """Validate a report request and enqueue it on the `report` queue; returns the job id.

    The job id is also the report id: the file is `REPORTS_DIR/<id>.<csv|jsonl|html>`.

    Args:
        report_type: `users`, `company_projects`, `activity` or `activity_detail`.
        filters: the type's filters (see `jobs.reports.registry.REPORT_TYPES`); dates as
            `datetime.date` or `YYYY-MM-DD`.
        format: `csv`, `jsonl` or `html`.
        requested_by: user id that receives the `report.ready` event.
        notify_email: who gets the "report ready" email, as `enqueue_email`'s `to`: an
            address, `Name <address>` or a `(name, address)` tuple, or a list of them; a
            name greets the recipient ("Hello José,").
        idempotency_key: the same key gives the same report job, once.
        throttle_rows_per_s: pace the read to spare a busy database.
        retry: override the queue's retry policy.

    Raises:
        ReportDefinitionError (a JobValidationError): bad request; nothing was enqueued.
        EnqueueUnavailable: the PRIMARY Redis cannot take the job.
    """
    request = validate_request(
        report_type,
        filters,
        format=format,
        requested_by=requested_by,
        notify_email=notify_email,
        throttle_rows_per_s=throttle_rows_per_s,
    )
    return enqueue(
        REPORT.name,
        JOB_FUNCTION,
        request.report.name,
        kwargs=request.job_kwargs(),
        idempotency_key=idempotency_key,
        meta={"report": {"type": request.report.name, "format": request.format}},
        retry=retry,
        client=client,
    )
