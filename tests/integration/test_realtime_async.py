"""The asyncio variant: same delivery, dedupe and reconnect behaviour as the threaded one."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest

from cache.connections import Role, build_async_client, build_client
from cache.realtime.async_service import AsyncRealtimeService, AsyncSubscriber
from cache.realtime.envelope import Event, InvalidEvent
from cache.realtime.service import RealtimeService
from tests.integration.realtime_fixtures import WAIT_S, PrivateRedis, ReconnectGate, Recorder
from tests.waiting import async_wait_until

pytestmark = pytest.mark.realtime
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)


class AsyncRedis(Protocol):
    def async_service(self) -> AsyncRealtimeService: ...
    def async_subscriber(self, service: AsyncRealtimeService, **kwargs: Any) -> AsyncSubscriber: ...
    def service(self) -> RealtimeService: ...


class SharedRedis:
    """The session's PRIMARY, the single server or the cluster, for tests that stop nothing."""

    def async_service(self) -> AsyncRealtimeService:
        return AsyncRealtimeService(build_async_client(Role.PRIMARY))

    def async_subscriber(self, service: AsyncRealtimeService, **kwargs: Any) -> AsyncSubscriber:
        return AsyncSubscriber(service=service, **kwargs)  # its own client, closed when it stops

    def service(self) -> RealtimeService:
        return RealtimeService(build_client(Role.PRIMARY))


@pytest.fixture
def shared_redis(redis_env: dict[str, str]) -> SharedRedis:
    return SharedRedis()


def run(make: Callable[[AsyncRealtimeService], Awaitable[None]], redis_: AsyncRedis) -> None:
    async def main() -> None:
        service = redis_.async_service()
        try:
            await make(service)
        finally:
            await service.client.aclose()

    asyncio.run(main())


def test_async_publish_and_replay_match_the_sync_service(shared_redis: SharedRedis) -> None:
    sync = shared_redis.service()

    async def body(service: AsyncRealtimeService) -> None:
        first = await service.publish_user_event(8, "report.ready", {"n": 1})
        second = sync.publish_user_event(8, "report.ready", {"n": 2})
        third = await service.publish_system_event("maintenance", {})
        assert [e.id for e in await service.events_since(8)] == [first, second]
        assert [e.to_json() for e in await service.events_since("user:8:events", first)] == [
            e.to_json() for e in sync.events_since(8, first)
        ]
        assert await service.latest_id("system:events") == third
        assert await service.channels_matching("user:*:events") == ["user:8:events"]
        with pytest.raises(InvalidEvent, match="user_id"):
            await service.publish_user_event("a b", "x", {})
        with pytest.raises(InvalidEvent, match="event id"):
            await service.events_since(8, "nope")

    run(body, shared_redis)


def test_async_200_channels_on_one_connection_each_handler_sees_only_its_own(
    private_redis: PrivateRedis,
) -> None:
    recorders = {user: Recorder() for user in range(200)}
    clients: list[dict[str, str]] = []

    async def body(service: AsyncRealtimeService) -> None:
        async with private_redis.async_subscriber(service) as subscriber:
            for user, recorder in recorders.items():
                await subscriber.subscribe_user(user, recorder)
            assert await subscriber.wait_ready(WAIT_S)
            sent = {user: await service.publish_user_event(user, "hello", {}) for user in recorders}
            await async_wait_until(
                lambda: all(r.ids() for r in recorders.values()), WAIT_S, "an event for every user"
            )
            clients.extend(private_redis.server.client().client_list())
            for user, recorder in recorders.items():
                assert recorder.ids() == [sent[user]]
                assert recorder.events[0].channel == f"user:{user}:events"

    run(body, private_redis)
    subscribed = [c for c in clients if int(c.get("sub", 0)) > 0]
    assert len(subscribed) == 1 and int(subscribed[0]["sub"]) == 200


