"""The pure core of cache.sessions.service: id shape, expiry arithmetic, argument checks (no Redis)."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
import redis

from cache.errors import KryonixError, RedisUnavailable
from cache.sessions.core import (
    MAX_FIELDS,
    MAX_TTL_S,
    Deadlines,
    InvalidSessionArgument,
    Session,
    SessionStoreUnavailable,
    check_user_id,
    decode_session,
    encode_data,
    expires_at_ms,
    is_expired,
    is_well_formed_id,
    new_session_id,
    plan_deadlines,
    ttl_ms,
)
from cache.sessions.service import SessionService

pytestmark = pytest.mark.sessions

VALID = "A" * 42 + "w"  # a canonical base64url encoding of 32 bytes


class TripwireRedis(redis.Redis):
    """A client that records every command and refuses to send any: proves "no Redis call"."""

    def __init__(self) -> None:
        super().__init__(port=1)  # nothing listens there; never connected because never used
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(args)
        raise AssertionError(f"unexpected Redis call: {args[:1]}")


def test_new_ids_carry_256_random_bits_in_url_safe_form() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    for session_id in list(ids)[:50]:
        assert len(session_id) == 43
        assert is_well_formed_id(session_id)
        raw = base64.urlsafe_b64decode(session_id + "=")
        assert len(raw) == 32
        assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == session_id


GARBAGE_IDS: list[object] = [
    None,
    "",
    42,
    4.2,
    b"A" * 43,
    ["A" * 43],
    {"id": VALID},
    "A" * 42,  # one short
    VALID + "A",  # one long
    "A" * 10_000,  # oversized
    "A" * 1_000_000,
    "A" * 42 + "B",  # right alphabet, but not a canonical encoding of 32 bytes (tampered)
    VALID[:-1] + "=",  # padding
    "A" * 41 + "+w",  # standard, not URL-safe, base64
    "A" * 41 + "/w",
    "A" * 41 + " w",
    "A" * 41 + ".w",
    "A" * 41 + "\nw",
    "A" * 41 + "\x00w",
    "A" * 41 + "Åw",  # a look-alike letter
    "\uff21" * 42 + "w",  # full-width letters
    " " + VALID[1:],
    "session:" + VALID[8:],
    "*" * 43,
    "../../etc/passwd" + "A" * 26 + "w",
    "' OR '1'='1" + "A" * 31 + "w",
]


@pytest.mark.parametrize("value", GARBAGE_IDS, ids=lambda v: repr(v)[:40])
def test_malformed_ids_are_rejected_by_shape(value: object) -> None:
    assert not is_well_formed_id(value)


@pytest.mark.parametrize("value", GARBAGE_IDS, ids=lambda v: repr(v)[:40])
def test_malformed_ids_are_no_session_without_any_redis_call(value: object) -> None:
    client = TripwireRedis()
    service = SessionService(client)
    assert service.get(value) is None
    assert service.get(value, touch=False) is None
    assert service.refresh(value) is False
    assert service.update(value, {"x": 1}) is False
    assert service.rotate(value) is None
    assert service.destroy(value) is False
    assert client.commands == []


def test_well_formed_ids_are_accepted() -> None:
    assert is_well_formed_id(VALID)
    assert is_well_formed_id("-_" * 21 + "0")


@pytest.mark.parametrize(
    ("seconds", "expected_ms"),
    [(1, 1000), (0.5, 500), (86_400, 86_400_000), (0.0001, 1), (MAX_TTL_S, MAX_TTL_S * 1000)],
)
def test_ttl_in_milliseconds(seconds: float, expected_ms: int) -> None:
    assert ttl_ms("ttl", seconds) == expected_ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be > 0"),
        (-5, "must be > 0"),
        (math.nan, "must be > 0"),
        (math.inf, "must be > 0"),
        (MAX_TTL_S + 1, f"<= {MAX_TTL_S}"),
        (True, "must be a number of seconds"),
        ("60", "must be a number of seconds"),
        (None, "must be a number of seconds"),
    ],
)
def test_bad_ttls_name_the_argument(value: object, message: str) -> None:
    with pytest.raises(InvalidSessionArgument, match="absolute_ttl") as info:
        ttl_ms("absolute_ttl", value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("now", "ttl", "absolute", "expected"),
    [
        # idle deadline comes first: the key lives for the idle TTL
        (1_000_000, 3600, 86_400, Deadlines(3_600_000, 87_400_000, 3_600_000)),
        # equal timeouts
        (0, 60, 60, Deadlines(60_000, 60_000, 60_000)),
        # sub-second TTLs keep millisecond precision
        (5, 0.25, 1.5, Deadlines(250, 1_505, 250)),
    ],
)
def test_plan_deadlines(now: int, ttl: float, absolute: float, expected: Deadlines) -> None:
    assert plan_deadlines(now, ttl, absolute) == expected


def test_absolute_ttl_shorter_than_idle_ttl_is_refused() -> None:
    refusal = r"absolute_ttl_s \(60 s\) must not be shorter than ttl_s"
    with pytest.raises(InvalidSessionArgument, match=refusal):
        plan_deadlines(0, 3600, 60)


@pytest.mark.parametrize(
    ("now", "seen", "idle", "absolute", "expires", "expired"),
    [
        (1_000, 1_000, 500, 10_000, 1_500, False),  # fresh
        (1_499, 1_000, 500, 10_000, 1_500, False),  # one ms before the idle deadline
        (1_500, 1_000, 500, 10_000, 1_500, True),  # exactly at the idle deadline: gone
        (9_999, 9_800, 500, 10_000, 10_000, False),  # active, absolute deadline next
        (10_000, 9_900, 500, 10_000, 10_000, True),  # activity cannot pass the absolute deadline
        (20_000, 19_999, 500, 10_000, 10_000, True),  # last seen after the deadline changes nothing
    ],
)
def test_expiry_is_the_earlier_of_idle_and_absolute_deadline(
    now: int, seen: int, idle: int, absolute: int, expires: int, expired: bool
) -> None:
    assert expires_at_ms(seen, idle, absolute) == expires
    assert is_expired(now, seen, idle, absolute) is expired


@pytest.mark.parametrize(
    ("value", "expected"), [(42, "42"), ("u-1", "u-1"), ("ann@example.com", "ann@example.com")]
)
def test_user_ids_are_normalised_to_strings(value: object, expected: str) -> None:
    assert check_user_id(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "non-empty string"),
        (None, "non-empty string"),
        (True, "non-empty string"),
        (3.5, "non-empty string"),
        ("u" * 257, "longer than 256"),
        ("a\nb", "control characters"),
        ("a\x00b", "control characters"),
    ],
)
def test_bad_user_ids_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidSessionArgument, match="user_id") as info:
        check_user_id(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([("a", 1)], "must be a mapping"),
        ({1: "x"}, "non-empty strings"),
        ({"": "x"}, "non-empty strings"),
        ({"k" * 257: "x"}, "non-empty strings"),
        ({"when": object()}, "'when' is not JSON-serialisable"),
        ({"tags": {1, 2}}, "'tags' is not JSON-serialisable"),
        ({f"k{i}": i for i in range(MAX_FIELDS + 1)}, f"at most {MAX_FIELDS}"),
    ],
)
def test_bad_session_data_is_refused(data: Any, message: str) -> None:
    with pytest.raises(InvalidSessionArgument) as info:
        encode_data(data)
    assert message in str(info.value)


def test_data_round_trips_through_the_hash_encoding() -> None:
    data = {"cart": [1, 2, {"sku": "x"}], "role": "admin", "n": 3, "ok": True, "none": None, "é": "ü"}
    flat = encode_data(data)
    raw = dict(zip(flat[::2], flat[1::2]))
    raw |= {"uid": "7", "created": "1000", "seen": "2500", "idle": "60000", "abs": "90000"}
    session = decode_session(VALID, raw)
    assert session == Session(
        id=VALID,
        user_id="7",
        data=data,
        created_at=1.0,
        last_seen=2.5,
        idle_ttl_s=60.0,
        absolute_expires_at=90.0,
    )
    assert session.expires_at == 62.5


@pytest.mark.parametrize(
    "raw",
    [
        {"created": "1", "seen": "1", "idle": "1", "abs": "1"},  # no user
        {"uid": "7", "created": "1", "seen": "soon", "idle": "1", "abs": "1"},
        {"uid": "7", "created": "1", "seen": "1", "idle": "1", "abs": "1", "d:x": b"{not json"},
        {b"uid": b"\xff", "created": "1", "seen": "1", "idle": "1", "abs": "1"},
    ],
)
def test_records_that_are_not_ours_are_no_session(raw: dict[Any, Any]) -> None:
    assert decode_session(VALID, raw) is None


def test_session_repr_never_shows_the_id() -> None:
    session = Session(
        id=VALID, user_id="7", data={}, created_at=0, last_seen=0, idle_ttl_s=1, absolute_expires_at=1
    )
    assert VALID not in repr(session)


def test_bad_arguments_fail_before_redis() -> None:
    client = TripwireRedis()
    service = SessionService(client)
    with pytest.raises(InvalidSessionArgument, match="user_id"):
        service.create("")
    with pytest.raises(InvalidSessionArgument, match="not JSON-serialisable"):
        service.create("u1", {"x": object()})
    with pytest.raises(InvalidSessionArgument, match="absolute_ttl"):
        service.create("u1", ttl_s=100, absolute_ttl_s=10)
    with pytest.raises(InvalidSessionArgument, match="both set and removed: \\['a'\\]"):
        service.update(VALID, {"a": 1}, remove=["a"])
    with pytest.raises(InvalidSessionArgument, match="remove must be a collection of item names, got 'a'"):
        service.update(VALID, {}, remove="a")
    with pytest.raises(InvalidSessionArgument, match="user_id"):
        service.list_for_user("")
    with pytest.raises(InvalidSessionArgument, match="user_id"):
        service.destroy_all_for_user(None)  # type: ignore[arg-type]
    assert client.commands == []


def test_bad_default_timeouts_fail_at_construction() -> None:
    with pytest.raises(InvalidSessionArgument, match="ttl"):
        SessionService(TripwireRedis(), idle_ttl_s=0)
    with pytest.raises(InvalidSessionArgument, match="must not be shorter"):
        SessionService(TripwireRedis(), idle_ttl_s=3600, absolute_ttl_s=60)


def test_store_errors_are_package_errors() -> None:
    assert issubclass(SessionStoreUnavailable, RedisUnavailable)
    assert issubclass(InvalidSessionArgument, KryonixError)
    assert issubclass(InvalidSessionArgument, ValueError)
