"""Real-time events against a real redis-server (marker `realtime`)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import orjson
import pytest
import redis

from cache.errors import RedisUnavailable
from cache.realtime.envelope import Event, InvalidEvent
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from tests.integration.realtime_fixtures import WAIT_S, PrivateRedis, Recorder
from tests.waiting import wait_until

pytestmark = pytest.mark.realtime
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)

NOW = datetime(2024, 5, 1, 11, 0, 0, 123000, tzinfo=UTC)


def test_publish_sends_the_envelope_and_stores_it_under_the_same_id(primary: redis.Redis) -> None:
    service = RealtimeService(clock=lambda: NOW.timestamp())
    pubsub = primary.pubsub()
    pubsub.subscribe("user:42:events", "system:events")
    for _ in range(2):
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    user_id = service.publish_user_event(42, "report.ready", {"report_id": "r-1", "rows": 3})
    system_id = service.publish_system_event("maintenance", {"minutes": 5})
    got = [pubsub.get_message(timeout=5), pubsub.get_message(timeout=5)]
    pubsub.close()
    assert [m["channel"] for m in got] == [b"user:42:events", b"system:events"]
    assert orjson.loads(got[0]["data"]) == {
        "id": user_id,
        "event": "report.ready",
        "data": {"report_id": "r-1", "rows": 3},
        "timestamp": "2024-05-01T11:00:00.123Z",
    }
    assert orjson.loads(got[1]["data"])["id"] == system_id
    assert [e.id for e in service.events_since("user:42:events")] == [user_id]
    assert service.events_since(42)[0].to_json() == got[0]["data"].decode()


def test_events_since_replays_in_order_without_duplicates(primary: redis.Redis) -> None:
    service = RealtimeService()
    ids = [service.publish_user_event("u1", "step", {"n": n}) for n in range(25)]
    service.publish_user_event("u2", "other", {})
    assert [e.id for e in service.events_since("u1")] == ids
    assert [e.data["n"] for e in service.events_since("user:u1:events", ids[9])] == list(range(10, 25))
    assert service.events_since("u1", ids[-1]) == []
    pages: list[Event] = []
    last = "0-0"
    while page := service.events_since("u1", last, count=7):
        pages += page
        last = page[-1].id
    assert [e.id for e in pages] == ids
    assert service.latest_id("user:u1:events") == ids[-1]
    assert service.latest_id("user:nobody:events") == "0-0"


@pytest.mark.parametrize(
    ("channel_or_user", "last_id", "message"),
    [("a:b", "0", "expected 'system:events'"), ("42", "last-week", "event id"), ("", "0", "expected")],
)
def test_events_since_rejects_bad_input(
    primary: redis.Redis, channel_or_user: str, last_id: str, message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        RealtimeService().events_since(channel_or_user, last_id)


def test_stream_stays_bounded_under_100000_events(primary: redis.Redis) -> None:
    service = RealtimeService(stream_maxlen=1000, stream_ttl_s=3600)
    last = ""
    for n in range(100_000):
        last = service.publish_system_event("tick", {"n": n})
    node = int(primary.config_get("stream-node-max-entries")["stream-node-max-entries"])
    length = primary.xlen("kx:stream:system:events")
    assert 1000 <= length <= 1000 + node  # MAXLEN ~ trims whole nodes
    assert 0 < primary.pttl("kx:stream:system:events") <= 3600 * 1000
    replayed = service.events_since("system:events", "0-0", count=length)
    assert replayed[-1].id == last
    assert [e.data["n"] for e in replayed] == list(range(100_000 - length, 100_000))


def test_200_channels_on_one_connection_each_callback_sees_only_its_own(primary: redis.Redis) -> None:
    service = RealtimeService()
    recorders = {user: Recorder() for user in range(200)}
    with_system = Recorder()
    with Subscriber(service=service) as subscriber:
        for user, recorder in recorders.items():
            subscriber.subscribe_user(user, recorder)
        subscriber.subscribe_system(with_system)
        assert subscriber.wait_ready(30)
        sent = {user: service.publish_user_event(user, "hello", {"user": user}) for user in recorders}
        system_id = service.publish_system_event("all", {})
        wait_until(
            lambda: all(r.ids() for r in recorders.values()) and bool(with_system.ids()),
            WAIT_S,
            "an event for every user and the system",
        )
        clients = primary.client_list()
        assert with_system.ids() == [system_id]
        for user, recorder in recorders.items():
            assert recorder.ids() == [sent[user]]
            assert recorder.events[0].channel == f"user:{user}:events"
    subscribers = [c for c in clients if int(c.get("sub", 0)) > 0]
    assert len(subscribers) == 1 and int(subscribers[0]["sub"]) == 201


def test_malformed_payload_is_skipped_and_logged(
    primary: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cache.realtime.subscriber")
    service = RealtimeService()
    recorder = Recorder()
    with Subscriber(service=service) as subscriber:
        subscriber.subscribe_user(7, recorder)
        assert subscriber.wait_ready(30)
        first = service.publish_user_event(7, "before", {})
        primary.publish("user:7:events", "definitely not json")
        primary.publish("user:7:events", '{"id": "1-0", "event": "x"}')
        second = service.publish_user_event(7, "after", {})
        assert recorder.wait_for(2) == [first, second]
        assert subscriber.stats.malformed == 2
    assert "malformed message on user:7:events" in caplog.text


def test_a_failing_handler_is_logged_and_the_subscriber_goes_on(
    primary: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    service = RealtimeService()
    recorder = Recorder()

    def explode(event: Event) -> None:
        recorder(event)
        if event.data.get("explode"):
            raise RuntimeError("handler bug")

    with Subscriber(service=service) as subscriber:
        subscriber.subscribe_system(explode)
        assert subscriber.wait_ready(30)
        ids = [service.publish_system_event("e", {"explode": n == 0}) for n in range(3)]
        assert recorder.wait_for(3) == ids
        assert subscriber.stats.handler_errors == 1
    assert "handler bug" in caplog.text


def test_events_published_right_after_subscribe_are_not_lost(primary: redis.Redis) -> None:
    service = RealtimeService()
    with Subscriber(service=service) as subscriber:
        recorder = Recorder()
        subscriber.subscribe_user("fast", recorder)
        ids = [service.publish_user_event("fast", "e", {"n": n}) for n in range(20)]  # no wait_ready
        assert recorder.wait_for(20) == ids


def test_since_resumes_from_a_last_event_id_then_goes_live(primary: redis.Redis) -> None:
    service = RealtimeService()
    old = [service.publish_user_event(5, "e", {"n": n}) for n in range(5)]
    recorder = Recorder()
    with Subscriber(service=service) as subscriber:
        subscriber.subscribe_user(5, recorder, since=old[1])
        assert subscriber.wait_ready(30)
        new = service.publish_user_event(5, "e", {"n": 5})
        assert recorder.wait_for(4) == [*old[2:], new]
        with pytest.raises(InvalidEvent, match="event id"):
            subscriber.subscribe_user(5, recorder, since="garbage")


def test_two_subscriptions_share_a_channel_and_unsubscribe_independently(primary: redis.Redis) -> None:
    service = RealtimeService()
    first, second = Recorder(), Recorder()
    with Subscriber(service=service) as subscriber:
        sub1 = subscriber.subscribe_user(9, first)
        sub2 = subscriber.subscribe_user(9, second)
        assert subscriber.wait_ready(30)
        a = service.publish_user_event(9, "a", {})
        assert first.wait_for(1) == [a] and second.wait_for(1) == [a]
        subscriber.unsubscribe(sub1)
        assert subscriber.wait_ready(30)
        b = service.publish_user_event(9, "b", {})
        assert second.wait_for(2) == [a, b]
        assert primary.pubsub_numsub("user:9:events") == [(b"user:9:events", 1)]
        subscriber.unsubscribe(sub2)
        wait_until(
            lambda: primary.pubsub_numsub("user:9:events") == [(b"user:9:events", 0)],
            WAIT_S,
            "no subscriber left on user:9:events",
        )
        service.publish_user_event(9, "c", {})
        marker = Recorder()
        subscriber.subscribe_user(9, marker)  # a fresh subscription proves the loop processed the rest
        d = service.publish_user_event(9, "d", {})
        assert marker.wait_for(1) == [d]
    assert first.ids() == [a] and second.ids() == [a, b]


def test_pattern_subscription_sees_every_matching_channel(primary: redis.Redis) -> None:
    service = RealtimeService()
    recorder = Recorder()
    with Subscriber(service=service) as subscriber:
        subscriber.psubscribe("user:*:events", recorder)
        assert subscriber.wait_ready(30)
        ids = [service.publish_user_event(user, "e", {}) for user in ("a", "b", "c")]
        service.publish_system_event("not-for-users", {})
        events = recorder.wait_for(3)
    assert events == ids
    assert [e.channel for e in recorder.events] == ["user:a:events", "user:b:events", "user:c:events"]


def test_stop_is_clean_even_from_inside_a_handler(primary: redis.Redis) -> None:
    service = RealtimeService()
    subscriber = Subscriber(service=service).start()
    stopped = threading.Event()

    def stop_on_first(event: Event) -> None:
        subscriber.stop()
        stopped.set()

    subscriber.subscribe_system(stop_on_first)
    service.publish_system_event("bye", {})
    assert stopped.wait(30)
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name == "kryonix-realtime"],
        WAIT_S,
        "the subscriber thread gone",
    )
    wait_until(
        lambda: not [c for c in primary.client_list() if int(c.get("sub", 0)) > 0],
        WAIT_S,
        "no subscribed client left",
    )


def test_publish_while_redis_is_down_names_the_setting(private_redis: PrivateRedis) -> None:
    service = private_redis.service()
    service.publish_system_event("up", {})
    private_redis.server.kill()
    with pytest.raises(RedisUnavailable) as info:
        service.publish_system_event("down", {})
    assert info.value.setting == "REDIS_URL"
    with pytest.raises(RedisUnavailable):
        private_redis.subscriber(service).subscribe_system(Recorder())


def test_a_replay_overlapping_live_messages_delivers_each_event_once(primary: redis.Redis) -> None:
    service = RealtimeService()
    inside, release = threading.Event(), threading.Event()
    first, second = Recorder(), Recorder()

    def slow(event: Event) -> None:
        first(event)
        inside.set()
        release.wait(30)

    with Subscriber(service=service) as subscriber:
        subscriber.subscribe_user(11, slow)
        assert subscriber.wait_ready(30)
        a = service.publish_user_event(11, "a", {})
        assert inside.wait(30)  # the subscriber thread is busy in `slow`
        subscriber.subscribe_user(11, second, since="0-0")  # its replay will include b and c ...
        b = service.publish_user_event(11, "b", {})  # ... which also wait on the socket, live
        c = service.publish_user_event(11, "c", {})
        release.set()
        d = service.publish_user_event(11, "d", {})
        assert second.wait_for(4) == [a, b, c, d]
        assert first.wait_for(4) == [a, b, c, d]
        assert subscriber.stats.duplicates >= 2
    assert second.ids() == [a, b, c, d]
