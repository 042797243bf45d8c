"""What each session call sends to Redis and how its reply reads, without I/O.

`SessionService` (redis-py) and `AsyncSessionService` (redis.asyncio) both inherit
`SessionCalls`, so argument checks, script keys and arguments, and reply handling exist
once; the two services only send the commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cache import connections, keys
from cache.sessions.core import (
    DATA_PREFIX,
    DEFAULT_ABSOLUTE_TTL_S,
    DEFAULT_IDLE_TTL_S,
    IDP_FIELDS,
    MAX_FIELDS,
    InvalidSessionArgument,
    Session,
    SessionStoreUnavailable,
    as_text,
    check_field_name,
    check_idp_value,
    check_user_id,
    decode_session,
    encode_data,
    pairs_to_dict,
    plan_deadlines,
)
from cache.settings import get_settings

SCRIPT_NAMES = ("create", "touch", "rotate", "list", "destroy_many")
OWNER_FIELDS = ("uid", *IDP_FIELDS)  # what a caller reads (HMGET) to name a session's index keys

Call = tuple[list[str], list[Any]]  # a script's keys and arguments


def fail_closed(*, action: str) -> connections.translate_errors:
    """Every Redis error becomes SessionStoreUnavailable naming the setting: no session is ever assumed."""
    return connections.translate_errors(
        connections.Role.PRIMARY, error_class=SessionStoreUnavailable, all_errors=True, action=action
    )


@dataclass(frozen=True)
class Owner:
    """Whose a session is: its user and, for an IdP login, the IdP's `sid` and `sub`."""

    user_id: str
    idp_sid: str | None = None
    idp_sub: str | None = None

    @classmethod
    def read(cls, raw: list[Any]) -> Owner | None:
        """From an HMGET of `OWNER_FIELDS`; None when the hash is gone or its owner is malformed.

        A hand-written hash (bytes that are not UTF-8, an empty user) is nobody's session:
        rotate and destroy find nothing, and its ids leave the indexes as they expire.
        """
        if not raw or raw[0] is None:
            return None
        try:
            uid, isid, isub = (None if v is None else as_text(v) for v in raw)
        except UnicodeDecodeError:
            return None
        return cls(uid, isid, isub) if uid else None

    def index_keys(self) -> list[str]:
        """The indexes the session is in: the user's, then the IdP session's and subject's."""
        found = [keys.user_sessions(self.user_id)]
        if self.idp_sid is not None:
            found.append(keys.idp_session_sessions(self.idp_sid))
        if self.idp_sub is not None:
            found.append(keys.idp_subject_sessions(self.idp_sub))
        return found

    def script_args(self) -> list[str]:
        return [self.user_id, self.idp_sid or "", self.idp_sub or ""]


@dataclass(frozen=True)
class CreatePlan:
    """A checked `create`: the same hash and deadlines whichever id is drawn."""

    owner: Owner
    now_ms: int
    absolute_deadline_ms: int
    key_ttl_ms: int
    fields: list[Any]

    def call(self, session_id: str) -> Call:
        return (
            [keys.session(session_id), *self.owner.index_keys()],
            [session_id, self.now_ms, self.absolute_deadline_ms, self.key_ttl_ms, *self.fields],
        )


