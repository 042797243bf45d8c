"""Report types and request validation: every bad input refused with a clear message (marker `reports`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from jobs.email.validation import Mailbox
from jobs.periodic import Periodic
from jobs.reports import REPORT_TYPES, ReportDefinitionError, scheduled_report, validate_request
from jobs.reports.queries import BUILDERS
from jobs.reports.registry import MAX_ACTIVITY_DAYS, filters_as_json, get_report_type, validate_filters
from jobs.reports.scheduled import window_filters

pytestmark = pytest.mark.reports

YEAR = {"date_from": "2025-01-01", "date_to": "2025-12-31"}


def test_every_report_type_has_a_query_and_consistent_declarations() -> None:
    assert set(REPORT_TYPES) == set(BUILDERS) == {"users", "company_projects", "activity", "activity_detail"}
    for report in REPORT_TYPES.values():
        names = report.column_names
        assert len(set(names)) == len(names)
        filter_names = {f.name for f in report.filters}
        for date_range in report.ranges:
            assert {date_range.start, date_range.end} <= filter_names
        if report.series:
            assert set(report.series) <= set(names)
        for declared in report.filters:
            assert declared.describe().startswith(declared.name)


@pytest.mark.parametrize(
    ("report_type", "filters", "expected"),
    [
        ("nope", {}, "unknown report type 'nope'; known: activity, activity_detail, company_projects, users"),
        (None, {}, "unknown report type None"),
        ("users", {"colour": "red"}, "unknown filter 'colour' for report 'users'; known: company_id, status"),
        ("users", {1: "x"}, "unknown filter 1 for report 'users'"),
        ("users", ["company_id"], "must be a mapping of name to value, got list"),
        (
            "users",
            {"company_id": "42"},
            "filter 'company_id' of report 'users' must be an integer, got str '42'",
        ),
        ("users", {"company_id": True}, "must be an integer, got bool True"),
        ("users", {"company_id": 4.0}, "must be an integer, got float 4.0"),
        ("users", {"company_id": 0}, "must be between 1 and 2147483647, got 0"),
        ("users", {"company_id": 2**31}, "must be between 1 and 2147483647"),
        ("users", {"status": "gone"}, "must be one of active, invited, suspended, deleted; got str 'gone'"),
        (
            "users",
            {"created_from": "yesterday"},
            "'created_from' of report 'users' must be a date YYYY-MM-DD",
        ),
        ("users", {"created_from": 20250101}, "must be a date YYYY-MM-DD (not a datetime), got int"),
        ("users", {"created_from": dt.datetime(2025, 1, 1, 12)}, "(not a datetime)"),
        ("users", {"created_from": "1999-12-31"}, "must be between 2000-01-01 and 2100-12-31"),
        (
            "users",
            {"created_from": "2025-02-01", "created_to": "2025-01-01"},
            "report 'users': created_from (2025-02-01) is after created_to (2025-01-01)",
        ),
        ("activity", {"date_from": "2025-01-01"}, "filter 'date_to' is required for report 'activity'"),
        ("activity", {}, "filter 'date_from' is required for report 'activity'"),
        (
            "activity",
            {"date_from": "2025-03-02", "date_to": "2025-03-01"},
            "date_from (2025-03-02) is after date_to (2025-03-01)",
        ),
        (
            "activity",
            {"date_from": "2024-01-01", "date_to": "2025-01-31"},
            f"report 'activity': date_from..date_to covers 397 days; at most {MAX_ACTIVITY_DAYS} allowed",
        ),
        ("activity", {**YEAR, "action": "DROP TABLE"}, "must be an action name"),
        ("activity", {**YEAR, "action": "x" * 41}, "must be an action name"),
        ("activity_detail", {**YEAR, "user_id": -1}, "filter 'user_id' of report 'activity_detail'"),
        ("company_projects", {"min_projects": -1}, "must be between 0 and 1000000, got -1"),
        ("company_projects", {"plan": "gold"}, "must be one of free, pro, enterprise"),
    ],
)
def test_bad_filters_are_refused_with_a_clear_message(report_type: Any, filters: Any, expected: str) -> None:
    with pytest.raises(ReportDefinitionError) as info:
        validate_request(report_type, filters)
    assert expected in str(info.value)


def test_range_of_exactly_the_limit_is_accepted() -> None:
    start = dt.date(2024, 1, 1)
    end = start + dt.timedelta(days=MAX_ACTIVITY_DAYS - 1)
    request = validate_request("activity", {"date_from": start, "date_to": end})
    assert request.filters == {"date_from": start, "date_to": end}
    with pytest.raises(ReportDefinitionError, match="covers 367 days"):
        validate_request("activity", {"date_from": start, "date_to": end + dt.timedelta(days=1)})


def test_filters_are_normalized() -> None:
    report = get_report_type("users")
    clean = validate_filters(report, {"created_from": "2025-01-02", "status": "active", "company_id": None})
    assert clean == {"created_from": dt.date(2025, 1, 2), "status": "active"}
    assert filters_as_json(clean) == {"created_from": "2025-01-02", "status": "active"}
    assert validate_filters(report, None) == {}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"format": "xlsx"}, "unknown report format 'xlsx'; known: csv, jsonl, html"),
        ({"format": None}, "unknown report format None"),
        ({"requested_by": "a:b"}, "requested_by: user_id must be 1-128 characters"),
        ({"requested_by": ""}, "requested_by"),
        ({"notify_email": "not-an-address"}, "notify_email 'not-an-address' is not a valid email address"),
        (
            {"notify_email": ["ok@example.com", 7]},
            "notify_email must be a string address or a (name, address) pair, got int",
        ),
        (
            {"notify_email": ("a@example.com", "b@example.com", "c@example.com")},
            "must be a (display name, address) pair",
        ),
        ({"notify_email": [["Ana", "ana@example.com", "x"]]}, "must be a (display name, address) pair"),
        ({"notify_email": ("Ana\r\nBcc: x@example.com", "ana@example.com")}, "header injection refused"),
        ({"notify_email": ["a@example.com"] * 51}, "at most 50"),
        ({"notify_email": "a@example.com\r\nBcc: x@example.com"}, "header injection refused"),
        ({"throttle_rows_per_s": 0}, "throttle_rows_per_s must be an integer 1..10000000, got 0"),
        ({"throttle_rows_per_s": 1.5}, "throttle_rows_per_s must be an integer"),
    ],
)
def test_bad_request_options_are_refused(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ReportDefinitionError) as info:
        validate_request("users", {}, **kwargs)
    assert expected in str(info.value)


def test_request_options_are_normalized() -> None:
    request = validate_request(
        "users", {}, format="html", requested_by=42, notify_email=["Ops@Example.com", "Ops@Example.com"]
    )
    assert request.requested_by == "42"
    assert request.recipients == (Mailbox("", "Ops@example.com"),)
    assert request.job_kwargs()["notify_email"] == ["Ops@example.com"]
    assert validate_request("users", {}).job_kwargs()["notify_email"] is None


def test_notify_email_takes_names_as_enqueue_email_does_and_keeps_them_through_the_job() -> None:
    named = [("José Silva", "jose@example.com"), "Smith, John <john@example.com>", "ops@example.com"]
    request = validate_request("users", {}, notify_email=named)
    expected = (
        Mailbox("José Silva", "jose@example.com"),
        Mailbox("Smith, John", "john@example.com"),
        Mailbox("", "ops@example.com"),
    )
    assert request.recipients == expected
    as_json = request.job_kwargs()["notify_email"]
    assert as_json == [
        ["José Silva", "jose@example.com"],
        ["Smith, John", "john@example.com"],
        "ops@example.com",
    ]
    assert validate_request("users", {}, notify_email=as_json).recipients == expected, "the worker's check"
    one_pair = validate_request("users", {}, notify_email=("Ana", "ana@example.com"))
    assert one_pair.recipients == (Mailbox("Ana", "ana@example.com"),)


# --- scheduled reports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window_days", "today", "expected"),
    [
        (None, dt.date(2026, 3, 1), {"company_id": 7}),
        (
            1,
            dt.date(2026, 3, 1),
            {"company_id": 7, "date_from": dt.date(2026, 2, 28), "date_to": dt.date(2026, 2, 28)},
        ),
        (
            7,
            dt.date(2026, 1, 3),
            {"company_id": 7, "date_from": dt.date(2025, 12, 27), "date_to": dt.date(2026, 1, 2)},
        ),
    ],
)
def test_window_covers_the_whole_days_before_the_slot(
    window_days: int | None, today: dt.date, expected: dict[str, Any]
) -> None:
    assert window_filters("activity", {"company_id": 7}, window_days, today) == expected


@pytest.mark.parametrize(
    ("report_type", "filters", "window_days", "expected"),
    [
        (
            "company_projects",
            {},
            1,
            "report 'company_projects' has no date range: window_days does not apply",
        ),
        ("activity", {}, 0, "window_days must be a positive integer, got 0"),
        ("activity", {}, True, "window_days must be a positive integer"),
        (
            "activity",
            {"date_from": "2025-01-01"},
            1,
            "give either window_days or date_from/date_to, not both",
        ),
    ],
)
def test_bad_windows_are_refused(
    report_type: str, filters: dict[str, Any], window_days: Any, expected: str
) -> None:
    with pytest.raises(ReportDefinitionError) as info:
        window_filters(report_type, filters, window_days, dt.date(2026, 1, 1))
    assert expected in str(info.value)


def test_scheduled_report_is_a_periodic_entry_on_the_report_queue() -> None:
    entry = scheduled_report(
        "daily-activity", "0 6 * * *", "activity", {"company_id": 3}, ["ops@example.com"], window_days=1
    )
    assert isinstance(entry, Periodic)
    assert (entry.name, entry.queue, entry.cron) == ("report-daily-activity", "report", "0 6 * * *")
    assert entry.func == "jobs.reports.jobs.generate_scheduled_report"
    assert entry.kwargs == {
        "name": "daily-activity",
        "report_type": "activity",
        "filters": {"company_id": 3},
        "format": "csv",
        "recipients": ["ops@example.com"],
        "window_days": 1,
    }
    fixed = scheduled_report("users-weekly", "0 7 * * 1", "users", {"created_from": dt.date(2025, 1, 1)}, [])
    assert fixed.kwargs["filters"] == {"created_from": "2025-01-01"}
    named = scheduled_report("users-daily", "0 7 * * *", "users", {}, [("Ops Team", "ops@example.com")])
    assert named.kwargs["recipients"] == [["Ops Team", "ops@example.com"]], "JSON-safe, the name kept"


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("x", "0 6 * * *", "nope"), {}, "unknown report type 'nope'"),
        (("x", "0 6 * * *", "activity"), {}, "filter 'date_from' is required"),
        (("x", "not cron", "activity"), {"window_days": 1}, "invalid cron expression 'not cron'"),
        (("bad name!", "0 6 * * *", "users"), {}, "name must be letters, digits"),
        (("x", "0 6 * * *", "users", {}, ["nobody"]), {}, "'nobody' is not a valid email address"),
        (("x", "0 6 * * *", "users"), {"format": "pdf"}, "unknown report format 'pdf'"),
    ],
)
def test_bad_scheduled_reports_fail_at_definition(
    args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ReportDefinitionError) as info:
        scheduled_report(*args, **kwargs)
    assert expected in str(info.value)
