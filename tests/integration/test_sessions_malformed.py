"""Session hashes written by hand against a real PRIMARY (marker `sessions`).

Whatever bytes sit in a session hash, the services read "no session": never an error
of the request (a 500) nor a script error that reads as "store down" for good (a 503),
and no script half-applies a change before failing on a stored value.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from cache import keys
from cache.connections import Role, build_async_client
from cache.sessions.async_service import AsyncSessionService
from cache.sessions.service import SessionService

pytestmark = pytest.mark.sessions
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)

CORRUPT: dict[str, dict[bytes | str, bytes]] = {
    "data name not UTF-8": {b"d:\xff": b"1"},
    "data value not JSON": {"d:role": b"{not json"},
    "data value not UTF-8": {"d:role": b"\xff\xfe"},
    "isid not UTF-8": {"isid": b"\xff"},
    "isub not UTF-8": {"isub": b"\xff"},
    "uid not UTF-8": {"uid": b"\xff"},
    "uid empty": {"uid": b""},
    "idle nan": {"idle": b"nan"},
    "idle inf": {"idle": b"inf"},
    "idle not a number": {"idle": b"abc"},
    "idle negative": {"idle": b"-5"},
    "idle a float": {"idle": b"1.5e9"},
    "idle 400 digits": {"idle": b"9" * 400},
    "abs 400 digits": {"abs": b"9" * 400},
    "abs 5000 digits": {"abs": b"9" * 5000},
    "abs 1e20": {"abs": b"100000000000000000000"},
    "seen 400 digits": {"seen": b"9" * 400},
    "created 400 digits": {"created": b"9" * 400},
    "created empty": {"created": b""},
}


@pytest.mark.parametrize("fields", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_session_is_no_session_for_every_call(
    primary: redis.Redis, fields: dict[Any, bytes]
) -> None:
    service = SessionService(primary)
    session_id = service.create("mallory", {"role": "user"}, idp_sid="s-m", idp_sub="sub-m")
    primary.hset(keys.session(session_id), mapping=fields)
    assert service.get(session_id) is None
    assert service.get(session_id) is None  # and again: nothing lasting
    rotated = service.rotate(session_id, changes={"level": 2})  # bad data moves along, still unread
    assert rotated is None or service.get(rotated) is None
    assert [s.user_id for s in service.list_for_user("mallory")] == []
    service.logout_by_subject("sub-m")
    assert service.destroy(session_id) is False
    fresh = service.create("mallory", idp_sid="s-m", idp_sub="sub-m")  # the user can sign in again
    assert service.get(fresh) is not None


@pytest.mark.parametrize("fields", CORRUPT.values(), ids=CORRUPT.keys())
def test_the_async_service_reads_a_corrupt_session_as_none(
    primary: redis.Redis, fields: dict[Any, bytes]
) -> None:
    session_id = SessionService(primary).create("mallory", {"role": "user"}, idp_sub="sub-m")
    primary.hset(keys.session(session_id), mapping=fields)

    async def main() -> list[Any]:
        client = build_async_client(Role.PRIMARY)
        try:
            service = AsyncSessionService(client)
            rotated = await service.rotate(session_id, changes={"level": 2})
            return [
                await service.get(session_id),
                rotated is None or await service.get(rotated) is None,
                await service.list_for_user("mallory"),
                await service.logout_by_subject("sub-m"),
            ]
        finally:
            await client.aclose()

    assert asyncio.run(main())[:3] == [None, True, []]


def test_rotate_with_a_bad_absolute_deadline_writes_nothing_and_logins_go_on(primary: redis.Redis) -> None:
    service = SessionService(primary)
    session_id = service.create("carol", {"role": "user"})
    primary.hset(keys.session(session_id), "abs", b"100000000000000000000")
    before = primary.hgetall(keys.session(session_id))
    assert service.rotate(session_id, changes={"level": 2}) is None
    assert primary.exists(keys.session(session_id)) == 0  # destroyed like an expired one, not half-moved
    assert before[b"d:role"] == b'"user"'
    assert service.get(service.create("carol")) is not None


def test_create_drops_a_corrupt_index_score(primary: redis.Redis) -> None:
    service = SessionService(primary)
    far = time.time() * 1000 + 86_400_000.5  # fractional: tolerated, its PEXPIRE rounded up
    primary.zadd(keys.user_sessions("dave"), {"ghost": 1e20})
    primary.zadd(keys.idp_subject_sessions("sub-d"), {"ghost": 2e14, "odd": far + 86_400_000})
    session_id = service.create("dave", idp_sub="sub-d")
    assert service.get(session_id) is not None
    assert primary.zscore(keys.user_sessions("dave"), "ghost") is None
    assert primary.zscore(keys.idp_subject_sessions("sub-d"), "ghost") is None
    assert 0 < primary.pttl(keys.user_sessions("dave"))
    assert 0 < primary.pttl(keys.idp_subject_sessions("sub-d"))
