"""Server-side sessions on the PRIMARY Redis: secure ids, idle and absolute expiry, rotation.

A session is one hash `session:<id>` holding its user id, created-at, last-seen, idle
TTL, absolute deadline and one field per data item (`d:<name>`, JSON), so concurrent
updates of different items never overwrite each other. A per-user sorted set of ids
scored by absolute deadline backs "log out everywhere"; Lua keeps hash and index
consistent. Ids are checked for shape before Redis is touched, and every Redis error
becomes `SessionStoreUnavailable`: the service fails closed, never open.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, TypeGuard

import orjson
from redis import AuthenticationError, Redis, RedisError
from redis.commands.core import Script
from redis.exceptions import AuthorizationError

from cache import connections, keys
from cache.errors import KryonixError, RedisUnavailable

logger = logging.getLogger(__name__)

SESSION_ID_BYTES = 32  # 256 bits from `secrets`: unguessable, as OWASP asks (>= 64 bits)
DEFAULT_IDLE_TTL_S = 86_400  # 24 h without a request and the session is gone
DEFAULT_ABSOLUTE_TTL_S = 7 * 86_400  # a week after login the user signs in again, however active
MAX_TTL_S = 366 * 86_400  # a longer session is a bug, and keeps deadlines far from float limits
MAX_USER_ID_LENGTH = 256  # user ids become part of a key name
MAX_FIELD_NAME_LENGTH = 256
MAX_FIELDS = 1_000  # bounds the Lua argument lists
BATCH_SIZE = 500  # sessions per script call in list/destroy-all: keeps each call short
MAX_ID_ATTEMPTS = 3  # a 256-bit collision is impossible in practice; bounded all the same
MAX_DESTROY_ROUNDS = 100_000  # 50 M sessions of one user; only reached if creation never stops

# token_urlsafe(32): 43 base64url characters; the last one carries 4 bits plus 2 zero
# bits, so only 16 letters can end a genuine id. Anything else was not made by us.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_ID_LENGTH = 43
_DATA_PREFIX = "d:"
_META_FIELDS = ("uid", "created", "seen", "idle", "abs")


class SessionError(KryonixError):
    """Base of the session service's own errors."""


class InvalidSessionArgument(SessionError, ValueError):
    """A caller passed a user id, TTL or data item the service will not store."""


class SessionStoreUnavailable(RedisUnavailable):
    """The PRIMARY Redis could not be reached or refused the operation: fail closed."""


@dataclass(frozen=True, kw_only=True)
class Session:
    """One live session; times are seconds on the service clock."""

    id: str = field(repr=False)  # a bearer secret: never in logs or reprs
    user_id: str
    data: dict[str, Any]
    created_at: float
    last_seen: float
    idle_ttl_s: float
    absolute_expires_at: float

    @property
    def expires_at(self) -> float:
        """When the session ends unless a request slides the idle timeout."""
        return min(self.last_seen + self.idle_ttl_s, self.absolute_expires_at)


# --- pure core ---------------------------------------------------------------------------


