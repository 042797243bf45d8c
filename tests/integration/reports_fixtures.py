"""Data and helpers for the report tests: a small known dataset, bulk seeding, reading files back."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from cache.appcache.platform import activity, companies, projects, users
from cache.settings import reset_settings
from jobs.reports.seed import SeedPlan, seed_demo

UNTIL = dt.date(2026, 1, 31)
T0 = dt.datetime(2025, 1, 10, 8, 0, tzinfo=dt.UTC)

# Text that must survive every format: delimiters, quotes, newlines, markup, formulas.
KNOWN_COMPANIES = [
    {"id": 1, "name": "Acme, Inc.", "plan": "pro", "created_at": T0},
    {"id": 2, "name": 'The "Quoted" Co', "plan": "free", "created_at": T0},
    {"id": 3, "name": "<b>Bold</b> & Sons", "plan": "enterprise", "created_at": T0},
    {"id": 4, "name": '=HYPERLINK("http://evil.example")', "plan": "free", "created_at": T0},
]
KNOWN_PROJECTS = [
    {"id": 1, "company_id": 1, "name": "Website", "status": "active", "created_at": T0},
    {"id": 2, "company_id": 1, "name": 'Multi\nline, "project"', "status": "archived", "created_at": T0},
    {"id": 3, "company_id": 2, "name": "App", "status": "active", "created_at": T0},
    {"id": 4, "company_id": 4, "name": "Ledger", "status": "active", "created_at": T0},
]
KNOWN_USERS = [
    {"id": 1, "company_id": 1, "email": "ann@acme.test", "name": 'Ann, the "Admin"', "status": "active",
     "created_at": T0, "last_login_at": T0 + dt.timedelta(days=3, hours=2)},
    {"id": 2, "company_id": 1, "email": "bob@acme.test", "name": "Bob\r\nNewline", "status": "invited",
     "created_at": dt.datetime(2025, 2, 1, 23, 59, 59, tzinfo=dt.UTC), "last_login_at": None},
    {"id": 3, "company_id": 2, "email": "cat@quoted.test", "name": "<script>alert('x')</script>",
     "status": "active", "created_at": dt.datetime(2025, 3, 1, 0, 0, tzinfo=dt.UTC), "last_login_at": None},
    {"id": 4, "company_id": 3, "email": "dan@bold.test", "name": "-2+3", "status": "suspended",
     "created_at": dt.datetime(2025, 3, 15, 12, tzinfo=dt.UTC), "last_login_at": None},
    {"id": 5, "company_id": 4, "email": "=eve@ledger.test", "name": "@SUM(A1)", "status": "active",
     "created_at": dt.datetime(2025, 4, 1, 9, tzinfo=dt.UTC), "last_login_at": None},
]  # fmt: skip
_DAY = dt.date(2025, 6, 1)
KNOWN_ACTIVITY = [
    {"id": i + 1, "company_id": c, "user_id": u, "project_id": p, "day": _DAY + dt.timedelta(days=d),
     "action": a, "count": n}
    for i, (c, u, p, d, a, n) in enumerate(
        [
            (1, 1, 1, 0, "login", 3),
            (1, 1, 2, 0, "edit", 5),
            (1, 2, None, 0, "login", 1),
            (2, 3, 3, 0, "view", 7),
            (1, 1, 1, 1, "login", 2),
            (4, 5, 4, 1, "export", 4),
            (2, 3, 3, 2, "view", 11),
        ]
    )
]  # fmt: skip


def insert_known(engine: Engine) -> None:
    with engine.begin() as conn:
        for table, rows in (
            (companies, KNOWN_COMPANIES),
            (projects, KNOWN_PROJECTS),
            (users, KNOWN_USERS),
            (activity, KNOWN_ACTIVITY),
        ):
            conn.execute(table.insert(), rows)


def seed_bulk(engine: Engine, activity_rows: int, *, days: int = 60) -> SeedPlan:
    plan = SeedPlan(companies=40, users=2_000, days=days, activity=activity_rows, seed=5, until=UNTIL)
    seed_demo(engine, plan)
    return plan


def full_range(plan: SeedPlan) -> dict[str, Any]:
    return {"date_from": plan.until - dt.timedelta(days=plan.days - 1), "date_to": plan.until}


def db_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def detail_rows_in_db(engine: Engine) -> list[list[str]]:
    """Every activity record as the activity_detail CSV shows it, read independently of the report code."""
    query = (
        select(
            activity.c.id,
            activity.c.day,
            activity.c.company_id,
            activity.c.user_id,
            users.c.email,
            activity.c.project_id,
            projects.c.name,
            activity.c.action,
            activity.c.count,
        )
        .join_from(activity, users, users.c.id == activity.c.user_id)
        .outerjoin(projects, projects.c.id == activity.c.project_id)
        .order_by(activity.c.id)
    )
    with engine.connect() as conn:
        return [[_text(v) for v in row] for row in conn.execute(query)]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def visible_files(directory: Path) -> list[str]:
    return sorted(n for n in _listdir(directory) if not n.startswith("."))


def _listdir(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []


def all_files(directory: Path) -> list[str]:
    return sorted(_listdir(directory))


@pytest.fixture
def reports_dir(tmp_path: Path) -> Path:
    return tmp_path / "reports"


@pytest.fixture
def report_settings(monkeypatch: pytest.MonkeyPatch, db_engine: Engine, reports_dir: Path) -> Iterator[Path]:
    """Settings of this process point at the test database and reports directory."""
    monkeypatch.setenv("DATABASE_URL", db_url(db_engine))
    monkeypatch.setenv("REPORTS_DIR", str(reports_dir))
    reset_settings()
    yield reports_dir
    reset_settings()
