"""`python -m workers seed-demo`: fill the platform database with deterministic demo data."""

from __future__ import annotations

import datetime as dt
import time

import click

from cache.errors import ConfigError


def _until(value: str | None) -> dt.date:
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint="--until") from None


@click.command("seed-demo")
@click.option(
    "--users", default=1_000, show_default=True, type=click.IntRange(min=1), help="Users to create."
)
@click.option(
    "--companies", default=50, show_default=True, type=click.IntRange(min=1), help="Companies to create."
)
@click.option(
    "--days",
    default=None,
    type=click.IntRange(min=1),
    help="Days of activity, up to --until (default: from 2026-01-01, at least 90).",
)
@click.option(
    "--activity",
    default=None,
    type=click.IntRange(min=0),
    help="Activity rows (default: users x days / 2).",
)
@click.option("--seed", default=42, show_default=True, help="Random seed: the same seed gives the same data.")
@click.option("--until", default=None, help="Last day of activity, YYYY-MM-DD (default: today, UTC).")
@click.option("--reset", is_flag=True, help="Drop and recreate the tables first (deletes all data!).")
@click.option("--database-url", default=None, help="Database URL (default: DATABASE_URL or var/kryonix.db).")
@click.option("--batch-rows", default=10_000, show_default=True, type=click.IntRange(min=1, max=100_000))
def seed_demo(
    users: int,
    companies: int,
    days: int | None,
    activity: int | None,
    seed: int,
    until: str | None,
    reset: bool,
    database_url: str | None,
    batch_rows: int,
) -> None:
    """Create the schema and fill it with realistic demo data at any size (e.g. --users 100000)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cache.appcache.platform import make_engine
    from cache.env import redact_url
    from cache.settings import Settings, get_settings
    from jobs.reports.seed import SeedPlan, demo_days
    from jobs.reports.seed import seed_demo as run_seed

    try:
        url = Settings.from_env({"DATABASE_URL": database_url}).database_url if database_url else None
        url = url or get_settings().database_url
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    last_day = _until(until)
    days = days or demo_days(last_day)
    plan = SeedPlan(companies=companies, users=users, days=days, activity=activity, seed=seed, until=last_day)
    try:
        plan.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(
        f"seeding {redact_url(url)}: {companies:,} companies, {users:,} users, "
        f"{plan.activity_rows:,} activity rows over {days} days up to {plan.until}"
        + (" (reset)" if reset else "")
    )
    last = [0.0]

    def progress(table: str, done: int, total: int) -> None:
        if time.monotonic() - last[0] >= 1 or done == total:
            last[0] = time.monotonic()
            click.echo(f"  {table}: {done:,} / {total:,}")

    engine = make_engine(url)
    try:
        result = run_seed(engine, plan, reset=reset, batch_rows=batch_rows, on_progress=progress)
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"seeding failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        engine.dispose()
    click.echo(
        f"done in {result.seconds:.1f} s: {result.companies:,} companies, {result.projects:,} projects, "
        f"{result.users:,} users, {result.activity:,} activity rows"
    )