def new_session_id() -> str:
    """A fresh 256-bit URL-safe id from the OS CSPRNG."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def is_well_formed_id(value: object) -> TypeGuard[str]:
    """Whether `value` has the exact shape of an id `new_session_id` makes.

    Checked before any Redis call, so garbage, tampered or oversized ids cost nothing
    and never reach a key name.
    """
    return isinstance(value, str) and len(value) == _ID_LENGTH and _ID_PATTERN.fullmatch(value) is not None


def ttl_ms(name: str, value: object) -> int:
    """A TTL in seconds, checked, as whole milliseconds.

    Raises:
        InvalidSessionArgument: not a finite number in (0, MAX_TTL_S]; the message names `name`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSessionArgument(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= MAX_TTL_S:
        raise InvalidSessionArgument(f"{name} must be > 0 and <= {MAX_TTL_S} seconds, got {value!r}")
    return max(1, round(value * 1000))


@dataclass(frozen=True)
class Deadlines:
    """What `create` stores: the idle TTL, the absolute deadline and the key's first TTL (ms)."""

    idle_ttl_ms: int
    absolute_deadline_ms: int
    key_ttl_ms: int


def plan_deadlines(now_ms: int, ttl_s: object, absolute_ttl_s: object) -> Deadlines:
    """Deadlines of a session created at `now_ms`.

    Raises:
        InvalidSessionArgument: a TTL is out of range, or the absolute TTL is shorter than
            the idle one (which would make the idle timeout meaningless).
    """
    idle = ttl_ms("ttl", ttl_s)
    absolute = ttl_ms("absolute_ttl", absolute_ttl_s)
    if absolute < idle:
        raise InvalidSessionArgument(
            f"absolute_ttl ({absolute_ttl_s} s) must not be shorter than ttl ({ttl_s} s): "
            "no activity extends a session past its absolute timeout"
        )
    deadline = now_ms + absolute
    return Deadlines(idle, deadline, expires_at_ms(now_ms, idle, deadline) - now_ms)


def expires_at_ms(last_seen_ms: int, idle_ttl_ms: int, absolute_deadline_ms: int) -> int:
    """A session lives until its idle or its absolute deadline, whichever comes first."""
    return min(last_seen_ms + idle_ttl_ms, absolute_deadline_ms)


def is_expired(now_ms: int, last_seen_ms: int, idle_ttl_ms: int, absolute_deadline_ms: int) -> bool:
    """Whether a session with these stored values is dead at `now_ms` (Lua applies the same rule)."""
    return now_ms >= expires_at_ms(last_seen_ms, idle_ttl_ms, absolute_deadline_ms)


def check_user_id(user_id: object) -> str:
    """The user id as the string stored and used in the index key name.

    Raises:
        InvalidSessionArgument: not a non-empty string (or int) without control characters.
    """
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise InvalidSessionArgument(f"user_id must be a non-empty string or an int, got {user_id!r}")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidSessionArgument(f"user_id is longer than {MAX_USER_ID_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in user_id):
        raise InvalidSessionArgument(f"user_id must not contain control characters, got {user_id!r}")
    return user_id


def _field_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_FIELD_NAME_LENGTH:
        raise InvalidSessionArgument(
            f"session data keys must be non-empty strings of at most {MAX_FIELD_NAME_LENGTH} "
            f"characters, got {name!r}"
        )
    return _DATA_PREFIX + name


def encode_data(data: Mapping[str, Any]) -> list[str | bytes]:
    """Session data as flat hash field, JSON value pairs.

    Raises:
        InvalidSessionArgument: not a mapping, too many items, a bad key, or a value JSON cannot hold.
    """
    if not isinstance(data, Mapping):
        raise InvalidSessionArgument(f"session data must be a mapping, got {type(data).__name__}")
    if len(data) > MAX_FIELDS:
        raise InvalidSessionArgument(f"session data has {len(data)} items; at most {MAX_FIELDS} allowed")
    pairs: list[str | bytes] = []
    for name, value in data.items():
        hash_field = _field_name(name)
        try:
            encoded = orjson.dumps(value)
        except TypeError as exc:
            raise InvalidSessionArgument(f"session data {name!r} is not JSON-serialisable: {exc}") from None
        pairs += [hash_field, encoded]
    return pairs


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_session(session_id: str, raw: Mapping[Any, Any]) -> Session | None:
    """A `Session` from its hash, or None when the record is not one of ours."""
    fields = {_text(k): v for k, v in raw.items()}
    try:
        meta = {name: _text(fields[name]) for name in _META_FIELDS}
        data = {
            k[len(_DATA_PREFIX) :]: orjson.loads(v) for k, v in fields.items() if k.startswith(_DATA_PREFIX)
        }
        created, seen, idle, absolute = (int(meta[n]) for n in _META_FIELDS[1:])
    except (KeyError, ValueError):
        logger.warning("a session record is malformed; treated as no session")
        return None
    return Session(
        id=session_id,
        user_id=meta["uid"],
        data=data,
        created_at=created / 1000,
        last_seen=seen / 1000,
        idle_ttl_s=idle / 1000,
        absolute_expires_at=absolute / 1000,
    )


def _pairs_to_dict(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@cache
def _lua(name: str) -> str:
    return (resources.files("cache") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@contextmanager
def _failing_closed(action: str) -> Iterator[None]:
    """Every Redis error becomes SessionStoreUnavailable: no session is ever assumed."""
    try:
        yield
    except RedisError as exc:
        auth = isinstance(exc, AuthenticationError | AuthorizationError)
        setting = "REDIS_PASSWORD" if auth else "REDIS_URL"
        raise SessionStoreUnavailable(
            f"session store unavailable: could not {action} on the primary Redis (check {setting}): "
            f"{type(exc).__name__}: {exc}. Failing closed: treat the request as not logged in.",
            role=connections.Role.PRIMARY.value,
            setting=setting,
        ) from exc


# --- I/O shell ---------------------------------------------------------------------------


class SessionService:
    """Server-side sessions; the README ("Server-side sessions") has the key layout and security properties.

    Args:
        redis: a PRIMARY client (never the evicting cache); defaults to `connections.primary()`.
        idle_ttl_s: default idle timeout of new sessions.
        absolute_ttl_s: default absolute timeout of new sessions, counted from creation.
        slide_on_get: whether `get` slides the idle timeout by default.
        clock: seconds since the epoch; injectable so tests need not sleep.
    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
        absolute_ttl_s: float = DEFAULT_ABSOLUTE_TTL_S,
        slide_on_get: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        plan_deadlines(0, idle_ttl_s, absolute_ttl_s)  # reject bad defaults now, not at first login
        self.redis = redis if redis is not None else connections.primary()
        self.idle_ttl_s = idle_ttl_s
        self.absolute_ttl_s = absolute_ttl_s
        self.slide_on_get = slide_on_get
        self._clock = clock
        names = ("create", "touch", "rotate", "destroy", "list", "destroy_many")
        self._scripts: dict[str, Script] = {
            n: self.redis.register_script(_lua(f"session_{n}")) for n in names
        }

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def create(
        self,
        user_id: str | int,
        data: Mapping[str, Any] | None = None,
        *,
        ttl: float | None = None,
        absolute_ttl: float | None = None,
    ) -> str:
        """Start a session for `user_id` and return its new id (put it in the cookie).

        Args:
            user_id: whose session; also keys the per-user index.
            data: JSON-serialisable items, each stored as its own field.
            ttl: idle timeout in seconds (default: the service's, 24 h).
            absolute_ttl: lifetime in seconds that no activity extends (default: 7 days).

        Raises:
            InvalidSessionArgument: bad user id, TTL or data; nothing was written.
            SessionStoreUnavailable: Redis is unreachable; the caller gets no id.
        """
        uid = check_user_id(user_id)
        pairs = encode_data(data or {})
        now = self._now_ms()
        plan = plan_deadlines(
            now,
            self.idle_ttl_s if ttl is None else ttl,
            self.absolute_ttl_s if absolute_ttl is None else absolute_ttl,
        )
        meta: list[str | int] = ["uid", uid, "created", now, "seen", now]
        meta += ["idle", plan.idle_ttl_ms, "abs", plan.absolute_deadline_ms]
        for _ in range(MAX_ID_ATTEMPTS):
            session_id = new_session_id()
            with _failing_closed("create a session"):
                created = self._scripts["create"](
                    keys=[keys.session(session_id), keys.user_sessions(uid)],
                    args=[session_id, now, plan.absolute_deadline_ms, plan.key_ttl_ms, *meta, *pairs],
                )
            if created == 1:
                return session_id
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    def get(self, session_id: object, *, touch: bool | None = None) -> Session | None:
        """The live session for `session_id`, or None: malformed, unknown or expired ids alike.

        Args:
            session_id: the id from the cookie, untrusted; checked before Redis is touched.
            touch: slide the idle timeout (default: the service's `slide_on_get`).

        Raises:
            SessionStoreUnavailable: Redis is unreachable; never read as "logged out" or "in".
        """
        if not is_well_formed_id(session_id):
            return None
        slide = self.slide_on_get if touch is None else touch
        raw = self._touch(session_id, "read a session", slide=slide, fetch=True)
        return decode_session(session_id, _pairs_to_dict(raw)) if isinstance(raw, list) else None

    def refresh(self, session_id: object) -> bool:
        """Slide the idle timeout (never past the absolute deadline); False when there is no session.

        Raises:
            SessionStoreUnavailable: Redis is unreachable.
        """
        if not is_well_formed_id(session_id):
            return False
        return bool(self._touch(session_id, "refresh a session", slide=True) == 1)

    def update(self, session_id: object, changes: Mapping[str, Any], *, remove: Iterable[str] = ()) -> bool:
        """Set `changes` and delete `remove` items in one atomic step; counts as activity.

        Only the named items are written, so concurrent updates of different items all survive.

        Returns:
            False when there is no live session (nothing was written).

        Raises:
            InvalidSessionArgument: bad data, or an item both set and removed.
            SessionStoreUnavailable: Redis is unreachable.
        """
        pairs = encode_data(changes)
        if isinstance(remove, str | bytes):
            raise InvalidSessionArgument(f"remove must be a collection of item names, got {remove!r}")
        removed = [_field_name(name) for name in remove]
        both = set(removed) & {str(name) for name in pairs[::2]}
        if both:
            names = sorted(n[len(_DATA_PREFIX) :] for n in both)
            raise InvalidSessionArgument(f"session data items both set and removed: {names}")
        if len(removed) > MAX_FIELDS:
            raise InvalidSessionArgument(f"at most {MAX_FIELDS} session data items can be removed at once")
        if not is_well_formed_id(session_id):
            return False
        result = self._touch(session_id, "update a session", slide=True, pairs=pairs, removed=removed)
        return bool(result == 1)

    def _touch(
        self,
        session_id: str,
        action: str,
        *,
        slide: bool,
        fetch: bool = False,
        pairs: list[str | bytes] | None = None,
        removed: list[str] | None = None,
    ) -> Any:
        pairs = pairs or []
        args = [self._now_ms(), int(slide), int(fetch), len(pairs) // 2, *pairs, *(removed or [])]
        with _failing_closed(action):
            return self._scripts["touch"](keys=[keys.session(session_id)], args=args)

    def rotate(self, session_id: object, *, changes: Mapping[str, Any] | None = None) -> str | None:
        """Give a live session a new id, atomically destroying the old one (against fixation).

        Call on login and on every privilege change, and send the new id in the cookie.
        Data, user, created-at and the absolute deadline carry over; `changes` are applied
        in the same step (e.g. a new role).

        Returns:
            The new id, or None when there is no live session under `session_id`.

        Raises:
            InvalidSessionArgument: bad `changes`.
            SessionStoreUnavailable: Redis is unreachable; the old id may still be valid.
        """
        pairs = encode_data(changes or {})
        if not is_well_formed_id(session_id):
            return None
        with _failing_closed("rotate a session"):
            uid = self.redis.hget(keys.session(session_id), "uid")
        if uid is None:
            return None
        user_id = _text(uid)
        for _ in range(MAX_ID_ATTEMPTS):
            new_id = new_session_id()
            with _failing_closed("rotate a session"):
                result = self._scripts["rotate"](
                    keys=[keys.session(session_id), keys.session(new_id), keys.user_sessions(user_id)],
                    args=[session_id, new_id, user_id, self._now_ms(), *pairs],
                )
            if result != -1:
                return new_id if result == 1 else None
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    def destroy(self, session_id: object) -> bool:
        """End one session (logout); True when a live session was destroyed.

        Raises:
            SessionStoreUnavailable: Redis is unreachable; the session may still exist.
        """
        if not is_well_formed_id(session_id):
            return False
        with _failing_closed("destroy a session"):
            uid = self.redis.hget(keys.session(session_id), "uid")
            if uid is None:
                return False
            user_id = _text(uid)
            result = self._scripts["destroy"](
                keys=[keys.session(session_id), keys.user_sessions(user_id)],
                args=[session_id, user_id, self._now_ms()],
            )
        return bool(result == 1)

    def list_for_user(self, user_id: str | int) -> list[Session]:
        """The user's live sessions, oldest first; dead ids are pruned from the index on the way.

        Raises:
            InvalidSessionArgument: bad user id.
            SessionStoreUnavailable: Redis is unreachable.
        """
        uid = check_user_id(user_id)
        index = keys.user_sessions(uid)
        now = self._now_ms()
        sessions: list[Session] = []
        with _failing_closed("list a user's sessions"):
            ids = [_text(i) for i in self.redis.zrangebyscore(index, f"({now}", "+inf")]
            for start in range(0, len(ids), BATCH_SIZE):
                batch = ids[start : start + BATCH_SIZE]
                flat = self._scripts["list"](
                    keys=[index, *(keys.session(i) for i in batch)], args=[now, uid, *batch]
                )
                for sid, raw in _pairs_to_dict(flat).items():
                    session = decode_session(_text(sid), _pairs_to_dict(raw))
                    if session is not None:
                        sessions.append(session)
        return sorted(sessions, key=lambda s: s.created_at)

    def destroy_all_for_user(self, user_id: str | int) -> int:
        """Log the user out everywhere; returns how many live sessions were destroyed.

        Repeats until the index is empty, so a session created meanwhile is caught too.

        Raises:
            InvalidSessionArgument: bad user id.
            SessionStoreUnavailable: Redis is unreachable; some sessions may survive.
        """
        uid = check_user_id(user_id)
        index = keys.user_sessions(uid)
        destroyed = 0
        with _failing_closed("log a user out everywhere"):
            for _ in range(MAX_DESTROY_ROUNDS):
                batch = [_text(i) for i in self.redis.zrange(index, 0, BATCH_SIZE - 1)]
                if not batch:
                    return destroyed
                count, remaining = self._scripts["destroy_many"](
                    keys=[index, *(keys.session(i) for i in batch)], args=[self._now_ms(), uid, *batch]
                )
                destroyed += int(count)
                if int(remaining) == 0:
                    return destroyed
        raise SessionError(f"user sessions kept appearing; gave up after {MAX_DESTROY_ROUNDS} rounds")
