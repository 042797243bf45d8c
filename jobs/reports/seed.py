"""Demo data for the platform schema at any size: companies, projects, users, activity.

Deterministic: the same plan (sizes, seed, last day) gives the same rows on SQLite
and PostgreSQL, so tests and benchmarks can rely on it. Rows are generated lazily and
inserted in `executemany` batches inside one transaction, so a million activity rows
take seconds and memory stays flat. `python -m workers seed-demo` is the CLI.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, literal, select

from cache.appcache.platform import activity, companies, create_schema, drop_schema, projects, users

ACTIONS = ("login", "view", "edit", "comment", "upload", "export", "share")
STATUSES = ("active", "invited", "suspended", "deleted")
STATUS_WEIGHTS = (85, 8, 5, 2)
PLANS = ("free", "pro", "enterprise")
PLAN_WEIGHTS = (60, 30, 10)
DEFAULT_ACTIVITY_PER_USER_DAY = 0.5  # rows per user and day when --activity is not given
DEFAULT_BATCH_ROWS = 10_000
MAX_USERS = 50_000_000
MAX_COMPANIES = 1_000_000
MAX_DAYS = 3_660
# The docs' report examples use January 2026 and company 42: demo data always covers them.
DEMO_FIRST_DAY = dt.date(2026, 1, 1)
DEMO_MIN_DAYS = 90  # the README's walkthrough reports on the last 90 days

_FIRST = (
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Radia",
    "Edsger",
    "Frances",
    "John",
    "Katherine",
    "Tim",
    "Hedy",
    "Guido",
    "Sophie",
    "Niklaus",
    "Anita",
    "Bjarne",
)
_LAST = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Perlman",
    "Dijkstra",
    "Allen",
    "McCarthy",
    "Johnson",
    "Berners-Lee",
    "Lamarr",
    "van Rossum",
    "Wilson",
    "Wirth",
    "Borg",
    "Stroustrup",
    "O'Neil",
)
_WORDS = (
    "Apex",
    "Blue",
    "Cedar",
    "Delta",
    "Ember",
    "Fjord",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "Nova",
    "Orbit",
    "Pine",
    "Quartz",
    "River",
    "Summit",
    "Tide",
)
_SUFFIXES = ("Labs", "Systems", "GmbH", "Inc.", "& Co", "Partners", "Group", "AB")
# Real company names carry commas, quotes and ampersands: reports must survive them.
_ODD_COMPANIES = ("Smith, Jones & Partners", 'The "Quoted" Company', "O'Reilly <Labs>", "Zoë Ångström AB")
_PROJECTS = (
    "Website",
    "Mobile app",
    "Billing",
    "Onboarding",
    "Data platform",
    "Q3 launch",
    "Support",
    "Migration",
    "Analytics",
    "Design system",
)


@dataclass(frozen=True, kw_only=True)
class SeedPlan:
    """Sizes of the demo data; `until` is the last day of activity (and the 'now' of the data)."""

    companies: int = 50
    users: int = 1_000
    days: int = 90
    activity: int | None = None  # None: users * days * DEFAULT_ACTIVITY_PER_USER_DAY
    seed: int = 42
    until: dt.date

    @property
    def activity_rows(self) -> int:
        if self.activity is not None:
            return self.activity
        return int(self.users * self.days * DEFAULT_ACTIVITY_PER_USER_DAY)

    def check(self) -> None:
        """Raises ValueError naming the option that is out of bounds."""
        if not 1 <= self.companies <= MAX_COMPANIES:
            raise ValueError(f"companies must be between 1 and {MAX_COMPANIES:,}, got {self.companies}")
        if not 1 <= self.users <= MAX_USERS:
            raise ValueError(f"users must be between 1 and {MAX_USERS:,}, got {self.users}")
        if not 1 <= self.days <= MAX_DAYS:
            raise ValueError(f"days must be between 1 and {MAX_DAYS}, got {self.days}")
        capacity = self.users * len(ACTIONS) * self.days
        if not 0 <= self.activity_rows <= capacity:
            raise ValueError(
                f"activity must be between 0 and users x actions x days = {capacity:,} "
                f"(one row per user, action and day), got {self.activity_rows:,}"
            )


def demo_days(until: dt.date) -> int:
    """Days of demo activity ending `until`: back to DEMO_FIRST_DAY, and at least DEMO_MIN_DAYS. Pure.

    So every documented example finds rows whenever the data is seeded: January 2026
    (docs/reports.md) and the last 90 days (the README).
    """
    return min(MAX_DAYS, max(DEMO_MIN_DAYS, (until - DEMO_FIRST_DAY).days + 1))


def demo_plan(until: dt.date) -> SeedPlan:
    """The demo data `make run` seeds on its first start: 50 companies, 1,000 users, 500 rows a day."""
    return SeedPlan(users=1_000, days=demo_days(until), until=until)


@dataclass(frozen=True, kw_only=True)
class SeedResult:
    companies: int
    projects: int
    users: int
    activity: int
    seconds: float


class DemoData:
    """The rows of one plan, generated on demand; ids start after `offsets` (appending to a filled DB)."""

    def __init__(self, plan: SeedPlan, offsets: dict[str, int] | None = None) -> None:
        plan.check()
        self.plan = plan
        self.offsets = offsets or {}
        self.rng = random.Random(plan.seed)
        self.now = dt.datetime.combine(plan.until, dt.time(23, 59, 59), tzinfo=dt.UTC)
        self.company_projects: list[list[int]] = []  # index: company number -> project ids
        self.user_company: list[int] = []  # index: user number -> company id

    def _first(self, table: str) -> int:
        return self.offsets.get(table, 0) + 1

    def _moment(self, earliest_days_ago: int, latest_days_ago: int = 0) -> dt.datetime:
        seconds = self.rng.randint(latest_days_ago * 86_400, earliest_days_ago * 86_400)
        return self.now - dt.timedelta(seconds=seconds)

    def companies(self) -> Iterator[dict[str, Any]]:
        first = self._first("companies")
        for n in range(self.plan.companies):
            if n % 97 == 3:
                name = _ODD_COMPANIES[(n // 97) % len(_ODD_COMPANIES)]
            else:
                name = f"{self.rng.choice(_WORDS)} {self.rng.choice(_WORDS)} {self.rng.choice(_SUFFIXES)}"
            yield {
                "id": first + n,
                "name": name,
                "plan": self.rng.choices(PLANS, PLAN_WEIGHTS)[0],
                "created_at": self._moment(self.plan.days + 1460, self.plan.days),
            }

    def projects(self) -> Iterator[dict[str, Any]]:
        next_id = self._first("projects")
        first_company = self._first("companies")
        for n in range(self.plan.companies):
            ids = []
            for _ in range(self.rng.randint(1, 8)):
                ids.append(next_id)
                yield {
                    "id": next_id,
                    "company_id": first_company + n,
                    "name": f"{self.rng.choice(_PROJECTS)} {next_id}",
                    "status": "active" if self.rng.random() < 0.8 else "archived",
                    "created_at": self._moment(self.plan.days + 730),
                }
                next_id += 1
            self.company_projects.append(ids)

    def users(self) -> Iterator[dict[str, Any]]:
        first = self._first("users")
        first_company = self._first("companies")
        # A few large customers and a long tail, as on a real SaaS platform.
        weights = list(itertools.accumulate(1.0 / (n + 1) ** 0.8 for n in range(self.plan.companies)))
        for n in range(self.plan.users):
            company = self.rng.choices(range(self.plan.companies), cum_weights=weights)[0]
            self.user_company.append(company)
            given, family = self.rng.choice(_FIRST), self.rng.choice(_LAST)
            status = self.rng.choices(STATUSES, STATUS_WEIGHTS)[0]
            created = self._moment(self.plan.days + 730)
            span = int((self.now - created).total_seconds())
            last_login = (
                None if status == "invited" else created + dt.timedelta(seconds=self.rng.randint(0, span))
            )
            local = f"{given}.{family}".lower().replace("'", "").replace(" ", "")
            yield {
                "id": first + n,
                "company_id": first_company + company,
                "email": f"{local}.{first + n}@{_domain(first_company + company)}",
                "name": f"{given} {family}",
                "status": status,
                "created_at": created,
                "last_login_at": last_login,
            }

    def activity(self) -> Iterator[dict[str, Any]]:
        """Rows spread evenly over the days; (user, action, day) is unique, as a daily rollup is."""
        plan = self.plan
        next_id = self._first("activity")
        first_user, first_company = self._first("users"), self._first("companies")
        per_day, extra = divmod(plan.activity_rows, plan.days)
        for day_index in range(plan.days):
            day = plan.until - dt.timedelta(days=plan.days - 1 - day_index)
            picks = self.rng.sample(range(plan.users * len(ACTIONS)), per_day + (day_index < extra))
            picks.sort()
            for pick in picks:
                user, action = divmod(pick, len(ACTIONS))
                company = self.user_company[user]
                options = self.company_projects[company]
                yield {
                    "id": next_id,
                    "company_id": first_company + company,
                    "user_id": first_user + user,
                    "project_id": self.rng.choice(options) if self.rng.random() < 0.9 else None,
                    "day": day,
                    "action": ACTIONS[action],
                    "count": 1 + min(499, int(self.rng.expovariate(0.15))),
                }
                next_id += 1


def _domain(company_id: int) -> str:
    return f"company{company_id}.example.com"


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _offsets(conn: Connection) -> dict[str, int]:
    tables = {"companies": companies, "projects": projects, "users": users, "activity": activity}
    return {
        name: int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one())
        for name, t in tables.items()
    }


def _fix_sequences(conn: Connection) -> None:
    """Explicit ids leave PostgreSQL's serial sequences behind; move them past the data."""
    if conn.dialect.name != "postgresql":
        return
    for table in (companies, projects, users, activity):
        top = select(func.coalesce(func.max(table.c.id), 1)).scalar_subquery()
        sequence = func.pg_get_serial_sequence(literal(table.fullname), literal("id"))
        conn.execute(select(func.setval(sequence, top)))


