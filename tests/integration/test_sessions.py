"""SessionService against a real PRIMARY redis-server (marker `sessions`).

A fake clock drives idle and absolute expiry, so nothing sleeps for hours; the Redis
TTLs are real and are checked against the deadlines the service stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cache import keys
from cache.connections import Role, build_client
from cache.sessions import service as sessions_module
from cache.sessions.service import DEFAULT_ABSOLUTE_TTL_S, DEFAULT_IDLE_TTL_S, SessionError, SessionService
from cache.settings import get_settings

pytestmark = pytest.mark.sessions
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)

HOUR = 3600.0


class FakeClock:
    """Seconds since the epoch that only move when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(primary: redis.Redis, clock: FakeClock) -> SessionService:
    return SessionService(primary, clock=clock)


@pytest.fixture(params=["bytes", "str"])
def any_client(request: pytest.FixtureRequest, primary: redis.Redis) -> Iterator[redis.Redis]:
    """The shared bytes client and a decode_responses client: the service reads both."""
    if request.param == "bytes":
        yield primary
        return
    client = build_client(Role.PRIMARY, get_settings(), decode_responses=True)
    yield client
    client.close()


def test_defaults_are_24h_idle_and_7_days_absolute() -> None:
    assert DEFAULT_IDLE_TTL_S == 24 * HOUR
    assert DEFAULT_ABSOLUTE_TTL_S == 7 * 24 * HOUR


@pytest.mark.single_only("reads the PRIMARY and CACHE servers by their URLs")
def test_default_client_is_the_primary(redis_env: dict[str, str]) -> None:
    service = SessionService()
    sid = service.create("u1")
    primary = redis.Redis.from_url(redis_env["REDIS_URL"])
    cache = redis.Redis.from_url(redis_env["CACHE_REDIS_URL"])
    assert primary.exists(keys.session(sid)) == 1
    assert cache.exists(keys.session(sid)) == 0
    primary.close()
    cache.close()


def test_lifecycle(any_client: redis.Redis, clock: FakeClock) -> None:
    service = SessionService(any_client, clock=clock)
    sid = service.create(7, {"cart": [1, 2], "lang": "fr"})
    raw = any_client.hgetall(f"session:{{sessions}}:{sid}")
    assert raw, "stored under one session: prefix and the sessions' hash tag"
    assert any_client.exists(f"session:{sid}") == 0
    clock.advance(10)
    session = service.get(sid)
    assert session is not None
    assert session.id == sid
    assert session.user_id == "7"
    assert session.data == {"cart": [1, 2], "lang": "fr"}
    assert session.created_at == 1_700_000_000.0
    assert session.last_seen == 1_700_000_010.0
    assert session.idle_ttl_s == DEFAULT_IDLE_TTL_S
    assert session.absolute_expires_at == 1_700_000_000.0 + DEFAULT_ABSOLUTE_TTL_S
    assert [s.id for s in service.list_for_user(7)] == [sid]

    assert service.destroy(sid) is True
    assert service.get(sid) is None
    assert any_client.exists(keys.session(sid)) == 0
    assert any_client.exists(keys.user_sessions("7")) == 0
    assert service.destroy(sid) is False
    assert service.list_for_user(7) == []


def test_redis_ttl_follows_the_earlier_deadline(primary: redis.Redis, clock: FakeClock) -> None:
    service = SessionService(primary, clock=clock)
    sid = service.create("u1", ttl_s=HOUR, absolute_ttl_s=2 * HOUR)
    key = keys.session(sid)
    assert HOUR * 1000 - 5_000 < primary.pttl(key) <= HOUR * 1000
    clock.advance(0.9 * HOUR)
    assert service.refresh(sid) is True
    assert HOUR * 1000 - 5_000 < primary.pttl(key) <= HOUR * 1000
    clock.advance(0.6 * HOUR)
    assert service.refresh(sid) is True
    # Only half an hour of absolute lifetime is left, so the key may not live an hour.
    assert 0.5 * HOUR * 1000 - 5_000 < primary.pttl(key) <= 0.5 * HOUR * 1000
    # The index lives as long as its longest-lived session.
    assert 0.5 * HOUR * 1000 - 5_000 < primary.pttl(keys.user_sessions("u1")) <= 2 * HOUR * 1000