class SessionCalls:
    """Settings, checks and script calls shared by the sync and asyncio session services."""

    def __init__(
        self,
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
        self.idle_ttl_s = idle_ttl_s
        self.absolute_ttl_s = absolute_ttl_s
        self.slide_on_get = slide_on_get
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _plan_create(
        self,
        user_id: object,
        data: Mapping[str, Any] | None,
        *,
        ttl_s: float | None,
        absolute_ttl_s: float | None,
        idp_sid: object,
        idp_sub: object,
    ) -> CreatePlan:
        owner = Owner(
            check_user_id(user_id), check_idp_value("idp_sid", idp_sid), check_idp_value("idp_sub", idp_sub)
        )
        pairs = encode_data(data or {}, max_bytes=self.max_data_bytes)
        now = self._now_ms()
        plan = plan_deadlines(
            now,
            self.idle_ttl_s if ttl_s is None else ttl_s,
            self.absolute_ttl_s if absolute_ttl_s is None else absolute_ttl_s,
        )
        fields: list[Any] = ["uid", owner.user_id, "created", now, "seen", now]
        fields += ["idle", plan.idle_ttl_ms, "abs", plan.absolute_deadline_ms]
        for name, value in zip(IDP_FIELDS, (owner.idp_sid, owner.idp_sub), strict=True):
            if value is not None:
                fields += [name, value]
        return CreatePlan(owner, now, plan.absolute_deadline_ms, plan.key_ttl_ms, [*fields, *pairs])

    def _touch_call(
        self,
        session_id: str,
        *,
        slide: bool,
        fetch: bool = False,
        pairs: list[str | bytes] | None = None,
        removed: list[str] | None = None,
    ) -> Call:
        pairs = pairs or []
        head: list[Any] = [self._now_ms(), int(slide), int(fetch), len(pairs) // 2, self.max_data_bytes]
        return [keys.session(session_id)], [*head, *pairs, *(removed or [])]

    def _touched(self, result: Any) -> Any:
        if result == -2:
            raise self._too_large()
        return result

    @staticmethod
    def _read_session(session_id: str, raw: Any) -> Session | None:
        return decode_session(session_id, pairs_to_dict(raw)) if isinstance(raw, list) else None

    def _check_update(
        self, changes: Mapping[str, Any], remove: Iterable[str]
    ) -> tuple[list[str | bytes], list[str]]:
        """The pairs to set and fields to delete of an `update`.

        Raises:
            InvalidSessionArgument: bad data, an item both set and removed, too many removals.
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
        return pairs, removed

    def _too_large(self) -> InvalidSessionArgument:
        return InvalidSessionArgument(
            f"session data would be over {self.max_data_bytes} bytes encoded (SESSION_MAX_BYTES) "
            "with these changes; nothing was written"
        )

    def _rotate_call(self, session_id: str, new_id: str, owner: Owner, pairs: list[str | bytes]) -> Call:
        isid, isub = owner.idp_sid or "", owner.idp_sub or ""
        return (
            [keys.session(session_id), keys.session(new_id), *owner.index_keys()],
            [session_id, new_id, owner.user_id, self._now_ms(), self.max_data_bytes, isid, isub, *pairs],
        )

    def _rotated(self, result: Any, new_id: str) -> str | None:
        """The new id, None (no live session) or "" (the new id was taken: draw another)."""
        if result == -2:
            raise self._too_large()
        if result == -1:
            return ""
        return new_id if result == 1 else None

    def _destroy_call(self, index: str, batch: Iterable[tuple[str, Owner | None]]) -> Call:
        """`session_destroy_many` for ids read from `index`, each with the owner read from its hash."""
        script_keys: list[str] = [index]
        args: list[Any] = [self._now_ms()]
        for session_id, owner in batch:
            index_keys = [] if owner is None else owner.index_keys()
            script_keys += [keys.session(session_id), *index_keys]
            args += [session_id, *(["", "", ""] if owner is None else owner.script_args()), len(index_keys)]
        return script_keys, args

    def _list_call(self, uid: str, now: int, batch: list[str]) -> Call:
        return [keys.user_sessions(uid), *(keys.session(i) for i in batch)], [now, uid, *batch]

    @staticmethod
    def _listed(flat: list[Any]) -> list[Session]:
        found = (decode_session(as_text(sid), pairs_to_dict(raw)) for sid, raw in pairs_to_dict(flat).items())
        return [s for s in found if s is not None]


def user_index(user_id: object) -> str:
    return keys.user_sessions(check_user_id(user_id))


def idp_session_index(idp_sid: object) -> str:
    """Raises InvalidSessionArgument for a bad or missing `sid`."""
    value = check_idp_value("idp_sid", idp_sid)
    if value is None:
        raise InvalidSessionArgument("idp_sid must be a non-empty string, got None")
    return keys.idp_session_sessions(value)


def idp_subject_index(idp_sub: object) -> str:
    """Raises InvalidSessionArgument for a bad or missing `sub`."""
    value = check_idp_value("idp_sub", idp_sub)
    if value is None:
        raise InvalidSessionArgument("idp_sub must be a non-empty string, got None")
    return keys.idp_subject_sessions(value)