def seed_demo(
    engine: Engine,
    plan: SeedPlan,
    *,
    reset: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SeedResult:
    """Create the schema if needed (drop it first with `reset`) and insert `plan`'s rows.

    Without `reset` the rows are appended after the existing ids.

    Raises:
        ValueError: the plan is out of bounds (nothing was written).
    """
    plan.check()
    started = time.monotonic()
    if reset:
        drop_schema(engine)
    create_schema(engine)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        data = DemoData(plan, _offsets(conn))
        steps: list[tuple[str, Table, Iterable[dict[str, Any]], int]] = [
            ("companies", companies, data.companies(), plan.companies),
            ("projects", projects, data.projects(), -1),
            ("users", users, data.users(), plan.users),
            ("activity", activity, data.activity(), plan.activity_rows),
        ]
        for name, table, rows, total in steps:
            done = 0
            for batch in _batches(rows, batch_rows):
                conn.execute(table.insert(), batch)
                done += len(batch)
                if on_progress is not None:
                    on_progress(name, done, total if total >= 0 else done)
            counts[name] = done
        _fix_sequences(conn)
    return SeedResult(
        companies=counts["companies"],
        projects=counts["projects"],
        users=counts["users"],
        activity=counts["activity"],
        seconds=time.monotonic() - started,
    )