def test_redis_removes_the_key_when_the_ttl_runs_out(primary: redis.Redis) -> None:
    service = SessionService(primary)  # the real clock: Redis itself must expire the key
    sid = service.create("u1", ttl_s=0.2, absolute_ttl_s=0.2)
    deadline = time.monotonic() + 10
    while primary.exists(keys.session(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert primary.exists(keys.session(sid)) == 0
    assert service.get(sid) is None
    assert service.list_for_user("u1") == []
    assert primary.zcard(keys.user_sessions("u1")) == 0


def test_idle_expiry(service: SessionService, clock: FakeClock, primary: redis.Redis) -> None:
    sid = service.create("u1", ttl_s=HOUR, absolute_ttl_s=10 * HOUR)
    clock.advance(HOUR - 0.001)
    assert service.get(sid, touch=False) is not None
    clock.advance(0.001)
    assert service.get(sid) is None
    assert primary.exists(keys.session(sid)) == 0, "an expired session is deleted when seen"
    assert service.refresh(sid) is False
    assert service.update(sid, {"x": 1}) is False
    assert primary.exists(keys.session(sid)) == 0, "an update must not resurrect it"


def test_activity_slides_the_idle_timeout(service: SessionService, clock: FakeClock) -> None:
    sid = service.create("u1", ttl_s=HOUR, absolute_ttl_s=10 * HOUR)
    for _ in range(5):
        clock.advance(0.9 * HOUR)
        session = service.get(sid)
        assert session is not None
        assert session.last_seen == clock.now
    clock.advance(0.9 * HOUR)
    assert service.get(sid, touch=False) is not None
    clock.advance(0.9 * HOUR)  # the read above did not slide
    assert service.get(sid) is None


def test_get_without_sliding_by_default(primary: redis.Redis, clock: FakeClock) -> None:
    service = SessionService(primary, clock=clock, slide_on_get=False)
    sid = service.create("u1", ttl_s=HOUR, absolute_ttl_s=10 * HOUR)
    clock.advance(0.9 * HOUR)
    assert service.get(sid) is not None
    clock.advance(0.2 * HOUR)
    assert service.get(sid) is None


def test_absolute_expiry_despite_continuous_activity(
    service: SessionService, clock: FakeClock, primary: redis.Redis
) -> None:
    sid = service.create("u1", ttl_s=HOUR, absolute_ttl_s=8 * HOUR)
    deadline = clock.now + 8 * HOUR
    steps = 0
    while clock.now + 0.25 * HOUR < deadline:
        clock.advance(0.25 * HOUR)
        steps += 1
        assert service.get(sid) is not None
        assert service.refresh(sid) is True
        assert service.update(sid, {"step": steps}) is True
        assert primary.pttl(keys.session(sid)) <= (deadline - clock.now) * 1000
    assert steps == 31
    clock.advance(deadline - clock.now)
    assert service.get(sid) is None
    assert service.refresh(sid) is False
    assert service.rotate(sid) is None


def test_refresh(service: SessionService, clock: FakeClock) -> None:
    sid = service.create("u1", ttl_s=HOUR)
    clock.advance(0.5 * HOUR)
    assert service.refresh(sid) is True
    session = service.get(sid, touch=False)
    assert session is not None
    assert session.last_seen == clock.now
    assert session.expires_at == clock.now + HOUR
    assert service.refresh("A" * 42 + "w") is False  # well formed, unknown


def test_update_sets_and_removes_items(service: SessionService) -> None:
    sid = service.create("u1", {"a": 1, "b": 2})
    assert service.update(sid, {"b": {"nested": [3]}, "c": None}, remove=["a", "absent"]) is True
    session = service.get(sid)
    assert session is not None
    assert session.data == {"b": {"nested": [3]}, "c": None}
    assert session.user_id == "u1"


def test_concurrent_updates_of_different_fields_all_survive(service: SessionService) -> None:
    sid = service.create("u1", {"base": True})
    rounds = 25
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(rounds):
                assert service.update(sid, {f"field{n}": i, f"field{n}_log": list(range(i + 1))})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    session = service.get(sid)
    assert session is not None
    expected = {"base": True}
    for n in range(20):
        expected |= {f"field{n}": rounds - 1, f"field{n}_log": list(range(rounds))}
    assert session.data == expected


def test_rotation(service: SessionService, clock: FakeClock, primary: redis.Redis) -> None:
    old = service.create("u1", {"cart": [1]}, ttl_s=HOUR, absolute_ttl_s=5 * HOUR)
    created = clock.now
    clock.advance(0.5 * HOUR)
    new = service.rotate(old, changes={"role": "admin"})
    assert new is not None
    assert new != old
    assert service.get(old) is None
    assert primary.exists(keys.session(old)) == 0
    session = service.get(new)
    assert session is not None
    assert session.user_id == "u1"
    assert session.data == {"cart": [1], "role": "admin"}
    assert session.created_at == created
    assert session.absolute_expires_at == created + 5 * HOUR, "rotation never extends the absolute timeout"
    assert [s.id for s in service.list_for_user("u1")] == [new]
    assert [m.decode() for m in primary.zrange(keys.user_sessions("u1"), 0, -1)] == [new]
    assert primary.pttl(keys.user_sessions("u1")) > 0, "the index keeps its TTL"
    # The old id is dead for every operation.
    assert service.update(old, {"x": 1}) is False
    assert service.rotate(old) is None
    assert service.destroy(old) is False
    assert service.get(new) is not None


def test_rotating_an_expired_session_gives_nothing(service: SessionService, clock: FakeClock) -> None:
    sid = service.create("u1", ttl_s=HOUR)
    clock.advance(HOUR)
    assert service.rotate(sid) is None
    assert service.list_for_user("u1") == []


def test_list_for_user_prunes_dead_ids(
    service: SessionService, clock: FakeClock, primary: redis.Redis
) -> None:
    long_lived = service.create("u1", ttl_s=10 * HOUR, absolute_ttl_s=10 * HOUR)
    idle = service.create("u1", ttl_s=HOUR, absolute_ttl_s=10 * HOUR)
    absolute = service.create("u1", ttl_s=HOUR, absolute_ttl_s=HOUR)
    vanished = service.create("u1")
    other = service.create("u2")
    primary.delete(keys.session(vanished))  # as if Redis had expired it
    clock.advance(HOUR)
    assert [s.id for s in service.list_for_user("u1")] == [long_lived]
    index = keys.user_sessions("u1")
    assert [m.decode() for m in primary.zrange(index, 0, -1)] == [long_lived]
    assert primary.exists(keys.session(idle)) == 0, "an idle-expired session is deleted when pruned"
    assert service.get(absolute) is None
    assert [s.id for s in service.list_for_user("u2")] == [other]


def test_logout_everywhere_with_1000_sessions(service: SessionService, primary: redis.Redis) -> None:
    mine = [service.create("alice", {"n": i}) for i in range(1000)]
    theirs = [service.create("bob", {"n": i}) for i in range(5)]
    assert len(service.list_for_user("alice")) == 1000

    assert service.destroy_all_for_user("alice") == 1000

    assert service.list_for_user("alice") == []
    assert primary.exists(keys.user_sessions("alice")) == 0
    assert all(service.get(sid) is None for sid in mine[::50])
    remaining = {k.decode() for k in primary.scan_iter(match="session:{sessions}:*", count=1000)}
    assert remaining == {keys.session(sid) for sid in theirs}
    assert {s.id for s in service.list_for_user("bob")} == set(theirs)
    assert service.destroy_all_for_user("alice") == 0


def test_garbage_ids_never_reach_redis(service: SessionService, primary: redis.Redis) -> None:
    garbage: list[object] = [
        None,
        "",
        "x",
        "A" * 42 + "B",
        "A" * 100_000,
        "A" * 41 + "+w",
        b"A" * 43,
        12,
        "session:*",
    ]
    primary.config_resetstat()
    for value in garbage:
        assert service.get(value) is None
        assert service.refresh(value) is False
        assert service.update(value, {"a": 1}) is False
        assert service.rotate(value) is None
        assert service.destroy(value) is False
    stats = primary.info("commandstats")
    assert set(stats) <= {"cmdstat_config|resetstat", "cmdstat_ping"}, stats


def test_well_formed_but_unknown_ids_are_no_session(service: SessionService, primary: redis.Redis) -> None:
    service.create("u1")
    tampered = "A" * 42 + "Q"
    assert service.get(tampered) is None
    assert service.rotate(tampered) is None
    assert service.destroy(tampered) is False
    assert primary.exists(keys.session(tampered)) == 0


def test_logout_everywhere_catches_a_session_created_meanwhile(
    service: SessionService, primary: redis.Redis
) -> None:
    for _ in range(3):
        service.create("alice")
    script = service._scripts["destroy_many"]
    late: list[str] = []

    def create_then_destroy(*args: Any, **kwargs: Any) -> Any:
        if not late:  # a login lands between reading the index and destroying the batch
            late.append(service.create("alice"))
        return script(*args, **kwargs)

    service._scripts["destroy_many"] = create_then_destroy  # type: ignore[assignment]
    assert service.destroy_all_for_user("alice") == 4
    assert service.get(late[0]) is None
    assert primary.exists(keys.user_sessions("alice")) == 0


def test_a_taken_id_is_never_reused(
    service: SessionService, primary: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = service.create("victim", {"secret": 1})
    other = service.create("u1", {"mine": 1})
    fresh = iter([taken, "B" * 42 + "w", taken, "C" * 42 + "w"])
    monkeypatch.setattr(sessions_module, "new_session_id", lambda: next(fresh))

    assert service.create("attacker") == "B" * 42 + "w"
    assert service.rotate(other) == "C" * 42 + "w"
    victim = service.get(taken)
    assert victim is not None
    assert (victim.user_id, victim.data) == ("victim", {"secret": 1})

    monkeypatch.setattr(sessions_module, "new_session_id", lambda: taken)
    with pytest.raises(SessionError, match="could not draw an unused session id in 3 attempts"):
        service.create("attacker")
