"""Cached platform queries (SQLAlchemy Core) with writes that invalidate what they change.

Reads go through `CacheService.get_or_set`, so they get its stampede protection and
fail-open behaviour: while the cache Redis is down every read simply queries the
database. Writes commit first and invalidate afterwards; an invalidation also voids a
fill in flight (the cache's lease), so a reader that loaded the row just before the
commit cannot put the old row back.

Cache keys (inside the service's namespace, default `db`): `user:<id>` and
`company:<id>:projects`. `invalidate_company` asks the database which users belong to
the company, so it finds every entry even if Redis evicted some index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from cache.appcache.core import InvalidCacheArgument, InvalidCacheArgumentType
from cache.appcache.platform import make_engine, projects, users
from cache.appcache.service import CacheService

DEFAULT_NAMESPACE = "db"
USER_TTL_S = 30 * 60  # users change rarely and every write invalidates: half an hour
PROJECTS_TTL_S = 10 * 60  # project lists change more often (also outside this class)
MAX_NAME_LENGTH = 200  # the columns' lengths, so a bad value fails before the database
MAX_EMAIL_LENGTH = 254
MAX_STATUS_LENGTH = 20


def user_key(user_id: int) -> str:
    return f"user:{user_id}"


def company_projects_key(company_id: int) -> str:
    return f"company:{company_id}:projects"


def _timestamp(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True, kw_only=True)
class User:
    id: int
    company_id: int
    email: str
    name: str
    status: str
    created_at: datetime | None
    last_login_at: datetime | None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> User:
        return cls(
            id=row["id"],
            company_id=row["company_id"],
            email=row["email"],
            name=row["name"],
            status=row["status"],
            created_at=_timestamp(row["created_at"]),
            last_login_at=_timestamp(row["last_login_at"]),
        )


@dataclass(frozen=True, kw_only=True)
class Project:
    id: int
    company_id: int
    name: str
    status: str
    created_at: datetime | None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Project:
        return cls(
            id=row["id"],
            company_id=row["company_id"],
            name=row["name"],
            status=row["status"],
            created_at=_timestamp(row["created_at"]),
        )


class CachedDatabase:
    """The platform's hot reads, cached, and the writes that keep them right.

    Args:
        engine: default `make_engine()` (`DATABASE_URL`).
        cache: default `CacheService(namespace="db")` on the CACHE Redis.
    """

    def __init__(self, *, engine: Engine | None = None, cache: CacheService | None = None) -> None:
        self.engine = engine or make_engine()
        self.cache = cache or CacheService(namespace=DEFAULT_NAMESPACE)

    def get_user_by_id(self, user_id: int) -> User | None:
        """The user, or `None` if there is none (cached too, briefly). Cached 30 minutes.

        Raises:
            ValueError, TypeError: `user_id` is not a positive int.
        """
        _check_id("user_id", user_id)
        row = self.cache.get_or_set(user_key(user_id), lambda: self._load_user(user_id), USER_TTL_S)
        return None if row is None else User.from_json(row)

    def get_company_projects(self, company_id: int) -> list[Project]:
        """The company's projects ordered by id. Cached 10 minutes.

        Raises:
            ValueError, TypeError: `company_id` is not a positive int.
        """
        _check_id("company_id", company_id)
        rows = self.cache.get_or_set(
            company_projects_key(company_id), lambda: self._load_projects(company_id), PROJECTS_TTL_S
        )
        return [Project.from_json(row) for row in rows]

    def update_user(
        self, user_id: int, *, name: str | None = None, email: str | None = None, status: str | None = None
    ) -> bool:
        """Change a user's name, email and/or status, then drop the cached user.

        Returns:
            Whether the user existed.

        Raises:
            ValueError, TypeError: no field given, or a field of the wrong shape.
        """
        _check_id("user_id", user_id)
        values: dict[str, str] = {}
        for field, value, limit in (
            ("name", name, MAX_NAME_LENGTH),
            ("email", email, MAX_EMAIL_LENGTH),
            ("status", status, MAX_STATUS_LENGTH),
        ):
            if value is not None:
                values[field] = _check_text(field, value, limit)
        if not values:
            raise InvalidCacheArgument("update_user needs at least one of name, email, status")
        if "email" in values and "@" not in values["email"]:
            raise InvalidCacheArgument(f"email must contain '@', got {values['email']!r}")
        with self.engine.begin() as conn:
            found = conn.execute(update(users).where(users.c.id == user_id).values(**values)).rowcount
        self.cache.delete(user_key(user_id))
        return bool(found)

    def add_project(self, company_id: int, name: str, *, status: str = "active") -> Project:
        """Create a project, then drop the company's cached project list.

        Raises:
            ValueError, TypeError: a field of the wrong shape.
            sqlalchemy.exc.IntegrityError: the company does not exist.
        """
        _check_id("company_id", company_id)
        name = _check_text("name", name, MAX_NAME_LENGTH)
        status = _check_text("status", status, MAX_STATUS_LENGTH)
        created_at = datetime.now(UTC)
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(projects).values(
                    company_id=company_id, name=name, status=status, created_at=created_at
                )
            )
            project_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        self.cache.delete(company_projects_key(company_id))
        return Project(id=project_id, company_id=company_id, name=name, status=status, created_at=created_at)

    def invalidate_company(self, company_id: int) -> None:
        """Drop everything cached for one company (its users and its projects) in one step."""
        _check_id("company_id", company_id)
        with self.engine.connect() as conn:
            user_ids: list[int] = list(
                conn.execute(select(users.c.id).where(users.c.company_id == company_id)).scalars()
            )
        names = [company_projects_key(company_id), *(user_key(uid) for uid in user_ids)]
        self.cache.delete_many(names)

    def _load_user(self, user_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.id == user_id)).mappings().first()
        return None if row is None else _plain(row)

    def _load_projects(self, company_id: int) -> list[dict[str, Any]]:
        query = select(projects).where(projects.c.company_id == company_id).order_by(projects.c.id)
        with self.engine.connect() as conn:
            return [_plain(row) for row in conn.execute(query).mappings()]


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    # Column names are `quoted_name`, a str subclass that orjson refuses as a dict key.
    return {str(name): value for name, value in row.items()}


def _check_id(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidCacheArgumentType(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise InvalidCacheArgument(f"{name} must be positive, got {value}")


def _check_text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidCacheArgumentType(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip() or len(value) > limit:
        raise InvalidCacheArgument(f"{name} must be 1 to {limit} characters and not blank, got {len(value)}")
    return value
