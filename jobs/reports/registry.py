"""The report types: their columns and their filters, each typed and bounded.

This is the allow-list the design brief asks for: a report request names one of these
types and only the filters it declares; values are checked for type and range here,
before anything reaches Redis and again in the job (a job can be written into Redis
by hand). Queries only ever see the normalized values, as bound parameters.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jobs.errors import JobValidationError

FORMATS = ("csv", "jsonl", "html")
MAX_DB_ID = 2**31 - 1  # the Integer primary keys of the platform schema
USER_STATUSES = ("active", "invited", "suspended", "deleted")
PLANS = ("free", "pro", "enterprise")
MAX_ACTIVITY_DAYS = 366  # one year of daily rows per report: bounded work, and what the UI offers
ACTION_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,39}")  # fullmatch: fits activity.action String(40)
EARLIEST_DATE = dt.date(2000, 1, 1)
LATEST_DATE = dt.date(2100, 12, 31)

FilterKind = Literal["int", "choice", "date", "action"]
ColumnKind = Literal["int", "str", "date", "datetime"]


class ReportDefinitionError(JobValidationError):
    """A report request that no retry can fix: unknown type, filter, format or a bad value."""


@dataclass(frozen=True, kw_only=True)
class Filter:
    """One filter a report type accepts; `minimum`/`maximum` bound ints, `choices` bound choices."""

    name: str
    kind: FilterKind
    help: str
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for docs and error messages."""
        if self.kind == "int":
            shape = f"integer {self.minimum}..{self.maximum}"
        elif self.kind == "choice":
            shape = "one of " + "|".join(self.choices)
        elif self.kind == "date":
            shape = "date YYYY-MM-DD"
        else:
            shape = "action name (a-z, 0-9, _.-; up to 40)"
        return f"{self.name} ({shape}{', required' if self.required else ''}): {self.help}"


@dataclass(frozen=True, kw_only=True)
class DateRange:
    """Two date filters forming an inclusive range; `max_days` bounds its length (None: unbounded)."""

    start: str
    end: str
    max_days: int | None


@dataclass(frozen=True, kw_only=True)
class Column:
    """An output column; `total` columns are summed in the HTML summary."""

    name: str
    kind: ColumnKind
    total: bool = False


@dataclass(frozen=True, kw_only=True)
class ReportType:
    name: str
    title: str
    description: str
    columns: tuple[Column, ...]
    filters: tuple[Filter, ...]
    ranges: tuple[DateRange, ...] = ()
    series: tuple[str, str] | None = None  # (x column, y column) charted in HTML, summed per x

    def filter(self, name: str) -> Filter | None:
        return next((f for f in self.filters if f.name == name), None)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _id_filter(name: str, what: str) -> Filter:
    return Filter(name=name, kind="int", help=f"only this {what}", minimum=1, maximum=MAX_DB_ID)


def _date_filter(name: str, help: str, required: bool = False) -> Filter:
    return Filter(name=name, kind="date", help=help, required=required)


_ACTIVITY_RANGE = DateRange(start="date_from", end="date_to", max_days=MAX_ACTIVITY_DAYS)
_ACTIVITY_DATES = (
    _date_filter("date_from", "first day (inclusive)", required=True),
    _date_filter("date_to", f"last day (inclusive); at most {MAX_ACTIVITY_DAYS} days in all", required=True),
)
_ACTION_FILTER = Filter(name="action", kind="action", help="only this action (e.g. login, edit)")

REPORT_TYPES: dict[str, ReportType] = {
    t.name: t
    for t in (
        ReportType(
            name="users",
            title="Users",
            description="Users with their company, status, creation and last login.",
            columns=(
                Column(name="id", kind="int"),
                Column(name="email", kind="str"),
                Column(name="name", kind="str"),
                Column(name="company_id", kind="int"),
                Column(name="company_name", kind="str"),
                Column(name="status", kind="str"),
                Column(name="created_at", kind="datetime"),
                Column(name="last_login_at", kind="datetime"),
            ),
            filters=(
                _id_filter("company_id", "company"),
                Filter(name="status", kind="choice", help="only users in this status", choices=USER_STATUSES),
                _date_filter("created_from", "created on or after this day (UTC)"),
                _date_filter("created_to", "created on or before this day (UTC)"),
            ),
            ranges=(DateRange(start="created_from", end="created_to", max_days=None),),
        ),
        ReportType(
            name="company_projects",
            title="Projects per company",
            description="Each company with its number of projects, active projects and users.",
            columns=(
                Column(name="company_id", kind="int"),
                Column(name="company_name", kind="str"),
                Column(name="plan", kind="str"),
                Column(name="projects", kind="int", total=True),
                Column(name="active_projects", kind="int", total=True),
                Column(name="users", kind="int", total=True),
            ),
            filters=(
                _id_filter("company_id", "company"),
                Filter(name="plan", kind="choice", help="only companies on this plan", choices=PLANS),
                Filter(
                    name="min_projects",
                    kind="int",
                    help="only companies with at least this many projects",
                    minimum=0,
                    maximum=1_000_000,
                ),
            ),
        ),
        ReportType(
            name="activity",
            title="Activity per day and company",
            description="Usage per day per company: events and distinct active users.",
            columns=(
                Column(name="day", kind="date"),
                Column(name="company_id", kind="int"),
                Column(name="company_name", kind="str"),
                Column(name="events", kind="int", total=True),
                Column(name="active_users", kind="int"),
            ),
            filters=(*_ACTIVITY_DATES, _id_filter("company_id", "company"), _ACTION_FILTER),
            ranges=(_ACTIVITY_RANGE,),
            series=("day", "events"),
        ),
        ReportType(
            name="activity_detail",
            title="Activity records",
            description="Every activity record (user, project, day, action, count) with user and project.",
            columns=(
                Column(name="id", kind="int"),
                Column(name="day", kind="date"),
                Column(name="company_id", kind="int"),
                Column(name="user_id", kind="int"),
                Column(name="user_email", kind="str"),
                Column(name="project_id", kind="int"),
                Column(name="project_name", kind="str"),
                Column(name="action", kind="str"),
                Column(name="count", kind="int", total=True),
            ),
            filters=(
                *_ACTIVITY_DATES,
                _id_filter("company_id", "company"),
                _id_filter("user_id", "user"),
                _ACTION_FILTER,
            ),
            ranges=(_ACTIVITY_RANGE,),
            series=("day", "count"),
        ),
    )
}


