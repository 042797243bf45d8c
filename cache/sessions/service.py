"""Server-side sessions on the PRIMARY Redis: secure ids, idle and absolute expiry, rotation.

The Redis shell; ids, deadlines and the record's encoding live in `cache.sessions.core`.

A session is one hash `session:<id>` holding its user id, created-at, last-seen, idle
TTL, absolute deadline and one field per data item (`d:<name>`, JSON), so concurrent
updates of different items never overwrite each other. A per-user sorted set of ids
scored by absolute deadline backs "log out everywhere"; Lua keeps hash and index
consistent. Ids are checked for shape before Redis is touched, and every Redis error
becomes `SessionStoreUnavailable`: the service fails closed, never open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache, partial, wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis import Redis

from cache import connections, keys
from cache.lua import LuaScript, script
from cache.retry import bounded_call
from cache.sessions.core import (
    BATCH_SIZE,
    DATA_PREFIX,
    DEFAULT_ABSOLUTE_TTL_S,
    DEFAULT_IDLE_TTL_S,
    MAX_DESTROY_ROUNDS,
    MAX_FIELDS,
    MAX_ID_ATTEMPTS,
    InvalidSessionArgument,
    Session,
    SessionError,
    SessionStoreUnavailable,
    as_text,
    check_field_name,
    check_user_id,
    decode_session,
    encode_data,
    is_well_formed_id,
    new_session_id,
    pairs_to_dict,
    plan_deadlines,
)
from cache.settings import get_settings

__all__ = [
    "DEFAULT_ABSOLUTE_TTL_S",
    "DEFAULT_IDLE_TTL_S",
    "InvalidSessionArgument",
    "Session",
    "SessionError",
    "SessionService",
    "SessionStoreUnavailable",
    "new_session_id",
]


P = ParamSpec("P")
R = TypeVar("R")


@cache
def _one_deadline(
    method: Callable[Concatenate[SessionService, P], R],
) -> Callable[Concatenate[SessionService, P], R]:
    """All round trips of one call share the client's deadline (REDIS_CALL_TIMEOUT)."""

    @wraps(method)
    def bounded(service: SessionService, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with bounded_call(service.client):
            return method(service, *args, **kwargs)

    return bounded


# Every Redis error becomes SessionStoreUnavailable naming the setting: no session is ever assumed.
_fail_closed = partial(
    connections.translate_errors,
    connections.Role.PRIMARY,
    error_class=SessionStoreUnavailable,
    all_errors=True,
)


# --- I/O shell ---------------------------------------------------------------------------


class SessionService:
    """Server-side sessions; docs/sessions.md has the key layout and security properties.

    Args:
        client: a PRIMARY client (never the evicting cache); defaults to `connections.primary()`.
        idle_ttl_s: default idle timeout of new sessions.
        absolute_ttl_s: default absolute timeout of new sessions, counted from creation.
        slide_on_get: whether `get` slides the idle timeout by default.
        max_data_bytes: most encoded bytes of data (item names plus JSON values) a
            session may hold; by default `SESSION_MAX_BYTES` (64 KiB).
        clock: seconds since the epoch; injectable so tests need not sleep.
    """

    def __init__(
        self,
        client: Redis | None = None,
        *,
        idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
        absolute_ttl_s: float = DEFAULT_ABSOLUTE_TTL_S,
        slide_on_get: bool = True,
        max_data_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        plan_deadlines(0, idle_ttl_s, absolute_ttl_s)  # reject bad defaults now, not at first login
        if max_data_bytes is None:
            max_data_bytes = get_settings().session_max_bytes
        if isinstance(max_data_bytes, bool) or not isinstance(max_data_bytes, int) or max_data_bytes < 1:
            raise InvalidSessionArgument(f"max_data_bytes must be a positive int, got {max_data_bytes!r}")
        self.max_data_bytes = max_data_bytes
        self.client = client if client is not None else connections.primary()
        self.idle_ttl_s = idle_ttl_s
        self.absolute_ttl_s = absolute_ttl_s
        self.slide_on_get = slide_on_get
        self._clock = clock
        names = ("create", "touch", "rotate", "destroy", "list", "destroy_many")
        self._scripts: dict[str, LuaScript] = {n: script(self.client, f"session_{n}") for n in names}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @_one_deadline
    def create(
        self,
        user_id: str | int,
        data: Mapping[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        absolute_ttl_s: float | None = None,
    ) -> str:
        """Start a session for `user_id` and return its new id (put it in the cookie).

        Args:
            user_id: whose session; also keys the per-user index.
            data: JSON-serialisable items, each stored as its own field.
            ttl_s: idle timeout (default: the service's, 24 h).
            absolute_ttl_s: lifetime in seconds that no activity extends (default: 7 days).

        Raises:
            InvalidSessionArgument: bad user id, TTL or data; nothing was written.
            SessionStoreUnavailable: Redis is unreachable; the caller gets no id.
        """
        uid = check_user_id(user_id)
        pairs = encode_data(data or {}, max_bytes=self.max_data_bytes)
        now = self._now_ms()
        plan = plan_deadlines(
            now,
            self.idle_ttl_s if ttl_s is None else ttl_s,
            self.absolute_ttl_s if absolute_ttl_s is None else absolute_ttl_s,
        )
        meta: list[str | int] = ["uid", uid, "created", now, "seen", now]
        meta += ["idle", plan.idle_ttl_ms, "abs", plan.absolute_deadline_ms]
        for _ in range(MAX_ID_ATTEMPTS):
            session_id = new_session_id()
            with _fail_closed(action="create a session"):
                created = self._scripts["create"](
                    keys=[keys.session(session_id), keys.user_sessions(uid)],
                    args=[session_id, now, plan.absolute_deadline_ms, plan.key_ttl_ms, *meta, *pairs],
                )
            if created == 1:
                return session_id
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    @_one_deadline
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
        return decode_session(session_id, pairs_to_dict(raw)) if isinstance(raw, list) else None

    @_one_deadline
    def refresh(self, session_id: object) -> bool:
        """Slide the idle timeout (never past the absolute deadline); False when there is no session.

        Raises:
            SessionStoreUnavailable: Redis is unreachable.
        """
        if not is_well_formed_id(session_id):
            return False
        return bool(self._touch(session_id, "refresh a session", slide=True) == 1)

    @_one_deadline
    def update(self, session_id: object, changes: Mapping[str, Any], *, remove: Iterable[str] = ()) -> bool:
        """Set `changes` and delete `remove` items in one atomic step; counts as activity.

        Only the named items are written, so concurrent updates of different items all survive.

        Returns:
            False when there is no live session (nothing was written).

        Raises:
            InvalidSessionArgument: bad data, an item both set and removed, or data that
                would be over `max_data_bytes` with these changes; nothing was written.
            SessionStoreUnavailable: Redis is unreachable.
        """
        pairs = encode_data(changes, max_bytes=self.max_data_bytes)
        if isinstance(remove, str | bytes):
            raise InvalidSessionArgument(f"remove must be a collection of item names, got {remove!r}")
        removed = [check_field_name(name) for name in remove]
        both = set(removed) & {str(name) for name in pairs[::2]}
        if both:
            names = sorted(n[len(DATA_PREFIX) :] for n in both)
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
        head: list[str | bytes | int] = [self._now_ms(), int(slide), int(fetch), len(pairs) // 2]
        args = [*head, self.max_data_bytes, *pairs, *(removed or [])]
        with _fail_closed(action=action):
            result = self._scripts["touch"](keys=[keys.session(session_id)], args=args)
        if result == -2:
            raise self._too_large()
        return result

    def _too_large(self) -> InvalidSessionArgument:
        return InvalidSessionArgument(
            f"session data would be over {self.max_data_bytes} bytes encoded (SESSION_MAX_BYTES) "
            "with these changes; nothing was written"
        )

    @_one_deadline
    def rotate(self, session_id: object, *, changes: Mapping[str, Any] | None = None) -> str | None:
        """Give a live session a new id, atomically destroying the old one (against fixation).

        Call on login and on every privilege change, and send the new id in the cookie.
        Data, user, created-at and the absolute deadline carry over; `changes` are applied
        in the same step (e.g. a new role).

        Returns:
            The new id, or None when there is no live session under `session_id`.

        Raises:
            InvalidSessionArgument: bad `changes`, or data that would be over
                `max_data_bytes` with them; nothing was written and the old id still works.
            SessionStoreUnavailable: Redis is unreachable; the old id may still be valid.
        """
        pairs = encode_data(changes or {}, max_bytes=self.max_data_bytes)
        if not is_well_formed_id(session_id):
            return None
        with _fail_closed(action="rotate a session"):
            uid = self.client.hget(keys.session(session_id), "uid")
        if uid is None:
            return None
        user_id = as_text(uid)
        for _ in range(MAX_ID_ATTEMPTS):
            new_id = new_session_id()
            with _fail_closed(action="rotate a session"):
                result = self._scripts["rotate"](
                    keys=[keys.session(session_id), keys.session(new_id), keys.user_sessions(user_id)],
                    args=[session_id, new_id, user_id, self._now_ms(), self.max_data_bytes, *pairs],
                )
            if result == -2:
                raise self._too_large()
            if result != -1:
                return new_id if result == 1 else None
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    @_one_deadline
    def destroy(self, session_id: object) -> bool:
        """End one session (logout); True when a live session was destroyed.

        Raises:
            SessionStoreUnavailable: Redis is unreachable; the session may still exist.
        """
        if not is_well_formed_id(session_id):
            return False
        with _fail_closed(action="destroy a session"):
            uid = self.client.hget(keys.session(session_id), "uid")
            if uid is None:
                return False
            user_id = as_text(uid)
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
        with _fail_closed(action="list a user's sessions"):
            ids = [as_text(i) for i in self.client.zrangebyscore(index, f"({now}", "+inf")]
            for start in range(0, len(ids), BATCH_SIZE):
                batch = ids[start : start + BATCH_SIZE]
                flat = self._scripts["list"](
                    keys=[index, *(keys.session(i) for i in batch)], args=[now, uid, *batch]
                )
                for sid, raw in pairs_to_dict(flat).items():
                    session = decode_session(as_text(sid), pairs_to_dict(raw))
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
        with _fail_closed(action="log a user out everywhere"):
            for _ in range(MAX_DESTROY_ROUNDS):
                batch = [as_text(i) for i in self.client.zrange(index, 0, BATCH_SIZE - 1)]
                if not batch:
                    return destroyed
                count, remaining = self._scripts["destroy_many"](
                    keys=[index, *(keys.session(i) for i in batch)], args=[self._now_ms(), uid, *batch]
                )
                destroyed += int(count)
                if int(remaining) == 0:
                    return destroyed
        raise SessionError(f"user sessions kept appearing; gave up after {MAX_DESTROY_ROUNDS} rounds")
