"""The platform database schema (SQLAlchemy Core) and the engine factory.

The tables live in the `auth` and `core` schemas as on the platform's PostgreSQL.
SQLite has no schemas, so the engine maps both to the default one with SQLAlchemy's
schema translation: the same queries run unchanged on both.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url

from cache.settings import get_settings

SCHEMAS = ("auth", "core")

metadata = MetaData()

companies = Table(
    "companies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("plan", String(20), nullable=False, server_default="free"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    schema="core",
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", Integer, ForeignKey("core.companies.id"), nullable=False, index=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False, server_default="active"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_login_at", DateTime(timezone=True)),
    schema="auth",
)

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", Integer, ForeignKey("core.companies.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False, server_default="active"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    schema="core",
)

# Usage events pre-aggregated per user, project and day: what the activity report sums.
activity = Table(
    "activity",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", Integer, ForeignKey("core.companies.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("auth.users.id"), nullable=False),
    Column("project_id", Integer, ForeignKey("core.projects.id")),
    Column("day", Date, nullable=False),
    Column("action", String(40), nullable=False),
    Column("count", Integer, nullable=False),
    Index("ix_activity_company_day", "company_id", "day"),
    schema="core",
)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (default `DATABASE_URL`) that runs the schema-qualified tables on any backend."""
    url = url or get_settings().database_url
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine.execution_options(schema_translate_map={name: None for name in SCHEMAS})
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL lets report readers and writers work at once; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_schema(engine: Engine) -> None:
    """Create the schemas (PostgreSQL) and tables if they do not exist."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for name in SCHEMAS:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
        metadata.create_all(conn)


def drop_schema(engine: Engine) -> None:
    """Drop every table (tests and `seed-demo --reset`)."""
    with engine.begin() as conn:
        metadata.drop_all(conn)
