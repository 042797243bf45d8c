"""One SQLAlchemy Core query per report type, and streaming its rows in batches.

Filter values only ever enter SQL as bound parameters. Rows are streamed: a
server-side cursor on PostgreSQL (`stream_results`), SQLite's own incremental cursor,
both read `yield_per` rows at a time, so memory stays flat however large the report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    case,
    distinct,
    exc,
    func,
    literal,
    or_,
    select,
    text,
)

from cache.appcache.platform import activity, companies, projects, users
from jobs.reports.registry import ReportType

# Spreadsheets run a cell starting with one of these as a formula ("CSV injection");
# OWASP's remedy is a leading apostrophe. TAB, CR and LF are dangerous first characters
# themselves, and whitespace or control characters before = + - @ are skipped by some
# spreadsheets, so those cells are guarded too. Applied in SQL, for CSV only, to every
# text column (the registry's "str" columns; a test checks none is left out).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
FORMULA_STARTS = ("=", "+", "-", "@")
# Stripped before looking at the first character: C0 controls but NUL (PostgreSQL text
# cannot hold it), DEL, C1 controls and Unicode whitespace.
IGNORED_LEADING = (
    "".join(chr(c) for c in range(1, 33))
    + "\x7f"
    + "".join(chr(c) for c in range(0x80, 0xA1))
    + "\u1680\u180e\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    + "\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
)


@dataclass(frozen=True)
class ReportQuery:
    rows: Select[Any]
    count: Select[Any]


def _guard(column: ColumnElement[Any], name: str, guard_formulas: bool) -> ColumnElement[Any]:
    if not guard_formulas:
        return column.label(name)
    prefixed = literal("'", String) + column
    stripped = func.ltrim(column, literal(IGNORED_LEADING, String))
    dangerous = or_(
        func.substr(column, 1, 1).in_(FORMULA_PREFIXES), func.substr(stripped, 1, 1).in_(FORMULA_STARTS)
    )
    return case((dangerous, prefixed), else_=column).label(name)


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def _users(filters: Mapping[str, Any], guard: bool) -> ReportQuery:
    conditions: list[ColumnElement[bool]] = []
    if "company_id" in filters:
        conditions.append(users.c.company_id == filters["company_id"])
    if "status" in filters:
        conditions.append(users.c.status == filters["status"])
    if "created_from" in filters:
        conditions.append(users.c.created_at >= _day_start(filters["created_from"]))
    if "created_to" in filters:
        conditions.append(users.c.created_at < _day_start(filters["created_to"] + dt.timedelta(days=1)))
    rows = (
        select(
            users.c.id,
            _guard(users.c.email, "email", guard),
            _guard(users.c.name, "name", guard),
            users.c.company_id,
            _guard(companies.c.name, "company_name", guard),
            _guard(users.c.status, "status", guard),
            users.c.created_at,
            users.c.last_login_at,
        )
        .select_from(users.join(companies, users.c.company_id == companies.c.id))
        .where(*conditions)
        .order_by(users.c.id)
    )
    return ReportQuery(rows, select(func.count()).select_from(users).where(*conditions))


def _company_projects(filters: Mapping[str, Any], guard: bool) -> ReportQuery:
    per_company = (
        select(
            projects.c.company_id,
            func.count().label("projects"),
            func.sum(case((projects.c.status == "active", 1), else_=0)).label("active_projects"),
        )
        .group_by(projects.c.company_id)
        .subquery("p")
    )
    members = (
        select(users.c.company_id, func.count().label("users")).group_by(users.c.company_id).subquery("u")
    )
    n_projects = func.coalesce(per_company.c.projects, 0)
    conditions: list[ColumnElement[bool]] = []
    if "company_id" in filters:
        conditions.append(companies.c.id == filters["company_id"])
    if "plan" in filters:
        conditions.append(companies.c.plan == filters["plan"])
    if "min_projects" in filters:
        conditions.append(n_projects >= filters["min_projects"])
    rows = (
        select(
            companies.c.id.label("company_id"),
            _guard(companies.c.name, "company_name", guard),
            _guard(companies.c.plan, "plan", guard),
            n_projects.label("projects"),
            func.coalesce(per_company.c.active_projects, 0).label("active_projects"),
            func.coalesce(members.c.users, 0).label("users"),
        )
        .select_from(
            companies.outerjoin(per_company, per_company.c.company_id == companies.c.id).outerjoin(
                members, members.c.company_id == companies.c.id
            )
        )
        .where(*conditions)
        .order_by(companies.c.id)
    )
    return ReportQuery(rows, select(func.count()).select_from(rows.order_by(None).subquery()))


def _activity_conditions(filters: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    conditions = [activity.c.day >= filters["date_from"], activity.c.day <= filters["date_to"]]
    if "company_id" in filters:
        conditions.append(activity.c.company_id == filters["company_id"])
    if "user_id" in filters:
        conditions.append(activity.c.user_id == filters["user_id"])
    if "action" in filters:
        conditions.append(activity.c.action == filters["action"])
    return conditions


def _activity(filters: Mapping[str, Any], guard: bool) -> ReportQuery:
    conditions = _activity_conditions(filters)
    rows = (
        select(
            activity.c.day,
            activity.c.company_id,
            _guard(companies.c.name, "company_name", guard),
            func.sum(activity.c.count).label("events"),
            func.count(distinct(activity.c.user_id)).label("active_users"),
        )
        .select_from(activity.join(companies, activity.c.company_id == companies.c.id))
        .where(*conditions)
        .group_by(activity.c.day, activity.c.company_id, companies.c.name)
        .order_by(activity.c.day, activity.c.company_id)
    )
    groups = select(activity.c.day, activity.c.company_id).where(*conditions).distinct().subquery()
    return ReportQuery(rows, select(func.count()).select_from(groups))


def _activity_detail(filters: Mapping[str, Any], guard: bool) -> ReportQuery:
    conditions = _activity_conditions(filters)
    rows = (
        select(
            activity.c.id,
            activity.c.day,
            activity.c.company_id,
            activity.c.user_id,
            _guard(users.c.email, "user_email", guard),
            activity.c.project_id,
            _guard(projects.c.name, "project_name", guard),
            _guard(activity.c.action, "action", guard),
            activity.c.count,
        )
        .select_from(
            activity.join(users, users.c.id == activity.c.user_id).outerjoin(
                projects, projects.c.id == activity.c.project_id
            )
        )
        .where(*conditions)
        .order_by(activity.c.id)
    )
    # Every activity row has its user (NOT NULL foreign key): count without the joins.
    return ReportQuery(rows, select(func.count()).select_from(activity).where(*conditions))


BUILDERS: dict[str, Callable[[Mapping[str, Any], bool], ReportQuery]] = {
    "users": _users,
    "company_projects": _company_projects,
    "activity": _activity,
    "activity_detail": _activity_detail,
}


def build_query(
    report: ReportType, filters: Mapping[str, Any], *, guard_formulas: bool = False
) -> ReportQuery:
    """The rows and count queries of `report` for already validated `filters`."""
    return BUILDERS[report.name](filters, guard_formulas)


@contextmanager
def stream_rows(
    engine: Engine, query: ReportQuery, batch_rows: int
) -> Iterator[tuple[int, Iterator[Sequence[Sequence[Any]]]]]:
    """Yield (row count, iterator of row batches), both read in one transaction.

    On PostgreSQL the transaction is REPEATABLE READ, so the count, the rows and any
    totals agree even while the platform writes; timestamps come back in UTC.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
            conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            # A server-side cursor is planned for its first 10% of rows (nested loops);
            # a report reads them all, so plan for that (hash joins): ~1.3x faster at 1M rows.
            conn.execute(text("SET LOCAL cursor_tuple_fraction = 1.0"))
        total = int(conn.execute(query.count).scalar_one())
        result = conn.execute(query.rows, execution_options={"stream_results": True, "yield_per": batch_rows})
        try:
            yield total, iter(result.partitions())
        finally:
            result.close()


# Errors where trying again later can succeed: the server is down or restarting, the
# network dropped, a deadlock or serialization failure, the pool is exhausted, SQLite busy.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
)


def is_transient_db_error(error: BaseException) -> bool:
    if isinstance(error, TRANSIENT_DB_ERRORS):
        return True
    return isinstance(error, exc.DBAPIError) and bool(error.connection_invalidated)
