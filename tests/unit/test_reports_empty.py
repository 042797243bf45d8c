"""An empty report says which filters matched nothing; the demo data's span (marker `reports`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from jobs.email.templates import default_library
from jobs.reports.api import validate_request
from jobs.reports.build import ReportFile, empty_report_note
from jobs.reports.notify import email_context, event_payload
from jobs.reports.seed import DEMO_FIRST_DAY, demo_days, demo_plan

pytestmark = pytest.mark.reports


@pytest.mark.parametrize(
    ("report_type", "filters", "expected"),
    [
        (
            "activity",
            {"date_from": "2026-01-01", "date_to": "2026-01-31", "company_id": 42},
            "0 rows: no activity rows for company_id=42 between 2026-01-01 and 2026-01-31",
        ),
        (
            "activity_detail",
            {"date_from": "2026-01-01", "date_to": "2026-01-02", "user_id": 7, "action": "login"},
            "0 rows: no activity_detail rows for action=login, user_id=7 between 2026-01-01 and 2026-01-02",
        ),
        (
            "users",
            {"status": "suspended", "created_from": "2026-03-01"},
            "0 rows: no users rows for status=suspended created from 2026-03-01",
        ),
        ("users", {"created_to": "2020-01-01"}, "0 rows: no users rows created until 2020-01-01"),
        (
            "company_projects",
            {"plan": "pro", "min_projects": 9},
            "0 rows: no company_projects rows for min_projects=9, plan=pro",
        ),
        ("users", None, "0 rows: no users rows at all"),
    ],
)
def test_the_note_names_every_filter_that_matched_nothing(
    report_type: str, filters: dict[str, Any] | None, expected: str
) -> None:
    request = validate_request(report_type, filters)
    assert empty_report_note(request.report, request.filters) == expected


def _empty(note: str | None) -> ReportFile:
    return ReportFile(
        report_id="r-1", report_type="activity", format="csv", path=Path("/srv/reports/r-1.csv"),
        rows=0 if note else 3, size_bytes=40, sha256="ab" * 32, filters={},
        generated_at=dt.datetime.now(dt.UTC), note=note,
    )  # fmt: skip


def test_the_result_the_event_and_the_email_carry_the_note_of_an_empty_report() -> None:
    note = "0 rows: no activity rows for company_id=42 between 2026-01-01 and 2026-01-31"
    report = _empty(note)
    assert report.as_result()["note"] == note
    assert event_payload(report)["note"] == note
    context = email_context(report, "Activity", "ana@example.com")
    for locale in ("en", "pt_BR"):
        parts = default_library().render("report_ready", locale, context, now=dt.datetime.now(dt.UTC))
        assert note in parts.text and note in parts.html, locale


def test_a_report_with_rows_has_no_note_anywhere() -> None:
    report = _empty(None)
    assert "note" not in report.as_result() and "note" not in event_payload(report)
    context = email_context(report, "Activity", "ana@example.com")
    parts = default_library().render("report_ready", "en", context, now=dt.datetime.now(dt.UTC))
    assert "0 rows" not in parts.text


@pytest.mark.parametrize(
    ("until", "days"),
    [
        (dt.date(2026, 2, 1), 90),  # the last 90 days reach back before 2026-01-01
        (dt.date(2026, 12, 1), 335),  # 2026-01-01 .. 2026-12-01
        (dt.date(2027, 6, 30), 546),
    ],
)
def test_demo_data_covers_january_2026_and_the_last_90_days(until: dt.date, days: int) -> None:
    assert demo_days(until) == days
    plan = demo_plan(until)
    first = plan.until - dt.timedelta(days=plan.days - 1)
    assert first <= DEMO_FIRST_DAY and first <= until - dt.timedelta(days=89)
    assert plan.activity_rows == 500 * plan.days, "500 activity rows a day: 90 days are 45,000 rows"
