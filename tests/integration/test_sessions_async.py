"""AsyncSessionService: the same behaviour as SessionService, on redis.asyncio (marker `sessions`).

Each scenario runs once through the sync service and once through the async one, on
the same server and fake clock, and both must observe the same things.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache import AsyncSessionService, keys
from cache.connections import Role, build_async_client
from cache.sessions.core import InvalidSessionArgument, SessionStoreUnavailable
from cache.sessions.service import SessionService

pytestmark = pytest.mark.sessions
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def run_async(body: Callable[[AsyncSessionService, FakeClock], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        clock = FakeClock()
        service = AsyncSessionService(build_async_client(Role.PRIMARY, **kwargs), clock=clock)
        try:
            return await body(service, clock)
        finally:
            await service.client.aclose()

    return asyncio.run(main())


async def lifecycle(service: Any, clock: FakeClock) -> list[Any]:
    """The observations of one session's life; `service` is sync or async (results awaited if needed)."""

    async def call(result: Any) -> Any:
        return await result if asyncio.iscoroutine(result) else result

    seen: list[Any] = []
    sid = await call(service.create(7, {"cart": [1, 2]}, ttl_s=60, idp_sid="kc-1", idp_sub="sub-7"))
    session = await call(service.get(sid))
    seen.append(
        (session.user_id, session.data, session.idp_sid, session.idp_sub, session.expires_at - clock.now)
    )
    seen.append(await call(service.update(sid, {"lang": "fr"}, remove=["cart"])))
    clock.now += 30
    seen.append(await call(service.refresh(sid)))
    new = await call(service.rotate(sid, changes={"role": "admin"}))
    seen.append((await call(service.get(sid)), (await call(service.get(new))).data))
    seen.append([s.data for s in await call(service.list_for_user(7))])
    other = await call(service.create(7, idp_sid="kc-2", idp_sub="sub-7"))
    seen.append(await call(service.logout_by_idp_session("kc-1")))
    seen.append((await call(service.get(new)), (await call(service.get(other))) is not None))
    seen.append(await call(service.logout_by_subject("sub-7")))
    seen.append(await call(service.destroy(await call(service.create(7)))))
    third = await call(service.create(7, ttl_s=10))
    clock.now += 11
    seen.append((await call(service.get(third)), await call(service.destroy_all_for_user(7))))
    seen.append(await call(service.get("not-an-id")))
    return seen


def test_async_lifecycle_matches_the_sync_one(primary: redis.Redis) -> None:
    clock = FakeClock()
    expected = asyncio.run(lifecycle(SessionService(primary, clock=clock), clock))
    assert primary.keys("kx:*") == []
    assert run_async(lifecycle) == expected
    assert run_async(lifecycle, decode_responses=False) == expected
    assert primary.keys("kx:*") == []
    assert expected[0] == (
        "7",
        {"cart": [1, 2]},
        "kc-1",
        "sub-7",
        60.0,
    )
    assert expected[5:8] == [1, (None, True), 1]


def test_sessions_are_shared_between_the_two(primary: redis.Redis) -> None:
    sync = SessionService(primary, clock=FakeClock())  # the same time as the async one's clock
    made = sync.create("alice", {"x": 1}, idp_sid="kc-1")

    async def body(service: AsyncSessionService, clock: FakeClock) -> tuple[Any, ...]:
        session = await service.get(made)
        mine = await service.create("alice", idp_sid="kc-1")
        return session, mine

    session, mine = run_async(body)
    assert session is not None and (session.data, session.idp_sid) == ({"x": 1}, "kc-1")
    assert sync.logout_by_idp_session("kc-1") == 2
    assert sync.get(mine) is None
    assert primary.exists(keys.idp_session_sessions("kc-1")) == 0


def test_async_refuses_what_the_sync_one_refuses(primary: redis.Redis) -> None:
    async def body(service: AsyncSessionService, clock: FakeClock) -> None:
        with pytest.raises(InvalidSessionArgument, match="idp_sid"):
            await service.create("alice", idp_sid="")
        with pytest.raises(InvalidSessionArgument, match="idp_sub"):
            await service.logout_by_subject("a\x00b")
        sid = await service.create("alice")
        with pytest.raises(InvalidSessionArgument, match="SESSION_MAX_BYTES"):
            await service.update(sid, {"big": "x" * 70_000})
        with pytest.raises(InvalidSessionArgument, match="both set and removed"):
            await service.update(sid, {"a": 1}, remove=["a"])
        assert await service.rotate("A" * 42 + "Q") is None
        assert await service.destroy(sid) is True
        assert await service.destroy(sid) is False

    run_async(body)


def test_async_fails_closed_when_redis_is_unreachable(redis_env: dict[str, str]) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis(
            host="127.0.0.1", port=9, retry=Retry(NoBackoff(), 0)
        )  # discard: refused
        service = AsyncSessionService(client)
        try:
            for attempt in (
                service.create("alice"),
                service.get("A" * 42 + "w"),
                service.logout_by_subject("s"),
            ):
                with pytest.raises(SessionStoreUnavailable, match="session store unavailable"):
                    await attempt
        finally:
            await client.aclose()

    asyncio.run(main())
