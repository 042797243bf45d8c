"""Report content against a real database, SQLite and PostgreSQL (marker `reports`).

These run the job function in-process; tests/integration/test_reports_worker.py runs
it in real `rq worker` processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from cache.appcache.platform import activity, companies, users
from cache.realtime.service import RealtimeService
from cache.settings import reset_settings
from jobs.errors import PermanentJobError, TransientJobError
from jobs.queues import KryonixQueue
from jobs.reports import enqueue_report
from jobs.reports.jobs import generate_report
from jobs.reports.registry import ReportDefinitionError
from jobs.reports.seed import SeedPlan, demo_plan
from jobs.reports.seed import seed_demo as seed_demo_data
from tests.integration.reports_fixtures import (
    KNOWN_ACTIVITY,
    KNOWN_USERS,
    UNTIL,
    all_files,
    db_url,
    detail_rows_in_db,
    full_range,
    insert_known,
    read_csv,
    read_jsonl,
    seed_bulk,
)
from workers.cli.seed import seed_demo

pytestmark = pytest.mark.reports

JUNE = {"date_from": "2025-06-01", "date_to": "2025-06-30"}


def _run(
    report_type: str, filters: dict[str, Any] | None = None, fmt: str = "csv", **kw: Any
) -> dict[str, Any]:
    return generate_report(report_type, filters, format=fmt, report_id=f"{report_type}-{fmt}", **kw)


# --- content of each format on a known dataset ------------------------------------------------


def test_users_csv_escapes_and_guards_formulas(db_engine: Engine, report_settings: Path) -> None:
    insert_known(db_engine)
    result = _run("users")
    path = Path(result["path"])
    assert path == (report_settings / "users-csv.csv").resolve()
    rows = read_csv(path)
    assert rows[0] == [
        "id",
        "email",
        "name",
        "company_id",
        "company_name",
        "status",
        "created_at",
        "last_login_at",
    ]
    assert result["rows"] == len(rows) - 1 == 5
    by_id = {row[0]: row for row in rows[1:]}
    assert by_id["1"][1:3] == ["ann@acme.test", 'Ann, the "Admin"']
    assert by_id["1"][4] == "Acme, Inc."
    assert by_id["2"][2] == "Bob\r\nNewline", "newlines inside a field survive"
    assert by_id["3"][2] == "<script>alert('x')</script>", "CSV is data: no HTML escaping"
    assert (by_id["4"][2], by_id["5"][1], by_id["5"][2]) == ("'-2+3", "'=eve@ledger.test", "'@SUM(A1)"), (
        "cells a spreadsheet would run as formulas are prefixed with an apostrophe"
    )
    assert by_id["5"][4] == '\'=HYPERLINK("http://evil.example")'
    assert by_id["1"][6:] == ["2025-01-10T08:00:00+00:00", "2025-01-13T10:00:00+00:00"]
    assert by_id["2"][7] == ""
    data = path.read_bytes()
    assert result["size_bytes"] == len(data) and result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["format"] == "csv" and all_files(report_settings) == ["users-csv.csv"]


@pytest.mark.parametrize(
    ("filters", "expected_ids"),
    [
        ({"status": "active"}, [1, 3, 5]),
        ({"company_id": 1}, [1, 2]),
        ({"created_from": "2025-02-01", "created_to": "2025-03-01"}, [2, 3]),
        ({"created_from": "2025-03-02"}, [4, 5]),
        ({"company_id": 1, "status": "suspended"}, []),
    ],
)
def test_users_filters(
    db_engine: Engine, report_settings: Path, filters: dict[str, Any], expected_ids: list[int]
) -> None:
    insert_known(db_engine)
    result = _run("users", filters, "jsonl")
    records = read_jsonl(Path(result["path"]))
    assert [r["id"] for r in records] == expected_ids
    assert result["rows"] == len(expected_ids)
    assert result["filters"] == {k: filters[k] for k in sorted(filters)}


def test_users_jsonl_is_exact(db_engine: Engine, report_settings: Path) -> None:
    insert_known(db_engine)
    records = read_jsonl(Path(_run("users", fmt="jsonl")["path"]))
    assert [r["name"] for r in records] == [u["name"] for u in KNOWN_USERS], "no formula guard outside CSV"
    assert records[0] == {
        "id": 1,
        "email": "ann@acme.test",
        "name": 'Ann, the "Admin"',
        "company_id": 1,
        "company_name": "Acme, Inc.",
        "status": "active",
        "created_at": "2025-01-10T08:00:00+00:00",
        "last_login_at": "2025-01-13T10:00:00+00:00",
    }
    assert records[1]["last_login_at"] is None


def test_company_projects_counts(db_engine: Engine, report_settings: Path) -> None:
    insert_known(db_engine)
    rows = read_csv(Path(_run("company_projects")["path"]))
    assert rows == [
        ["company_id", "company_name", "plan", "projects", "active_projects", "users"],
        ["1", "Acme, Inc.", "pro", "2", "1", "2"],
        ["2", 'The "Quoted" Co', "free", "1", "1", "1"],
        ["3", "<b>Bold</b> & Sons", "enterprise", "0", "0", "1"],
        ["4", '\'=HYPERLINK("http://evil.example")', "free", "1", "1", "1"],
    ]
    filtered = read_jsonl(
        Path(_run("company_projects", {"min_projects": 1, "plan": "free"}, "jsonl")["path"])
    )
    assert [r["company_id"] for r in filtered] == [2, 4]


def test_activity_per_day_and_company(db_engine: Engine, report_settings: Path) -> None:
    insert_known(db_engine)
    result = _run("activity", JUNE, "jsonl")
    assert read_jsonl(Path(result["path"])) == [
        {"day": "2025-06-01", "company_id": 1, "company_name": "Acme, Inc.", "events": 9, "active_users": 2},
        {
            "day": "2025-06-01",
            "company_id": 2,
            "company_name": 'The "Quoted" Co',
            "events": 7,
            "active_users": 1,
        },
        {"day": "2025-06-02", "company_id": 1, "company_name": "Acme, Inc.", "events": 2, "active_users": 1},
        {
            "day": "2025-06-02",
            "company_id": 4,
            "company_name": '=HYPERLINK("http://evil.example")',
            "events": 4,
            "active_users": 1,
        },
        {
            "day": "2025-06-03",
            "company_id": 2,
            "company_name": 'The "Quoted" Co',
            "events": 11,
            "active_users": 1,
        },
    ]
    only_logins = read_jsonl(Path(_run("activity", {**JUNE, "action": "login"}, "jsonl")["path"]))
    assert [(r["day"], r["events"]) for r in only_logins] == [("2025-06-01", 4), ("2025-06-02", 2)]
    outside = _run("activity", {"date_from": "2025-06-04", "date_to": "2025-06-30"}, "jsonl")
    assert outside["rows"] == 0 and Path(outside["path"]).read_bytes() == b""


def test_activity_html_has_summary_chart_and_escaped_table(db_engine: Engine, report_settings: Path) -> None:
    insert_known(db_engine)
    result = _run("activity", JUNE, "html")
    page = Path(result["path"]).read_text(encoding="utf-8")
    assert result["rows"] == 5 and result["truncated"] is False
    assert '<dd id="row-count">5</dd>' in page
    total = sum(a["count"] for a in KNOWN_ACTIVITY)
    assert f'<dd class="total" data-column="events">{total}</dd>' in page
    assert "<svg" in page and "<polyline" in page
    assert page.count("<tr>") == 1 + 5
    assert "The &#34;Quoted&#34; Co" in page and 'The "Quoted" Co' not in page
    assert "<dd>2025-06-01</dd>" in page, "filters are shown in the summary"
    users_page = Path(_run("users", fmt="html")["path"]).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in users_page and "<script>" not in users_page
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; Sons" in users_page


def test_activity_detail_with_null_project(db_engine: Engine, report_settings: Path) -> None:
    insert_known(db_engine)
    rows = read_csv(Path(_run("activity_detail", {**JUNE, "company_id": 1})["path"]))
    assert rows[1:] == [
        ["1", "2025-06-01", "1", "1", "ann@acme.test", "1", "Website", "login", "3"],
        ["2", "2025-06-01", "1", "1", "ann@acme.test", "2", 'Multi\nline, "project"', "edit", "5"],
        ["3", "2025-06-01", "1", "2", "bob@acme.test", "", "", "login", "1"],
        ["5", "2025-06-02", "1", "1", "ann@acme.test", "1", "Website", "login", "2"],
    ]
    records = read_jsonl(Path(_run("activity_detail", {**JUNE, "user_id": 2}, "jsonl")["path"]))
    assert records == [
        {
            "id": 3,
            "day": "2025-06-01",
            "company_id": 1,
            "user_id": 2,
            "user_email": "bob@acme.test",
            "project_id": None,
            "project_name": None,
            "action": "login",
            "count": 1,
        }
    ]


def test_hundred_thousand_rows_match_the_database(db_engine: Engine, report_settings: Path) -> None:
    plan = seed_bulk(db_engine, 100_000)
    result = _run("activity_detail", full_range(plan))
    rows = read_csv(Path(result["path"]))
    assert result["rows"] == len(rows) - 1 == 100_000
    assert rows[1:] == detail_rows_in_db(db_engine)


def test_a_rerun_replaces_the_file_and_clears_stale_temporaries(
    db_engine: Engine, report_settings: Path
) -> None:
    insert_known(db_engine)
    report_settings.mkdir(parents=True)
    stale = report_settings / f".users-csv.{os.getpid() + 1}.tmp"
    stale.write_text("partial from a killed run")
    first = _run("users")
    with db_engine.begin() as conn:
        conn.execute(users.update().where(users.c.id == 1).values(name="Ann Renamed"))
    second = _run("users")
    assert first["path"] == second["path"] and first["sha256"] != second["sha256"]
    assert all_files(report_settings) == ["users-csv.csv"]
    assert read_csv(Path(second["path"]))[1][2] == "Ann Renamed"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("nope", {}), {}, "invalid report definition: unknown report type 'nope'"),
        (("users", {"colour": 1}), {}, "unknown filter 'colour'"),
        (("activity", {"date_from": "2025-01-01", "date_to": "2024-01-01"}), {}, "is after date_to"),
        (("users", {}), {"format": "pdf"}, "unknown report format 'pdf'"),
        (("users", {}), {"report_id": "../../etc/passwd"}, "report id '../../etc/passwd' must be"),
    ],
)
def test_invalid_definition_in_the_job_is_permanent(
    db_engine: Engine, report_settings: Path, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PermanentJobError) as info:
        generate_report(*args, **kwargs)
    assert expected in str(info.value)
    assert all_files(report_settings) == []


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_unreachable_database_is_transient(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str
) -> None:
    # Nothing listens on port 1; a directory is no SQLite file.
    url = {
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2",
        "sqlite": f"sqlite:///{tmp_path}",
    }[backend]
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "reports"))
    reset_settings()
    try:
        with pytest.raises(TransientJobError, match="database unavailable: OperationalError"):
            generate_report("users", {}, report_id="r")
    finally:
        reset_settings()
    assert all_files(tmp_path / "reports") == []


# --- enqueue refuses bad input before Redis ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("sales", {}), {}, "unknown report type 'sales'"),
        (("users", {"country": "SE"}), {}, "unknown filter 'country' for report 'users'"),
        (
            ("users", {"company_id": "7"}),
            {},
            "'company_id' of report 'users' must be an integer, got str '7'",
        ),
        (
            ("activity", {"date_from": "2025-02-01", "date_to": "2025-01-01"}),
            {},
            "is after date_to (2025-01-01)",
        ),
        (("activity", {"date_from": "2020-01-01", "date_to": "2025-01-01"}), {}, "at most 366 allowed"),
        (("users", {}), {"format": "xml"}, "unknown report format 'xml'"),
        (("users", {}), {"notify_email": "nope"}, "notify_email 'nope' is not a valid email address"),
        (("users", {}), {"requested_by": "a:b"}, "requested_by"),
    ],
)
def test_bad_input_is_refused_at_enqueue_and_nothing_is_enqueued(
    primary: redis.Redis, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ReportDefinitionError) as info:
        enqueue_report(*args, **kwargs)
    assert expected in str(info.value)
    assert primary.dbsize() == 0, "a refused report must leave nothing in Redis"


def test_enqueue_report_writes_one_validated_job(primary: redis.Redis) -> None:
    from jobs.enqueue import fetch_job

    job_id = enqueue_report(
        "activity", {"date_from": "2025-01-01", "date_to": "2025-01-31"}, format="html", requested_by=9
    )
    job = fetch_job(job_id=job_id)
    assert job is not None and job.origin == "report"
    assert job.func_name == "jobs.reports.jobs.generate_report" and job.args == ["activity"]
    assert job.kwargs["filters"] == {"date_from": dt.date(2025, 1, 1), "date_to": dt.date(2025, 1, 31)}
    assert (job.kwargs["format"], job.kwargs["requested_by"]) == ("html", "9")
    assert job.meta["report"] == {"type": "activity", "format": "html"}
    again = enqueue_report("users", idempotency_key="monthly-users")
    assert enqueue_report("users", idempotency_key="monthly-users") == again


# --- demo data ---------------------------------------------------------------------------------------


def test_seed_demo_command(db_engine: Engine) -> None:
    url = db_url(db_engine)
    args = [
        "--users",
        "300",
        "--companies",
        "12",
        "--days",
        "20",
        "--until",
        "2026-01-31",
        "--database-url",
        url,
    ]
    first = CliRunner().invoke(seed_demo, args)
    assert first.exit_code == 0, first.output
    assert re.search(
        r"done in [\d.]+ s: 12 companies, \d+ projects, 300 users, 3,000 activity rows", first.output
    )
    with db_engine.connect() as conn:
        counts = [
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (companies, users, activity)
        ]
        first_emails = conn.execute(select(users.c.email).order_by(users.c.id)).scalars().all()
    assert counts == [12, 300, 3_000]
    assert CliRunner().invoke(seed_demo, [*args, "--reset"]).exit_code == 0
    with db_engine.connect() as conn:
        assert conn.execute(select(users.c.email).order_by(users.c.id)).scalars().all() == first_emails, (
            "the same seed gives the same data"
        )
    appended = CliRunner().invoke(seed_demo, [*args, "--users", "10", "--companies", "2", "--activity", "5"])
    assert appended.exit_code == 0, appended.output
    with db_engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(users)).scalar_one() == 310
        # PostgreSQL's sequences were moved past the explicit ids: a normal insert still works.
        conn.execute(companies.insert().values(name="after seeding", created_at=dt.datetime.now(dt.UTC)))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--users", "0"], "Invalid value for '--users'"),
        (
            ["--users", "2", "--days", "1", "--activity", "100"],
            "activity must be between 0 and users x actions",
        ),
        (["--until", "soon"], "'soon' is not a date YYYY-MM-DD"),
        (["--database-url", "mysql://x"], "DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL"),
    ],
)
def test_seed_demo_refuses_bad_options(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(seed_demo, args)
    assert result.exit_code != 0
    assert expected in result.output


def test_seeded_data_reaches_until(db_engine: Engine) -> None:
    plan = seed_bulk(db_engine, 500, days=5)
    with db_engine.connect() as conn:
        days = conn.execute(select(func.min(activity.c.day), func.max(activity.c.day))).one()
    assert tuple(days) == (UNTIL - dt.timedelta(days=4), UNTIL) == (full_range(plan)["date_from"], UNTIL)


# --- the demo data `make run` seeds, and an empty report --------------------------------------


def test_the_demo_data_answers_every_documented_example(db_engine: Engine, report_settings: Path) -> None:
    today = dt.datetime.now(dt.UTC).date()
    seed_demo_data(db_engine, demo_plan(today))
    january_42 = _run("activity", {"date_from": "2026-01-01", "date_to": "2026-01-31", "company_id": 42})
    assert january_42["rows"] > 0 and "note" not in january_42, "docs/reports.md's API example"
    last_90_days = {"date_from": today - dt.timedelta(days=89), "date_to": today}
    assert _run("activity_detail", last_90_days)["rows"] == 45_000, "the README's walkthrough"
    assert _run("users", {"status": "active"}, "jsonl")["rows"] > 0, "docs/reports.md's runnable example"
    for days_ago in range(1, 91):  # the scheduled example: yesterday, for company 1, whenever it runs
        day = today - dt.timedelta(days=days_ago)
        assert _run("activity", {"date_from": day, "date_to": day, "company_id": 1})["rows"] > 0, day


def test_an_empty_report_says_which_filters_matched_nothing(
    db_engine: Engine, report_settings: Path, primary: redis.Redis
) -> None:
    seed_demo_data(db_engine, SeedPlan(companies=5, users=50, days=10, until=dt.date(2025, 12, 31)))
    filters = {"date_from": "2026-01-01", "date_to": "2026-01-31", "company_id": 42}
    result = _run("activity", filters, requested_by=7, notify_email="ana@example.com")
    note = "0 rows: no activity rows for company_id=42 between 2026-01-01 and 2026-01-31"
    assert (result["rows"], result["note"]) == (0, note)
    [ready] = [e for e in RealtimeService(primary).events_since(7) if e.event == "report.ready"]
    assert ready.data["note"] == note
    [email] = KryonixQueue("email", connection=primary).jobs
    assert email.args[0]["context"]["note"] == note, "the report-ready email says it too"


def test_a_named_recipient_is_greeted_by_name_in_the_ready_email(
    db_engine: Engine, report_settings: Path, primary: redis.Redis
) -> None:
    insert_known(db_engine)
    job_id = enqueue_report("users", notify_email=[("José Silva", "jose@example.com"), "ops@example.com"])
    [job] = KryonixQueue("report", connection=primary).jobs
    assert job.id == job_id
    generate_report(*job.args, report_id=job_id, **job.kwargs)  # the job's own JSON arguments
    emails = {
        email.args[0]["to"][0][1]: email.args[0] for email in KryonixQueue("email", connection=primary).jobs
    }
    assert emails["jose@example.com"]["to"] == [["José Silva", "jose@example.com"]]
    assert emails["jose@example.com"]["context"]["name"] == "José Silva"
    assert emails["ops@example.com"]["context"]["name"] is None, "an address alone: a neutral greeting"


@pytest.mark.parametrize(("until", "days"), [("2026-02-01", 90), ("2026-06-30", 181)])
def test_seed_demo_by_default_covers_january_2026_and_the_last_90_days(
    db_engine: Engine, until: str, days: int
) -> None:
    args = ["--users", "10", "--companies", "2", "--until", until, "--database-url", db_url(db_engine)]
    result = CliRunner().invoke(seed_demo, args)
    assert result.exit_code == 0, result.output
    assert f"activity rows over {days} days up to {until}" in result.output