def get_report_type(name: object) -> ReportType:
    """Raises ReportDefinitionError naming the known types."""
    if not isinstance(name, str) or name not in REPORT_TYPES:
        raise ReportDefinitionError(f"unknown report type {name!r}; known: {', '.join(sorted(REPORT_TYPES))}")
    return REPORT_TYPES[name]


def check_format(fmt: object) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ReportDefinitionError(f"unknown report format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt


def validate_filters(report: ReportType, filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """The filters, typed (dates as `date`), checked against `report`'s declarations.

    `None` values count as not given, so web forms can pass empty fields through.

    Raises:
        ReportDefinitionError: not a mapping, unknown name, wrong type, out of bounds,
            missing required filter, reversed or too long date range. The message names
            the report, the filter and what was expected.
    """
    if filters is None:
        filters = {}
    if not isinstance(filters, Mapping):
        raise ReportDefinitionError(
            f"filters of report {report.name!r} must be a mapping of name to value, "
            f"got {type(filters).__name__}"
        )
    clean: dict[str, Any] = {}
    for name, value in filters.items():
        declared = report.filter(name) if isinstance(name, str) else None
        if declared is None:
            known = ", ".join(f.name for f in report.filters)
            raise ReportDefinitionError(f"unknown filter {name!r} for report {report.name!r}; known: {known}")
        if value is not None:
            clean[name] = _coerce(report, declared, value)
    for declared in report.filters:
        if declared.required and declared.name not in clean:
            raise ReportDefinitionError(f"filter {declared.name!r} is required for report {report.name!r}")
    for date_range in report.ranges:
        _check_range(report, date_range, clean.get(date_range.start), clean.get(date_range.end))
    return clean


def _coerce(report: ReportType, declared: Filter, value: Any) -> Any:
    where = f"filter {declared.name!r} of report {report.name!r}"
    got = f"got {type(value).__name__} {value!r}"
    if declared.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportDefinitionError(f"{where} must be an integer, {got}")
        assert declared.minimum is not None and declared.maximum is not None
        if not declared.minimum <= value <= declared.maximum:
            raise ReportDefinitionError(
                f"{where} must be between {declared.minimum} and {declared.maximum}, got {value}"
            )
        return value
    if declared.kind == "choice":
        if not isinstance(value, str) or value not in declared.choices:
            raise ReportDefinitionError(f"{where} must be one of {', '.join(declared.choices)}; {got}")
        return value
    if declared.kind == "action":
        if not isinstance(value, str) or not ACTION_PATTERN.fullmatch(value):
            raise ReportDefinitionError(
                f"{where} must be an action name (lowercase letters, digits, '_.-', up to 40); {got}"
            )
        return value
    return _coerce_date(where, value, got)


def _coerce_date(where: str, value: Any, got: str) -> dt.date:
    day: dt.date
    if isinstance(value, str):
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise ReportDefinitionError(f"{where} must be a date YYYY-MM-DD, {got}") from None
    # datetime is a date subclass; a time of day would be silently dropped, so refuse it.
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        day = value
    else:
        raise ReportDefinitionError(f"{where} must be a date YYYY-MM-DD (not a datetime), {got}")
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ReportDefinitionError(f"{where} must be between {EARLIEST_DATE} and {LATEST_DATE}, got {day}")
    return day


def _check_range(report: ReportType, date_range: DateRange, start: Any, end: Any) -> None:
    if start is None or end is None:
        return
    if start > end:
        raise ReportDefinitionError(
            f"report {report.name!r}: {date_range.start} ({start}) is after {date_range.end} ({end})"
        )
    days = (end - start).days + 1
    if date_range.max_days is not None and days > date_range.max_days:
        raise ReportDefinitionError(
            f"report {report.name!r}: {date_range.start}..{date_range.end} covers {days} days; "
            f"at most {date_range.max_days} allowed"
        )


def filters_as_json(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Filters with dates as ISO strings: for results, events and emails."""
    return {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in sorted(filters.items())}
