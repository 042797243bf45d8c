"""Scheduled reports as entries of the job core's periodic mechanism.

`jobs.periodic.PERIODIC` stays the one place that declares what runs when; a
scheduled report is one entry built here, e.g.::

    PERIODIC = (
        scheduled_report(
            "daily-activity", "0 6 * * *", "activity", {"company_id": 42},
            ["ops@example.com"], window_days=1,
        ),
    )

Everything is validated when the definition is built (at import of `jobs.periodic`),
so a bad definition stops the scheduler at start-up, not at 06:00.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.email.validation import Recipient
from jobs.periodic import Periodic
from jobs.reports.registry import ReportDefinitionError, filters_as_json, get_report_type

SCHEDULED_FUNCTION = "jobs.reports.jobs.generate_scheduled_report"


def window_filters(
    report_type: str, filters: Mapping[str, Any] | None, window_days: int | None, today: dt.date
) -> dict[str, Any]:
    """`filters` plus the report's date range set to the `window_days` whole days before `today`. Pure.

    Raises:
        ReportDefinitionError: the type has no date range, the window is not a positive
            integer, or the filters already fix the range.
    """
    clean = dict(filters or {})
    if window_days is None:
        return clean
    report = get_report_type(report_type)
    if not report.ranges:
        raise ReportDefinitionError(f"report {report.name!r} has no date range: window_days does not apply")
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
        raise ReportDefinitionError(f"window_days must be a positive integer, got {window_days!r}")
    date_range = report.ranges[0]
    if date_range.start in clean or date_range.end in clean:
        raise ReportDefinitionError(
            f"give either window_days or {date_range.start}/{date_range.end}, not both"
        )
    end = today - dt.timedelta(days=1)
    clean[date_range.start] = end - dt.timedelta(days=window_days - 1)
    clean[date_range.end] = end
    return clean


def scheduled_report(
    name: str,
    cron: str,
    report_type: str,
    filters: Mapping[str, Any] | None = None,
    recipients: Sequence[Recipient] = (),
    *,
    format: str = "csv",
    window_days: int | None = None,
) -> Periodic:
    """A periodic definition that writes `report_type` every `cron` (UTC) and mails `recipients`.

    Raises:
        ReportDefinitionError: anything invalid, with the same messages as `enqueue_report`.
    """
    from jobs.reports.api import recipients_as_json, validate_request

    filled = window_filters(report_type, filters, window_days, dt.datetime.now(dt.UTC).date())
    request = validate_request(report_type, filled, format=format, notify_email=list(recipients) or None)
    windowed = {r.start for r in request.report.ranges[:1]} | {r.end for r in request.report.ranges[:1]}
    stored = {k: v for k, v in request.filters.items() if window_days is None or k not in windowed}
    try:
        return Periodic(
            name=f"report-{name}",
            func=SCHEDULED_FUNCTION,
            queue="report",
            cron=cron,
            kwargs={
                "name": name,
                "report_type": request.report.name,
                "filters": filters_as_json(stored),
                "format": request.format,
                "recipients": recipients_as_json(request.recipients),
                "window_days": window_days,
            },
        )
    except ValueError as exc:
        raise ReportDefinitionError(f"scheduled report {name!r}: {exc}") from None
