"""The pure part of server-side sessions: ids, deadlines, the hash encoding, errors.

No I/O here, so every rule (id shape, expiry, field names, limits) is unit-tested
without Redis; `cache.sessions.service` is the Redis shell around it.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from cache.errors import KryonixError, RedisUnavailable

logger = logging.getLogger(__name__)

SESSION_ID_BYTES = 32  # 256 bits from `secrets`: unguessable, as OWASP asks (>= 64 bits)
DEFAULT_IDLE_TTL_S = 86_400  # 24 h without a request and the session is gone
DEFAULT_ABSOLUTE_TTL_S = 7 * 86_400  # a week after login the user signs in again, however active
MAX_TTL_S = 366 * 86_400  # a longer session is a bug, and keeps deadlines far from float limits
MAX_USER_ID_LENGTH = 256  # user ids become part of a key name
MAX_FIELD_NAME_LENGTH = 256
MAX_FIELDS = 1_000  # bounds the Lua argument lists
DEFAULT_MAX_DATA_BYTES = 64 * 1024  # SESSION_MAX_BYTES: the PRIMARY never evicts, so nothing big lives here
BATCH_SIZE = 500  # sessions per script call in list/destroy-all: keeps each call short
MAX_ID_ATTEMPTS = 3  # a 256-bit collision is impossible in practice; bounded all the same
MAX_DESTROY_ROUNDS = 100_000  # 50 M sessions of one user; only reached if creation never stops

# token_urlsafe(32): 43 base64url characters; the last one carries 4 bits plus 2 zero
# bits, so only 16 letters can end a genuine id. Anything else was not made by us.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_ID_LENGTH = 43
DATA_PREFIX = "d:"
_META_FIELDS = ("uid", "created", "seen", "idle", "abs")
IDP_FIELDS = ("isid", "isub")  # optional: the IdP's `sid` and `sub` of the login


class SessionError(KryonixError):
    """Base of the session service's own errors."""


class InvalidSessionArgument(SessionError, ValueError):
    """A caller passed a user id, TTL or data item the service will not store."""


class SignInRequired(SessionError):
    """A call that needs a signed-in session ran in a request without one (the adapters answer 401)."""


