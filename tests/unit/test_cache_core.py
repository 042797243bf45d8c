"""Pure core of the cache: TTL jitter, early refresh, polling, envelope, input checks (marker `cache`)."""

from __future__ import annotations

import math

import orjson
import pytest

from cache.appcache.core import (
    CORRUPT,
    MAX_KEY_LENGTH,
    MAX_TTL_S,
    POLL_MAX_S,
    POLL_MIN_S,
    CacheSerializationError,
    Entry,
    check_key,
    check_namespace,
    check_ttl,
    decode_entry,
    encode_envelope,
    jittered_ttl,
    poll_delay,
    should_refresh_early,
)

pytestmark = pytest.mark.cache

GEN = b"0123456789abcdef"


@pytest.mark.parametrize(
    ("ttl_s", "u", "expected"),
    [
        (100.0, 0.0, 100.0),  # never longer than asked
        (100.0, 0.5, 95.0),
        (100.0, 0.999999, 90.0000100),
        (1.0, 0.5, 0.95),
    ],
)
def test_jitter_only_shortens_by_at_most_ten_percent(ttl_s: float, u: float, expected: float) -> None:
    assert jittered_ttl(ttl_s, u) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("now", "soft_expiry", "fetch_s", "u", "refresh"),
    [
        (100.0, 100.0, 0.0, 0.5, True),  # at expiry: always
        (99.0, 100.0, 0.0, 0.5, False),  # instant fetches are never refreshed early
        (99.0, 100.0, 1.0, 0.5, False),  # gap -ln(0.5) = 0.69 s < 1 s to expiry
        (99.0, 100.0, 1.0, 0.3, True),  # gap -ln(0.3) = 1.2 s >= 1 s to expiry
        (99.0, 100.0, 2.0, 0.5, True),  # a slow fetch starts earlier
        (50.0, 100.0, 1.0, 1e-9, False),  # 20.7 s of gap is still < 50 s
        (90.0, 100.0, 1.0, 1.0, False),  # u = 1: no gap at all
    ],
)
def test_xfetch_early_refresh(
    now: float, soft_expiry: float, fetch_s: float, u: float, refresh: bool
) -> None:
    assert should_refresh_early(now, soft_expiry, fetch_s, u) is refresh


def test_xfetch_probability_rises_towards_expiry() -> None:
    us = [(i + 1) / 1000 for i in range(1000)]

    def share(now: float) -> float:
        return sum(should_refresh_early(now, 100.0, 0.1, u) for u in us) / len(us)

    far, near, nearer = share(99.5), share(99.9), share(99.99)
    assert far < near < nearer
    assert far == pytest.approx(math.exp(-5), abs=0.002)  # P(gap >= 0.5 s) with a mean gap of 0.1 s


@pytest.mark.parametrize(
    ("attempt", "u", "expected"),
    [
        (0, 0.0, POLL_MIN_S / 2),
        (0, 1.0, POLL_MIN_S),
        (1, 0.0, POLL_MIN_S),
        (2, 1.0, POLL_MIN_S * 4),
        (10, 1.0, POLL_MAX_S),  # capped
        (10_000, 0.0, POLL_MAX_S / 2),  # no overflow however long it waits
    ],
)
def test_poll_delay_doubles_with_jitter_and_a_cap(attempt: int, u: float, expected: float) -> None:
    assert poll_delay(attempt, u) == pytest.approx(expected)


def test_envelope_round_trip() -> None:
    raw = GEN + encode_envelope({"a": [1, 2.5, None, "é"]}, 1234.5, 0.25)
    assert decode_entry(GEN, raw) == Entry({"a": [1, 2.5, None, "é"]}, 1234.5, 0.25)


def test_none_is_a_value_not_a_miss() -> None:
    entry = decode_entry(GEN, GEN + encode_envelope(None, 10.0, 0.0))
    assert entry is not None and entry is not CORRUPT
    assert entry.value is None


@pytest.mark.parametrize(
    ("generation", "raw"),
    [
        (GEN, None),  # absent
        (None, GEN + b"{}"),  # namespace has no generation yet
        (b"fedcba9876543210", GEN + encode_envelope(1, 1.0, 0.0)),  # written before clear()
    ],
)
def test_absent_or_other_generation_is_a_miss(generation: bytes | None, raw: bytes | None) -> None:
    assert decode_entry(generation, raw) is None


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"v": 1}', b'{"v": 1, "e": "x", "f": 0}', b""])
def test_undecodable_entry_of_current_generation_is_corrupt(body: bytes) -> None:
    assert decode_entry(GEN, GEN + body) is CORRUPT


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), {"when": complex(1, 2)}, {1: "int key"}, 2**70],
    ids=["set", "object", "nested", "int-key", "bigint"],
)
def test_unserializable_value_raises_a_clear_error(value: object) -> None:
    with pytest.raises(CacheSerializationError, match="not JSON-serializable") as info:
        encode_envelope(value, 1.0, 0.0)
    assert isinstance(info.value, TypeError)


def test_envelope_is_compact_json() -> None:
    assert orjson.loads(encode_envelope("x", 1.23456, 0.000123)) == {"v": "x", "e": 1.235, "f": 0.0001}


@pytest.mark.parametrize("value", [1, 0.5, MAX_TTL_S])
def test_ttl_accepts_positive_seconds(value: float) -> None:
    assert check_ttl("ttl", value) == float(value)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "ttl must be greater than 0"),
        (-5, ValueError, "ttl must be greater than 0"),
        (MAX_TTL_S + 1, ValueError, "at most"),
        (float("nan"), ValueError, "ttl must be"),
        (float("inf"), ValueError, "at most"),
        (True, TypeError, "number of seconds"),
        ("60", TypeError, "number of seconds"),
        (None, TypeError, "number of seconds"),
    ],
)
def test_bad_ttl_is_rejected(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_ttl("ttl", value)


def test_zero_allowed_where_asked() -> None:
    assert check_ttl("stale_ttl_s", 0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="stale_ttl_s must be at least 0"):
        check_ttl("stale_ttl_s", -1, allow_zero=True)


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ("", ValueError, "1 to 1024 characters"),
        ("k" * (MAX_KEY_LENGTH + 1), ValueError, "1 to 1024 characters"),
        (b"bytes", TypeError, "must be a str, got bytes"),
        (42, TypeError, "must be a str, got int"),
    ],
)
def test_bad_key_is_rejected(key: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_key(key)


@pytest.mark.parametrize("namespace", ["", "a b", "a:b", "{x}", "x" * 65, None, "ü"])
def test_bad_namespace_is_rejected(namespace: object) -> None:
    with pytest.raises(ValueError, match="namespace must be 1-64 letters"):
        check_namespace(namespace)


@pytest.mark.parametrize("namespace", ["app", "db", "reports.v2", "a_b-c"])
def test_namespace_accepts_simple_names(namespace: str) -> None:
    assert check_namespace(namespace) == namespace
