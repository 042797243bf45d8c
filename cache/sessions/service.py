"""Server-side sessions on the PRIMARY Redis: secure ids, idle and absolute expiry, rotation.

The Redis shell; ids, deadlines and the record's encoding live in `cache.sessions.core`,
the checks and script calls it shares with `AsyncSessionService` in `cache.sessions.calls`.

A session is one hash `session:{sessions}:<id>` holding its user id, created-at, last-seen, idle
TTL, absolute deadline and one field per data item (`d:<name>`, JSON), so concurrent
updates of different items never overwrite each other. A per-user sorted set of ids
scored by absolute deadline backs "log out everywhere", and two more (by the IdP's
`sid` and `sub`) back OIDC back-channel logout; Lua keeps hash and indexes consistent.
Ids are checked for shape before Redis is touched, and every Redis error becomes
`SessionStoreUnavailable`: the service fails closed, never open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache, wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis import Redis

from cache import connections, keys
from cache.lua import LuaScript, script
from cache.retry import bounded_call
from cache.sessions.calls import (
    OWNER_FIELDS,
    SCRIPT_NAMES,
    Owner,
    SessionCalls,
    fail_closed,
    idp_session_index,
    idp_subject_index,
    user_index,
)
from cache.sessions.core import (
    BATCH_SIZE,
    DEFAULT_ABSOLUTE_TTL_S,
    DEFAULT_IDLE_TTL_S,
    MAX_DESTROY_ROUNDS,
    MAX_ID_ATTEMPTS,
    InvalidSessionArgument,
    Session,
    SessionError,
    SessionStoreUnavailable,
    as_text,
    check_user_id,
    encode_data,
    is_well_formed_id,
    new_session_id,
)

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


# --- I/O shell ---------------------------------------------------------------------------


class SessionService(SessionCalls):
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
        super().__init__(
            idle_ttl_s=idle_ttl_s,
            absolute_ttl_s=absolute_ttl_s,
            slide_on_get=slide_on_get,
            max_data_bytes=max_data_bytes,
            clock=clock,
        )
        self.client = client if client is not None else connections.primary()
        self._scripts: dict[str, LuaScript] = {n: script(self.client, f"session_{n}") for n in SCRIPT_NAMES}

    @_one_deadline
    def create(
        self,
        user_id: str | int,
        data: Mapping[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        absolute_ttl_s: float | None = None,
        idp_sid: str | None = None,
        idp_sub: str | None = None,
    ) -> str:
        """Start a session for `user_id` and return its new id (put it in the cookie).

        Args:
            user_id: whose session; also keys the per-user index.
            data: JSON-serialisable items, each stored as its own field.
            ttl_s: idle timeout (default: the service's, 24 h).
            absolute_ttl_s: lifetime in seconds that no activity extends (default: 7 days).
            idp_sid, idp_sub: the IdP's `sid` and `sub` of this login (from the ID token),
                so a back-channel logout finds the session; kept by `rotate`.

        Raises:
            InvalidSessionArgument: bad user id, IdP value, TTL or data; nothing was written.
            SessionStoreUnavailable: Redis is unreachable; the caller gets no id.
        """
        plan = self._plan_create(
            user_id, data, ttl_s=ttl_s, absolute_ttl_s=absolute_ttl_s, idp_sid=idp_sid, idp_sub=idp_sub
        )
        for _ in range(MAX_ID_ATTEMPTS):
            session_id = new_session_id()
            script_keys, args = plan.call(session_id)
            with fail_closed(action="create a session"):
                created = self._scripts["create"](keys=script_keys, args=args)
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
        raw = self._touch("read a session", self._touch_call(session_id, slide=slide, fetch=True))
        return self._read_session(session_id, raw)

    @_one_deadline
    def refresh(self, session_id: object) -> bool:
        """Slide the idle timeout (never past the absolute deadline); False when there is no session.

        Raises:
            SessionStoreUnavailable: Redis is unreachable.
        """
        if not is_well_formed_id(session_id):
            return False
        return bool(self._touch("refresh a session", self._touch_call(session_id, slide=True)) == 1)

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
        pairs, removed = self._check_update(changes, remove)
        if not is_well_formed_id(session_id):
            return False
        call = self._touch_call(session_id, slide=True, pairs=pairs, removed=removed)
        return bool(self._touch("update a session", call) == 1)

    def _touch(self, action: str, call: tuple[list[str], list[Any]]) -> Any:
        with fail_closed(action=action):
            return self._touched(self._scripts["touch"](keys=call[0], args=call[1]))

    def _owner(self, session_id: str, action: str) -> Owner | None:
        with fail_closed(action=action):
            return Owner.read(self.client.hmget(keys.session(session_id), OWNER_FIELDS))

    @_one_deadline
    def rotate(self, session_id: object, *, changes: Mapping[str, Any] | None = None) -> str | None:
        """Give a live session a new id, atomically destroying the old one (against fixation).

        Call on login and on every privilege change, and send the new id in the cookie.
        Data, user, IdP `sid`/`sub`, created-at and the absolute deadline carry over;
        `changes` are applied in the same step (e.g. a new role).

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
        owner = self._owner(session_id, "rotate a session")
        if owner is None:
            return None
        for _ in range(MAX_ID_ATTEMPTS):
            new_id = new_session_id()
            script_keys, args = self._rotate_call(session_id, new_id, owner, pairs)
            with fail_closed(action="rotate a session"):
                result = self._rotated(self._scripts["rotate"](keys=script_keys, args=args), new_id)
            if result != "":
                return result
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    @_one_deadline
    def destroy(self, session_id: object) -> bool:
        """End one session (logout); True when a live session was destroyed.

        Raises:
            SessionStoreUnavailable: Redis is unreachable; the session may still exist.
        """
        if not is_well_formed_id(session_id):
            return False
        owner = self._owner(session_id, "destroy a session")
        if owner is None:
            return False
        script_keys, args = self._destroy_call(owner.index_keys()[0], [(session_id, owner)])
        with fail_closed(action="destroy a session"):
            count, _ = self._scripts["destroy_many"](keys=script_keys, args=args)
        return bool(int(count) == 1)

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
        with fail_closed(action="list a user's sessions"):
            ids = [as_text(i) for i in self.client.zrangebyscore(index, f"({now}", "+inf")]
            for start in range(0, len(ids), BATCH_SIZE):
                script_keys, args = self._list_call(uid, now, ids[start : start + BATCH_SIZE])
                sessions += self._listed(self._scripts["list"](keys=script_keys, args=args))
        return sorted(sessions, key=lambda s: s.created_at)

    def destroy_all_for_user(self, user_id: str | int) -> int:
        """Log the user out everywhere; returns how many live sessions were destroyed.

        Repeats until the index is empty, so a session created meanwhile is caught too.

        Raises:
            InvalidSessionArgument: bad user id.
            SessionStoreUnavailable: Redis is unreachable; some sessions may survive.
        """
        return self._destroy_index(user_index(user_id), "log a user out everywhere")

    def logout_by_idp_session(self, idp_sid: str) -> int:
        """Destroy every session signed in through the IdP session `idp_sid` (OIDC `sid`).

        Returns how many live sessions were destroyed. Raises as `destroy_all_for_user`.
        """
        return self._destroy_index(idp_session_index(idp_sid), "log out an IdP session")

    def logout_by_subject(self, idp_sub: str) -> int:
        """Destroy every session of the IdP subject `idp_sub` (OIDC `sub`), whatever its IdP session.

        Returns how many live sessions were destroyed. Raises as `destroy_all_for_user`.
        """
        return self._destroy_index(idp_subject_index(idp_sub), "log out an IdP subject")

    def _destroy_index(self, index: str, action: str) -> int:
        destroyed = 0
        with fail_closed(action=action):
            for _ in range(MAX_DESTROY_ROUNDS):
                batch = [as_text(i) for i in self.client.zrange(index, 0, BATCH_SIZE - 1)]
                if not batch:
                    return destroyed
                pipe = self.client.pipeline(transaction=False)
                for session_id in batch:
                    pipe.hmget(keys.session(session_id), OWNER_FIELDS)
                owners = [Owner.read(raw) for raw in pipe.execute()]
                script_keys, args = self._destroy_call(index, zip(batch, owners, strict=True))
                count, remaining = self._scripts["destroy_many"](keys=script_keys, args=args)
                destroyed += int(count)
                if int(remaining) == 0:
                    return destroyed
        raise SessionError(f"sessions kept appearing; gave up after {MAX_DESTROY_ROUNDS} rounds")
