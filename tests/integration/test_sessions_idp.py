"""Sessions carrying the IdP's `sid` and `sub`: indexes, rotation, logout by either (marker `sessions`)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from cache import keys
from cache.sessions.core import InvalidSessionArgument, as_text
from cache.sessions.service import SessionService

pytestmark = pytest.mark.sessions

WEEK_MS = 7 * 86_400_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(primary: redis.Redis, clock: FakeClock) -> SessionService:
    return SessionService(primary, clock=clock)


def members(client: redis.Redis, key: str) -> set[str]:
    return {as_text(m) for m in client.zrange(key, 0, -1)}


def test_create_stores_and_indexes_the_idp_values(service: SessionService, primary: redis.Redis) -> None:
    sid = service.create("alice", {"role": "member"}, idp_sid="kc-1", idp_sub="sub-a")
    session = service.get(sid)
    assert session is not None
    assert (session.idp_sid, session.idp_sub, session.data) == ("kc-1", "sub-a", {"role": "member"})
    for index in (keys.idp_session_sessions("kc-1"), keys.idp_subject_sessions("sub-a")):
        assert members(primary, index) == {sid}
        assert WEEK_MS - 60_000 < primary.pttl(index) <= WEEK_MS  # until the absolute deadline
    local = service.get(service.create("alice"))
    assert local is not None and (local.idp_sid, local.idp_sub) == (None, None)
    assert primary.keys("kx:{sessions}:idp-*") and len(primary.keys("kx:{sessions}:idp-*")) == 2


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 257, 5, b"kc"])
def test_bad_idp_values_are_refused_before_redis(service: SessionService, bad: Any) -> None:
    with pytest.raises(InvalidSessionArgument, match="idp_sid"):
        service.create("alice", idp_sid=bad)
    with pytest.raises(InvalidSessionArgument, match="idp_sub"):
        service.create("alice", idp_sub=bad)
    with pytest.raises(InvalidSessionArgument, match="idp_sid"):
        service.logout_by_idp_session(bad)
    with pytest.raises(InvalidSessionArgument, match="idp_sub"):
        service.logout_by_subject(bad)


def test_rotate_keeps_the_idp_values_and_moves_the_id_in_every_index(
    service: SessionService, primary: redis.Redis
) -> None:
    old = service.create("alice", idp_sid="kc-1", idp_sub="sub-a")
    new = service.rotate(old, changes={"role": "admin"})
    assert new is not None
    session = service.get(new)
    assert session is not None and (session.idp_sid, session.idp_sub) == ("kc-1", "sub-a")
    for index in (
        keys.user_sessions("alice"),
        keys.idp_session_sessions("kc-1"),
        keys.idp_subject_sessions("sub-a"),
    ):
        assert members(primary, index) == {new}
    assert service.logout_by_idp_session("kc-1") == 1
    assert service.get(new) is None


def test_destroy_and_logout_everywhere_leave_no_index_behind(
    service: SessionService, primary: redis.Redis
) -> None:
    one = service.create("alice", idp_sid="kc-1", idp_sub="sub-a")
    two = service.create("alice", idp_sid="kc-2", idp_sub="sub-a")
    assert service.destroy(one) is True
    assert primary.exists(keys.idp_session_sessions("kc-1")) == 0
    assert members(primary, keys.idp_subject_sessions("sub-a")) == {two}
    assert service.destroy_all_for_user("alice") == 1
    assert primary.keys("kx:*sessions*") == []


def test_logout_by_sid_and_by_sub_end_exactly_the_matching_sessions(
    service: SessionService, primary: redis.Redis
) -> None:
    a1 = service.create("alice", idp_sid="kc-1", idp_sub="sub-a")
    a2 = service.create("alice", idp_sid="kc-1", idp_sub="sub-a")
    a3 = service.create("alice", idp_sid="kc-2", idp_sub="sub-a")
    bob = service.create("bob", idp_sid="kc-3", idp_sub="sub-b")
    local = service.create("alice")
    assert service.logout_by_idp_session("kc-1") == 2
    assert [service.get(s) is not None for s in (a1, a2, a3, bob, local)] == [False, False, True, True, True]
    assert {s.id for s in service.list_for_user("alice")} == {a3, local}  # one clock tick: no order
    assert service.logout_by_subject("sub-a") == 1
    assert [service.get(s) is not None for s in (a3, bob, local)] == [False, True, True]
    assert service.logout_by_subject("sub-a") == 0
    assert service.logout_by_idp_session("never-seen") == 0
    assert sorted(primary.keys("kx:{sessions}:idp-*")) == [
        keys.idp_session_sessions("kc-3").encode(),
        keys.idp_subject_sessions("sub-b").encode(),
    ]


def test_an_expired_session_is_not_counted_but_leaves_the_indexes(
    service: SessionService, primary: redis.Redis, clock: FakeClock
) -> None:
    service.create("alice", idp_sid="kc-1", ttl_s=60)
    live = service.create("alice", idp_sid="kc-1")
    clock.now += 120
    assert service.logout_by_idp_session("kc-1") == 1
    assert service.get(live) is None
    assert primary.exists(keys.idp_session_sessions("kc-1")) == 0


def test_logout_catches_a_session_rotated_meanwhile(service: SessionService, primary: redis.Redis) -> None:
    first = service.create("alice", idp_sid="kc-1", idp_sub="sub-a")
    service.create("alice", idp_sid="kc-1", idp_sub="sub-a")
    script = service._scripts["destroy_many"]
    rotated: list[str | None] = []

    def rotate_then_destroy(*args: Any, **kwargs: Any) -> Any:
        if not rotated:  # a privilege change lands between reading the index and destroying
            rotated.append(service.rotate(first))
        return script(*args, **kwargs)

    service._scripts["destroy_many"] = rotate_then_destroy  # type: ignore[assignment]
    assert service.logout_by_idp_session("kc-1") == 2
    assert rotated[0] is not None and service.get(rotated[0]) is None
    assert primary.keys("kx:*sessions*") == []
