"""Pure core of the application cache: TTL choice, early refresh, envelope, input checks.

No I/O here (except reading the packaged Lua text), so all of it is tested table-driven
without Redis. A stored entry is `generation + JSON envelope`, the envelope being
`{"v": value, "e": soft expiry (epoch s), "f": fetch duration (s)}`.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cache.errors import KryonixError

DEFAULT_NAMESPACE = "app"
DEFAULT_TTL_S = 3600  # an hour: the default; callers pass shorter TTLs for volatile data
DEFAULT_NEGATIVE_TTL_S = 60  # a cached "not found" is rechecked after a minute, so new rows show up
DEFAULT_STALE_TTL_S = 60  # an expired value may still be served this long while one caller refreshes
DEFAULT_LOCK_TTL_S = 10.0  # a fetch still running after this is presumed hung; another caller takes over
TTL_JITTER = 0.1  # TTLs are cut by up to 10% at random, so keys written together expire apart
EARLY_REFRESH_BETA = 1.0  # XFetch's beta; 1.0 is the paper's optimum, larger refreshes earlier
POLL_MIN_S = 0.005  # a waiter first looks again after ~5 ms (a typical indexed query)
POLL_MAX_S = 0.05  # ... backing off to 50 ms, so 100 waiters cost Redis ~2000 reads/s at most
MAX_KEY_LENGTH = 1024  # key names stay short enough to read in MONITOR and cheap to hash
MAX_TTL_S = 366 * 86_400  # a longer TTL is a bug (milliseconds passed as seconds)
GENERATION_BYTES = 8  # 16 hex chars, random: an evicted generation key can never revive old entries

NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class CacheError(KryonixError):
    """Base of the cache's own errors; Redis failures are never raised, they fail open."""


class InvalidCacheArgument(CacheError, ValueError):
    """A namespace, key, duration or other argument of the wrong value; the message names it."""


class InvalidCacheArgumentType(CacheError, TypeError):
    """An argument of the wrong type (a key that is not a str, a TTL that is not a number)."""


class CacheSerializationError(CacheError, TypeError):
    """A value cannot be stored as JSON: a programming error, raised even while Redis is down."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing()
"""Pass as `get(key, default=MISSING)` to tell a cached `None` from a miss."""


def jittered_ttl(ttl_s: float, u: float, jitter: float = TTL_JITTER) -> float:
    """`ttl_s` shortened by up to `jitter` of itself (`u` uniform in [0, 1)), never lengthened."""
    return ttl_s * (1.0 - jitter * u)


def should_refresh_early(
    now: float, soft_expiry: float, fetch_s: float, u: float, beta: float = EARLY_REFRESH_BETA
) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh before expiry with a probability that rises.

    The gap `-fetch_s * beta * ln(u)` (`u` uniform in (0, 1]) is exponentially distributed,
    so one of many concurrent readers refreshes a little before expiry, and slow fetches
    start earlier: the key is rarely ever missing at all.
    """
    return now - fetch_s * beta * math.log(u) >= soft_expiry


def poll_delay(attempt: int, u: float) -> float:
    """Wait before the `attempt`-th look (0-based) for another caller's value: doubling, equal jitter."""
    base: float = min(POLL_MAX_S, POLL_MIN_S * float(2 ** min(attempt, 16)))
    return base / 2 + base / 2 * u


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    soft_expiry: float  # epoch seconds after which the value is stale
    fetch_s: float  # how long the fetch took: XFetch refreshes slow values earlier


CORRUPT: Final = Entry(None, 0.0, 0.0)  # undecodable entry of the current generation


def encode_envelope(value: Any, soft_expiry: float, fetch_s: float) -> bytes:
    """The JSON envelope of `value`.

    Raises:
        CacheSerializationError: `value` (or something inside it) is not JSON.
    """
    try:
        return orjson.dumps({"v": value, "e": round(soft_expiry, 3), "f": round(fetch_s, 4)})
    except orjson.JSONEncodeError as exc:
        raise CacheSerializationError(
            f"value is not JSON-serializable ({exc}); convert it to dicts, lists, str, numbers, bool or None"
        ) from None


def decode_entry(generation: bytes | None, raw: bytes | None) -> Entry | None:
    """The entry in `raw` if it belongs to `generation`; `None` if absent or of another generation."""
    if raw is None or generation is None or not raw.startswith(generation):
        return None
    try:
        envelope = orjson.loads(memoryview(raw)[len(generation) :])
        return Entry(envelope["v"], float(envelope["e"]), float(envelope["f"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return CORRUPT


def as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def new_token() -> str:
    return secrets.token_hex(GENERATION_BYTES)


def check_ttl(name: str, value: object, *, allow_zero: bool = False) -> float:
    """`value` as float seconds.

    Raises:
        TypeError: not a number (a bool is not a number of seconds either).
        ValueError: not positive (or negative with `allow_zero`), NaN, or above `MAX_TTL_S`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCacheArgumentType(f"{name} must be a number of seconds, got {value!r}")
    above_floor = value >= 0 if allow_zero else value > 0
    if not above_floor or not value <= MAX_TTL_S:  # NaN fails both
        floor = "at least 0" if allow_zero else "greater than 0"
        raise InvalidCacheArgument(f"{name} must be {floor} and at most {MAX_TTL_S} seconds, got {value!r}")
    return float(value)


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidCacheArgumentType(f"cache key must be a str, got {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidCacheArgument(f"cache key must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}")
    return key


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.fullmatch(namespace):
        raise InvalidCacheArgument(
            f"namespace must be 1-64 letters, digits, '_', '.' or '-', got {namespace!r}"
        )
    return namespace
