"""CachedDatabase on SQLite and PostgreSQL with a real CACHE Redis (marker `cache`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, event, insert

from cache import keys
from cache.appcache.cached_db import (
    PROJECTS_TTL_S,
    USER_TTL_S,
    CachedDatabase,
    Project,
    User,
    company_projects_key,
    user_key,
)
from cache.appcache.platform import companies, projects, users
from cache.appcache.service import CacheService
from cache.appcache.stats import CacheStats

pytestmark = pytest.mark.cache

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class QueryCounter:
    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def seeded(db_engine: Engine) -> Engine:
    with db_engine.begin() as conn:
        conn.execute(
            insert(companies),
            [
                {"id": 1, "name": "Acme", "plan": "pro", "created_at": T0},
                {"id": 2, "name": "Globex", "plan": "free", "created_at": T0},
            ],
        )
        conn.execute(
            insert(users),
            [
                {"id": 10, "company_id": 1, "email": "ada@acme.test", "name": "Ada", "created_at": T0},
                {"id": 11, "company_id": 1, "email": "bob@acme.test", "name": "Bob", "created_at": T0},
                {"id": 20, "company_id": 2, "email": "eve@globex.test", "name": "Eve", "created_at": T0},
            ],
        )
        conn.execute(
            insert(projects),
            [
                {"id": 100, "company_id": 1, "name": "Rocket", "created_at": T0},
                {"id": 101, "company_id": 1, "name": "Anvil", "created_at": T0},
                {"id": 200, "company_id": 2, "name": "Dome", "created_at": T0},
            ],
        )
    return db_engine


@pytest.fixture
def db(seeded: Engine, cache_redis: redis.Redis) -> Iterator[CachedDatabase]:
    yield CachedDatabase(engine=seeded, cache=CacheService(cache_redis, namespace="db", stats=CacheStats()))


def test_second_user_read_is_served_from_cache(db: CachedDatabase, seeded: Engine) -> None:
    queries = QueryCounter(seeded)
    first = db.get_user_by_id(10)
    assert queries.count == 1
    second = db.get_user_by_id(10)
    assert queries.count == 1  # the database was not asked again
    assert isinstance(first, User)
    assert first == second
    assert (first.name, first.email, first.company_id, first.status) == ("Ada", "ada@acme.test", 1, "active")
    assert first.created_at is not None and first.created_at.replace(tzinfo=UTC) == T0


def test_entries_carry_the_issue_ttls(db: CachedDatabase, cache_redis: redis.Redis) -> None:
    db.get_user_by_id(10)
    db.get_company_projects(1)
    stale_ms = db.cache.stale_ttl_s * 1000
    user_ttl = cache_redis.pttl(keys.cache_entry("db", user_key(10)))
    projects_ttl = cache_redis.pttl(keys.cache_entry("db", company_projects_key(1)))
    assert USER_TTL_S * 900 <= user_ttl - stale_ms <= USER_TTL_S * 1000
    assert PROJECTS_TTL_S * 900 <= projects_ttl - stale_ms <= PROJECTS_TTL_S * 1000


def test_missing_user_is_cached_as_none(db: CachedDatabase, seeded: Engine) -> None:
    queries = QueryCounter(seeded)
    assert db.get_user_by_id(999) is None
    assert db.get_user_by_id(999) is None
    assert queries.count == 1


def test_company_projects_are_cached(db: CachedDatabase, seeded: Engine) -> None:
    queries = QueryCounter(seeded)
    first = db.get_company_projects(1)
    assert [p.name for p in first] == ["Rocket", "Anvil"]  # ordered by id
    assert all(isinstance(p, Project) for p in first)
    assert db.get_company_projects(1) == first
    assert queries.count == 1
    assert db.get_company_projects(3) == []


def test_update_user_invalidates_the_user(db: CachedDatabase) -> None:
    assert db.get_user_by_id(10).name == "Ada"  # type: ignore[union-attr]
    assert db.update_user(10, name="Ada Lovelace", status="suspended") is True
    user = db.get_user_by_id(10)
    assert user is not None
    assert (user.name, user.status) == ("Ada Lovelace", "suspended")
    assert db.update_user(999, name="Nobody") is False


def test_add_project_invalidates_the_company_list(db: CachedDatabase) -> None:
    assert len(db.get_company_projects(1)) == 2
    created = db.add_project(1, "Tunnel")
    assert created.id > 0 and created.company_id == 1
    after = db.get_company_projects(1)
    assert sorted(p.name for p in after) == ["Anvil", "Rocket", "Tunnel"]
    assert created.id in {p.id for p in after}
    assert len(db.get_company_projects(2)) == 1


def test_invalidate_company_drops_all_of_its_entries_and_only_those(
    db: CachedDatabase, seeded: Engine, cache_redis: redis.Redis
) -> None:
    for user_id in (10, 11, 20):
        db.get_user_by_id(user_id)
    db.get_company_projects(1)
    db.get_company_projects(2)
    db.invalidate_company(1)
    for name, present in [
        (user_key(10), 0),
        (user_key(11), 0),
        (company_projects_key(1), 0),
        (user_key(20), 1),
        (company_projects_key(2), 1),
    ]:
        assert cache_redis.exists(keys.cache_entry("db", name)) == present, name
    queries = QueryCounter(seeded)
    db.get_user_by_id(20)
    db.get_company_projects(2)
    assert queries.count == 0
    db.get_user_by_id(10)
    assert queries.count == 1


def test_reads_work_without_the_cache_redis(seeded: Engine) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.1, socket_timeout=0.1)
    db = CachedDatabase(engine=seeded, cache=CacheService(dead, namespace="db", stats=CacheStats()))
    assert db.get_user_by_id(10).name == "Ada"  # type: ignore[union-attr]
    assert [p.id for p in db.get_company_projects(1)] == [100, 101]
    assert db.update_user(10, name="Still works") is True


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda d: d.get_user_by_id("10"), TypeError, "user_id must be an int"),
        (lambda d: d.get_user_by_id(True), TypeError, "user_id must be an int"),
        (lambda d: d.get_user_by_id(0), ValueError, "user_id must be positive"),
        (lambda d: d.get_company_projects(-1), ValueError, "company_id must be positive"),
        (lambda d: d.update_user(10), ValueError, "at least one of name, email, status"),
        (lambda d: d.update_user(10, name=""), ValueError, "name must be 1 to 200 characters"),
        (lambda d: d.update_user(10, name="x" * 201), ValueError, "name must be 1 to 200 characters"),
        (lambda d: d.update_user(10, email="no-at-sign"), ValueError, "email must contain '@'"),
        (lambda d: d.update_user(10, status=5), TypeError, "status must be a str"),
        (lambda d: d.add_project(1, "   "), ValueError, "name must be 1 to 200 characters"),
        (lambda d: d.invalidate_company(0), ValueError, "company_id must be positive"),
    ],
)
def test_bad_input_is_rejected_before_the_database(
    db: CachedDatabase, seeded: Engine, call: Any, error: type[Exception], message: str
) -> None:
    queries = QueryCounter(seeded)
    with pytest.raises(error, match=message):
        call(db)
    assert queries.count == 0


def test_default_construction_uses_db_namespace(seeded: Engine, redis_env: dict[str, str]) -> None:
    db = CachedDatabase(engine=seeded)
    assert db.cache.namespace == "db"
    assert db.get_user_by_id(11).name == "Bob"  # type: ignore[union-attr]
