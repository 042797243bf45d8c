"""Redis restarts under a subscriber: reconnect, resubscribe, replay; each event once, in order."""

from __future__ import annotations

import threading

import pytest

from cache.errors import RedisUnavailable
from tests.integration.realtime_fixtures import WAIT_S, PrivateRedis, ReconnectGate, Recorder
from tests.waiting import wait_until

pytestmark = pytest.mark.realtime


def test_events_published_while_the_subscriber_is_away_arrive_once_in_order(
    private_redis: PrivateRedis,
) -> None:
    service = private_redis.service()
    gate = ReconnectGate()
    recorder = Recorder()
    subscriber = private_redis.subscriber(service, backoff=gate)
    with subscriber:
        subscriber.subscribe_user(1, recorder)
        assert subscriber.wait_ready(30)
        before = [service.publish_user_event(1, "before", {"n": n}) for n in range(3)]
        assert recorder.wait_for(3) == before
        try:
            private_redis.server.kill()
            assert gate.entered.wait(30), "the subscriber never noticed the dead server"
            private_redis.server.start()
            # The subscriber is held in its backoff: these can only arrive through replay.
            during = [service.publish_user_event(1, "during", {"n": n}) for n in range(5)]
        finally:
            gate.release()
        assert subscriber.wait_ready(30)
        after = service.publish_user_event(1, "after", {})
        assert recorder.wait_for(9) == [*before, *during, after]
        stats = subscriber.stats
    assert stats.replayed == 5
    assert stats.reconnects == 1
    assert recorder.ids() == [*before, *during, after]  # nothing late, nothing twice


def test_restart_right_under_a_live_subscriber_loses_and_repeats_nothing(private_redis: PrivateRedis) -> None:
    service = private_redis.service()
    recorder = Recorder()
    with private_redis.subscriber(service) as subscriber:
        subscriber.subscribe_system(recorder)
        assert subscriber.wait_ready(30)
        ids = [service.publish_system_event("before", {"n": n}) for n in range(10)]
        # A supervisor's restart (SIGTERM: AOF flushed), while those may still be in flight.
        private_redis.server.restart(kill=False)
        ids += [service.publish_system_event("after", {"n": n}) for n in range(10)]
        assert recorder.wait_for(20) == ids
        wait_until(lambda: subscriber.stats.reconnects >= 1, WAIT_S, "the subscriber reconnected")
    assert recorder.ids() == ids


def test_continuous_publishing_across_a_crash(private_redis: PrivateRedis) -> None:
    """SIGKILL with `appendfsync everysec`: Redis itself may lose its last second of writes.

    What survived in Redis is delivered exactly once, in order; so is everything
    published after the restart; nothing is delivered twice.
    """
    service = private_redis.service(stream_maxlen=100_000)
    recorder = Recorder()
    published: list[str] = []
    done = threading.Event()

    def publish_forever() -> None:
        n = 0
        while not done.is_set() and n < 5000:
            try:
                published.append(service.publish_user_event("busy", "tick", {"n": n}))
            except RedisUnavailable:
                pass  # the server is down this instant
            n += 1

    with private_redis.subscriber(service) as subscriber:
        subscriber.subscribe_user("busy", recorder)
        assert subscriber.wait_ready(30)
        publisher = threading.Thread(target=publish_forever)
        publisher.start()
        try:
            wait_until(lambda: len(published) >= 50, WAIT_S, "50 events published")
            private_redis.server.restart()  # SIGKILL, then start on the same port and data dir
            after_restart = len(published)
            wait_until(
                lambda: len(published) >= after_restart + 50, WAIT_S, "50 events published after the restart"
            )
        finally:
            done.set()
            publisher.join(30)
        kept = [e.id for e in service.events_since("busy", "0-0", count=100_000)]
        wait_until(lambda: set(kept) <= set(recorder.ids()), WAIT_S, "every kept event delivered")
        assert set(published[after_restart + 1 :]) <= set(recorder.ids())
        assert subscriber.stats.reconnects >= 1
    got = recorder.ids()
    assert sorted(got, key=lambda i: tuple(map(int, i.split("-")))) == got  # in order
    assert len(set(got)) == len(got)  # none twice


def test_a_pattern_subscriber_replays_channels_first_used_while_it_was_away(
    private_redis: PrivateRedis,
) -> None:
    service = private_redis.service()
    gate = ReconnectGate()
    recorder = Recorder()
    with private_redis.subscriber(service, backoff=gate) as subscriber:
        subscriber.psubscribe("user:*:events", recorder)
        assert subscriber.wait_ready(30)
        first = service.publish_user_event("known", "e", {})
        assert recorder.wait_for(1) == [first]
        try:
            private_redis.server.kill()
            assert gate.entered.wait(30)
            private_redis.server.start()
            known = service.publish_user_event("known", "e", {})
            newcomer = [service.publish_user_event("newcomer", "e", {"n": n}) for n in range(3)]
            service.publish_system_event("ignored", {})
        finally:
            gate.release()
        assert subscriber.wait_ready(30)
        events = recorder.wait_for(5)
    by_channel = {
        ch: [e.id for e in recorder.events if e.channel == ch]
        for ch in ("user:known:events", "user:newcomer:events")
    }
    assert by_channel == {"user:known:events": [first, known], "user:newcomer:events": newcomer}
    assert len(events) == 5


def test_subscriptions_made_while_redis_is_down_start_when_it_returns(private_redis: PrivateRedis) -> None:
    service = private_redis.service()
    gate = ReconnectGate()
    recorder = Recorder()
    with private_redis.subscriber(service, backoff=gate) as subscriber:
        subscriber.subscribe_user(3, Recorder())
        assert subscriber.wait_ready(30)
        try:
            private_redis.server.kill()
            assert gate.entered.wait(30)
            subscriber.subscribe_user(4, recorder, since="0-0")  # no round trip needed with `since`
            private_redis.server.start()
            ids = [service.publish_user_event(4, "e", {"n": n}) for n in range(3)]
        finally:
            gate.release()
        assert recorder.wait_for(3) == ids
