"""Session data is capped and JSON-exact on the real PRIMARY (markers `sessions`, `security`).

Sessions live on the noeviction PRIMARY, where one 20 MiB session was stored before the
cap; NaN and infinities were stored as null. Each refusal must name the limit and leave
Redis exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import redis

from cache.sessions.service import InvalidSessionArgument, SessionService

pytestmark = [pytest.mark.sessions, pytest.mark.security]

CAP = 64 * 1024  # the SESSION_MAX_BYTES default


def _snapshot(primary: redis.Redis) -> dict[bytes, object]:
    """Every key with its type and content, to prove a refusal wrote nothing."""
    state: dict[bytes, object] = {}
    for key in primary.scan_iter():
        kind = primary.type(key)
        state[key] = primary.hgetall(key) if kind == b"hash" else primary.zrange(key, 0, -1, withscores=True)
    return state


@pytest.fixture
def service(primary: redis.Redis) -> SessionService:
    return SessionService(primary)


def test_a_20_mib_session_is_refused_and_nothing_is_stored(
    service: SessionService, primary: redis.Redis
) -> None:
    with pytest.raises(InvalidSessionArgument, match=f"over {CAP} bytes encoded \\(SESSION_MAX_BYTES\\)"):
        service.create("u1", {"blob": "x" * (20 * 1024 * 1024)})
    assert _snapshot(primary) == {}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"a": {"b": math.inf}}])
def test_nan_and_infinities_are_refused_everywhere(
    service: SessionService, primary: redis.Redis, value: object
) -> None:
    with pytest.raises(InvalidSessionArgument, match="NaN or an infinity"):
        service.create("u1", {"x": value})
    sid = service.create("u1", {"x": 1})
    before = _snapshot(primary)
    calls: list[Callable[[], object]] = [
        lambda: service.update(sid, {"x": value}),
        lambda: service.rotate(sid, changes={"x": value}),
    ]
    for call in calls:
        with pytest.raises(InvalidSessionArgument, match="NaN or an infinity"):
            call()
    assert _snapshot(primary) == before
    session = service.get(sid)
    assert session is not None and session.data == {"x": 1}


def test_updates_cannot_grow_a_session_past_the_cap(service: SessionService, primary: redis.Redis) -> None:
    chunk = "x" * (20 * 1024)
    sid = service.create("u1", {"a": chunk})
    assert service.update(sid, {"b": chunk})
    assert service.update(sid, {"c": chunk})  # ~60 KiB: still under
    before = _snapshot(primary)
    with pytest.raises(InvalidSessionArgument, match=r"would be over 65536 bytes.*nothing was written"):
        service.update(sid, {"d": chunk})  # each write is small; the session would not be
    with pytest.raises(InvalidSessionArgument, match="would be over 65536 bytes"):
        service.rotate(sid, changes={"d": chunk})
    assert _snapshot(primary) == before  # not even last-seen moved
    assert service.update(sid, {"a": "small", "d": chunk})  # replacing an item frees its bytes
    assert service.update(sid, {"e": chunk}, remove=["b"])  # so does removing one
    session = service.get(sid)
    assert session is not None and sorted(session.data) == ["a", "c", "d", "e"]
    new_id = service.rotate(sid, changes={"role": "admin"})
    assert new_id is not None and service.get(sid) is None


def test_the_cap_is_a_setting(primary: redis.Redis, settings_env: Callable[..., None]) -> None:
    settings_env(SESSION_MAX_BYTES="2048")
    service = SessionService(primary)
    assert service.max_data_bytes == 2048
    with pytest.raises(InvalidSessionArgument, match="over 2048 bytes"):
        service.create("u1", {"x": "y" * 2048})
    assert service.create("u1", {"x": "y" * 1000})