def test_async_coroutine_handlers_malformed_payloads_and_unsubscribe(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.realtime.subscriber")
    got: list[str] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        got.append(event.id)

    async def body(service: AsyncRealtimeService) -> None:
        async with private_redis.async_subscriber(service) as subscriber:
            sub = await subscriber.subscribe_system(handler)
            assert await subscriber.wait_ready(WAIT_S)
            a = await service.publish_system_event("a", {})
            await service.client.publish("system:events", "{not json")
            b = await service.publish_system_event("b", {})
            await async_wait_until(lambda: len(got) >= 2, WAIT_S, "two events handled")
            assert got == [a, b]
            assert subscriber.stats.malformed == 1
            subscriber.unsubscribe(sub)
            assert await subscriber.wait_ready(WAIT_S)
            await async_wait_until(
                lambda: service_numsub(private_redis) == 0, WAIT_S, "no subscriber left on system:events"
            )

    run(body, private_redis)
    assert "malformed message on system:events" in caplog.text


def service_numsub(redis_: PrivateRedis) -> int:
    client = redis_.server.client()
    try:
        return int(client.pubsub_numsub("system:events")[0][1])
    finally:
        client.close()


def test_async_replay_overlapping_live_messages_delivers_each_event_once(shared_redis: SharedRedis) -> None:
    first, second = Recorder(), Recorder()

    async def body(service: AsyncRealtimeService) -> None:
        inside, release = asyncio.Event(), asyncio.Event()

        async def slow(event: Event) -> None:
            first(event)
            inside.set()
            await release.wait()

        async with shared_redis.async_subscriber(service) as subscriber:
            await subscriber.subscribe_user(11, slow)
            assert await subscriber.wait_ready(WAIT_S)
            a = await service.publish_user_event(11, "a", {})
            await asyncio.wait_for(inside.wait(), WAIT_S)
            await subscriber.subscribe_user(11, second, since="0-0")
            b = await service.publish_user_event(11, "b", {})
            c = await service.publish_user_event(11, "c", {})
            release.set()
            d = await service.publish_user_event(11, "d", {})
            await async_wait_until(
                lambda: len(second.ids()) >= 4 and len(first.ids()) >= 4,
                WAIT_S,
                "four events for each handler",
            )
            assert second.ids() == first.ids() == [a, b, c, d]

    run(body, shared_redis)


def test_async_a_channel_unsubscribed_and_subscribed_again_misses_nothing(shared_redis: SharedRedis) -> None:
    """A page reload: the channel's last subscription leaves and a new one resumes at once.

    Events keep arriving meanwhile, so some are in flight on the connection when the new
    subscription starts; each new subscription must still get every event after the
    position it resumed from, in order (the replay's, not the in-flight copies').
    """
    sync = shared_redis.service()
    published: list[str] = []
    stop = threading.Event()

    def publish_steadily() -> None:
        while not stop.wait(0.002):  # far fewer events than the stream keeps
            published.append(sync.publish_user_event(12, "tick", {}))

    async def body(service: AsyncRealtimeService) -> None:
        async with shared_redis.async_subscriber(service) as subscriber:
            recorder = Recorder()
            current = await subscriber.subscribe_user(12, recorder, since="0-0")
            publisher = threading.Thread(target=publish_steadily)
            publisher.start()
            try:
                for _ in range(20):
                    await async_wait_until(lambda: len(recorder.ids()) >= 3, WAIT_S, "3 events")
                    resume = recorder.ids()[-1]
                    subscriber.unsubscribe(current)
                    recorder = Recorder()
                    current = await subscriber.subscribe_user(12, recorder, since=resume)
                    await async_wait_until(lambda: len(recorder.ids()) >= 3, WAIT_S, "3 after resuming")
                    rounds.append((resume, recorder.ids()))
            finally:
                stop.set()
                publisher.join(WAIT_S)

    rounds: list[tuple[str, list[str]]] = []
    run(body, shared_redis)
    for resume, got in rounds:
        after = published.index(resume) + 1
        assert got == published[after : after + len(got)]


def test_async_events_published_while_away_arrive_once_in_order(private_redis: PrivateRedis) -> None:
    sync = private_redis.service()
    gate = ReconnectGate()
    recorder = Recorder()
    during: list[str] = []

    def restart_and_publish() -> None:
        # Runs beside the event loop, which the gate holds: the subscriber is provably away.
        try:
            assert gate.entered.wait(WAIT_S)
            private_redis.server.start()
            during.extend(sync.publish_user_event(1, "during", {"n": n}) for n in range(5))
        finally:
            gate.release()

    async def body(service: AsyncRealtimeService) -> None:
        async with private_redis.async_subscriber(service, backoff=gate) as subscriber:
            await subscriber.subscribe_user(1, recorder)
            assert await subscriber.wait_ready(WAIT_S)
            before = [await service.publish_user_event(1, "before", {"n": n}) for n in range(3)]
            await async_wait_until(lambda: len(recorder.ids()) >= 3, WAIT_S, "3 events")
            helper = threading.Thread(target=restart_and_publish)
            helper.start()
            private_redis.server.kill()
            await async_wait_until(lambda: len(recorder.ids()) >= 8, WAIT_S, "8 events")
            helper.join(WAIT_S)
            after = await service.publish_user_event(1, "after", {})
            await async_wait_until(lambda: len(recorder.ids()) >= 9, WAIT_S, "9 events")
            assert recorder.ids() == [*before, *during, after]
            assert subscriber.stats.replayed == 5
            assert subscriber.stats.reconnects == 1

    run(body, private_redis)


def test_async_restart_under_a_live_subscriber_loses_and_repeats_nothing(private_redis: PrivateRedis) -> None:
    recorder = Recorder()

    async def body(service: AsyncRealtimeService) -> None:
        async with private_redis.async_subscriber(service) as subscriber:
            await subscriber.psubscribe("user:*:events", recorder)
            assert await subscriber.wait_ready(WAIT_S)
            ids = [await service.publish_user_event(n % 3, "before", {}) for n in range(9)]
            private_redis.server.restart(kill=False)  # SIGTERM: every acknowledged event is kept
            ids += [await service.publish_user_event(n % 3, "after", {}) for n in range(9)]
            await async_wait_until(lambda: len(recorder.ids()) >= 18, WAIT_S, "18 events")
            for user in range(3):
                channel = f"user:{user}:events"
                expected = [i for n, i in enumerate(ids) if n % 3 == user]
                assert [e.id for e in recorder.events if e.channel == channel] == expected
            assert len(recorder.ids()) == 18
            await async_wait_until(
                lambda: subscriber.stats.reconnects >= 1, WAIT_S, "the subscriber reconnected"
            )

    run(body, private_redis)