class SessionStoreUnavailable(SessionError, RedisUnavailable):
    """The PRIMARY Redis could not be reached or refused the operation: fail closed."""

    @classmethod
    def explain(cls, detail: str, *, action: str | None = None) -> str:
        return (
            f"session store unavailable: could not {action or 'use the session store'} on the {detail}. "
            "Failing closed: treat the request as not logged in."
        )


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
    idp_sid: str | None = None  # the IdP's session (OIDC `sid`) this login came from
    idp_sub: str | None = None  # the IdP's subject (OIDC `sub`)

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
    idle = ttl_ms("ttl_s", ttl_s)
    absolute = ttl_ms("absolute_ttl_s", absolute_ttl_s)
    if absolute < idle:
        raise InvalidSessionArgument(
            f"absolute_ttl_s ({absolute_ttl_s} s) must not be shorter than ttl_s ({ttl_s} s): "
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
    return _index_name("user_id", user_id)


def check_idp_value(name: str, value: object) -> str | None:
    """An IdP session id or subject as stored in the hash and an index key name; None stays None.

    Raises:
        InvalidSessionArgument: not a non-empty string without control characters, or too long.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidSessionArgument(f"{name} must be a non-empty string or None, got {value!r}")
    return _index_name(name, value)


def _index_name(name: str, value: str) -> str:
    """`value`, checked for use inside an index key name: bounded, no control characters."""
    if len(value) > MAX_USER_ID_LENGTH:
        raise InvalidSessionArgument(f"{name} is longer than {MAX_USER_ID_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidSessionArgument(f"{name} must not contain control characters, got {value!r}")
    return value


def check_field_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_FIELD_NAME_LENGTH:
        raise InvalidSessionArgument(
            f"session data keys must be non-empty strings of at most {MAX_FIELD_NAME_LENGTH} "
            f"characters, got {name!r}"
        )
    return DATA_PREFIX + name


def encode_data(data: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_DATA_BYTES) -> list[str | bytes]:
    """Session data as flat hash field, JSON value pairs.

    Args:
        data: item name -> JSON-serialisable value.
        max_bytes: most bytes of names and encoded values one write may carry
            (`SESSION_MAX_BYTES`): sessions live on the noeviction PRIMARY.

    Raises:
        InvalidSessionArgument: not a mapping, too many items, a bad key, a value JSON
            cannot hold (NaN and infinities included: JSON has no such numbers), or more
            than `max_bytes` encoded. Nothing is written.
    """
    if not isinstance(data, Mapping):
        raise InvalidSessionArgument(f"session data must be a mapping, got {type(data).__name__}")
    if len(data) > MAX_FIELDS:
        raise InvalidSessionArgument(f"session data has {len(data)} items; at most {MAX_FIELDS} allowed")
    pairs: list[str | bytes] = []
    size = 0
    for name, value in data.items():
        hash_field = check_field_name(name)
        try:
            encoded = orjson.dumps(value)
        except TypeError as exc:
            raise InvalidSessionArgument(f"session data {name!r} is not JSON-serialisable: {exc}") from None
        if b"null" in encoded and _has_non_finite(value):  # orjson writes NaN and Infinity as null
            raise InvalidSessionArgument(
                f"session data {name!r} holds NaN or an infinity, which JSON cannot represent"
            )
        size += len(hash_field.encode("utf-8", "surrogatepass")) + len(encoded)
        if size > max_bytes:
            raise InvalidSessionArgument(
                f"session data is over {max_bytes} bytes encoded (SESSION_MAX_BYTES); nothing was written"
            )
        pairs += [hash_field, encoded]
    return pairs


def _has_non_finite(value: Any) -> bool:
    """Whether a float NaN or infinity hides in `value` (orjson bounds the depth to 255)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(item) for item in value)
    return False


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_STORED_MS = re.compile(r"[0-9]{1,14}")  # what the Lua scripts accept (cache/lua/_session_times.lua)
_MAX_STORED_MS = 10**14 - 1


def stored_ms(value: str, *, low: int = 0, high: int = _MAX_STORED_MS) -> int:
    """A stored time in ms: whole, at most 14 digits, in [low, high].

    Raises:
        ValueError: anything else (a sign, a float, NaN, 400 digits, out of range).
    """
    if _STORED_MS.fullmatch(value) is None or not low <= int(value) <= high:
        raise ValueError(f"not a stored time in ms: {value[:40]!r}")
    return int(value)


def decode_session(session_id: str, raw: Mapping[Any, Any]) -> Session | None:
    """A `Session` from its hash, or None when the record is not one of ours.

    Every decoding step (field names, text, JSON, numbers) is inside the guard: a hash
    written by hand reads as no session, never as an error of the request.
    """
    try:
        return _decoded(session_id, {as_text(k): v for k, v in raw.items()})
    except (KeyError, ValueError):  # UnicodeDecodeError and orjson's JSONDecodeError are ValueErrors
        logger.warning("a session record is malformed; treated as no session")
        return None


def _decoded(session_id: str, fields: dict[str, Any]) -> Session:
    meta = {name: as_text(fields[name]) for name in _META_FIELDS}
    if not meta["uid"]:
        raise ValueError("the session has an empty user id")
    data = {k[len(DATA_PREFIX) :]: orjson.loads(v) for k, v in fields.items() if k.startswith(DATA_PREFIX)}
    created, seen, absolute = (stored_ms(meta[n]) for n in ("created", "seen", "abs"))
    idle = stored_ms(meta["idle"], low=1, high=MAX_TTL_S * 1000)
    idp_sid, idp_sub = (as_text(fields[n]) if n in fields else None for n in IDP_FIELDS)
    return Session(
        id=session_id,
        user_id=meta["uid"],
        idp_sid=idp_sid,
        idp_sub=idp_sub,
        data=data,
        created_at=created / 1000,
        last_seen=seen / 1000,
        idle_ttl_s=idle / 1000,
        absolute_expires_at=absolute / 1000,
    )


def pairs_to_dict(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
