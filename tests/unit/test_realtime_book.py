"""SubscriptionBook: routing, dedupe, replay positions and reconnect bookkeeping (no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from cache.realtime.book import REPLAY_BATCH, SubscriptionBook
from cache.realtime.envelope import MAX_SEQ, Event, Subscription, envelope_from_body, parse_stream_id

pytestmark = pytest.mark.realtime

BODY = b'{"event":"tick","data":{},"timestamp":"2024-05-01T11:00:00.000Z"}'


def sub(kind: str, name: str, baseline: str = "0-0") -> Subscription:
    return Subscription(kind, name, lambda event: None, parse_stream_id(baseline))  # type: ignore[arg-type]


def subscribed(book: SubscriptionBook, *subs: Subscription) -> None:
    """Add `subs` and confirm their names, in the order Redis answers: confirmation first."""
    for s in subs:
        if book.apply("add", s) == "subscribe":
            book.confirmed("subscribe" if s.kind == "channel" else "psubscribe", s.name)


def message(channel: str, stream_id: str, pattern: str | None = None) -> dict[str, Any]:
    return {
        "type": "pmessage" if pattern else "message",
        "pattern": pattern,
        "channel": channel,
        "data": envelope_from_body(stream_id, BODY),
    }


def event(channel: str, stream_id: str) -> Event:
    return Event(stream_id, channel, "tick", {}, "2024-05-01T11:00:00.000Z")


def test_commands_turn_into_the_right_wire_actions() -> None:
    book = SubscriptionBook()
    a, b = sub("channel", "user:1:events"), sub("channel", "user:1:events")
    assert book.apply("add", a) == "subscribe"
    assert book.apply("add", b) is None  # confirmation pending: it will replay both
    book.confirmed("subscribe", "user:1:events")
    c = sub("channel", "user:1:events")
    assert book.apply("add", c) == "replay"  # already live: replay it at once
    assert book.apply("remove", a) is None
    assert book.apply("remove", a) is None  # removing twice is harmless
    assert book.apply("remove", b) is None
    assert book.apply("remove", c) == "unsubscribe"
    assert book.names("channel") == []


def test_a_subscription_sees_only_its_own_channel() -> None:
    book = SubscriptionBook()
    one, two = sub("channel", "user:1:events"), sub("channel", "user:2:events")
    subscribed(book, one, two)
    assert book.route(message("user:1:events", "5-0")) == [(one, event("user:1:events", "5-0"))]
    assert book.route(message("user:3:events", "6-0")) == []


def test_patterns_route_pmessages_and_keep_a_position_per_channel() -> None:
    book = SubscriptionBook()
    pattern = sub("pattern", "user:*:events")
    exact = sub("channel", "user:1:events")
    subscribed(book, pattern, exact)
    delivered = book.route(message("user:1:events", "5-0", pattern="user:*:events"))
    delivered += book.route(message("user:2:events", "3-0", pattern="user:*:events"))
    assert [(s, e.channel) for s, e in delivered] == [(pattern, "user:1:events"), (pattern, "user:2:events")]
    assert pattern.positions == {"user:1:events": (5, 0), "user:2:events": (3, 0)}
    assert exact.positions == {}


def test_live_duplicates_and_old_events_are_dropped() -> None:
    book = SubscriptionBook()
    s = sub("channel", "system:events", baseline="10-0")
    subscribed(book, s)
    assert book.route(message("system:events", "9-5")) == []  # before the subscription began
    assert len(book.route(message("system:events", "10-1"))) == 1
    assert book.route(message("system:events", "10-1")) == []  # already delivered
    assert (book.stats.live, book.stats.duplicates) == (1, 2)


def test_malformed_messages_are_counted_and_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    book = SubscriptionBook()
    subscribed(book, sub("channel", "system:events"))
    bad = {"type": "message", "pattern": None, "channel": "system:events", "data": "garbage"}
    assert book.route(bad) == []
    assert book.stats.malformed == 1
    assert "malformed message on system:events" in caplog.text


def test_replay_after_live_delivers_only_what_is_new() -> None:
    book = SubscriptionBook()
    s = sub("channel", "system:events")
    subscribed(book, s)
    book.route(message("system:events", "2-0"))
    replayed = {"system:events": [event("system:events", i) for i in ("1-0", "2-0", "3-0", "4-0")]}
    deliveries, next_positions = book.route_replay([s], replayed)
    assert [e.id for _, e in deliveries] == ["3-0", "4-0"]
    assert next_positions == {"system:events": "4-0"}
    _, next_positions = book.route_replay([s], {"system:events": []})
    assert next_positions == {}


def test_a_message_in_flight_across_a_resubscription_is_left_to_the_confirmations_replay() -> None:
    """The last subscription of a name leaves and a new one arrives before Redis answers.

    UNSUBSCRIBE and SUBSCRIBE are on the wire; a message published before the UNSUBSCRIBE
    still arrives ahead of both answers. Delivered live, it would move the new subscription
    past the events the confirmation's replay has to bring it first (a reloaded page lost
    them): it is dropped, and the replay delivers everything in order.
    """
    book = SubscriptionBook()
    old, new = sub("channel", "user:1:events"), sub("channel", "user:1:events", baseline="3-0")
    subscribed(book, old)
    assert book.apply("remove", old) == "unsubscribe"
    assert book.apply("add", new) == "subscribe"
    assert book.route(message("user:1:events", "6-0")) == []
    assert book.received({"type": "unsubscribe", "channel": b"user:1:events", "data": 0}) == ([], None)
    assert book.confirmed("subscribe", "user:1:events") == ("channel", [new])
    assert book.replay_batches([new], "channel", "user:1:events", []) == [{"user:1:events": "3-0"}]
    replayed = {"user:1:events": [event("user:1:events", i) for i in ("4-0", "5-0", "6-0")]}
    deliveries, _ = book.route_replay([new], replayed)
    assert [e.id for _, e in deliveries] == ["4-0", "5-0", "6-0"]


def test_replay_starts_at_the_oldest_position_of_the_subscriptions() -> None:
    book = SubscriptionBook()
    old, new = sub("channel", "user:1:events", "3-0"), sub("channel", "user:1:events", "8-0")
    assert book.replay_batches([old, new], "channel", "user:1:events", []) == [{"user:1:events": "3-0"}]


def test_pattern_replay_covers_known_and_newly_found_channels_in_batches() -> None:
    pattern = sub("pattern", "user:*:events", baseline="100-0")
    pattern.positions["user:a:events"] = (150, 2)
    found = [f"user:{i}:events" for i in range(REPLAY_BATCH + 10)]
    batches = SubscriptionBook().replay_batches([pattern], "pattern", "user:*:events", found)
    merged = {ch: pos for batch in batches for ch, pos in batch.items()}
    assert [len(b) for b in batches] == [REPLAY_BATCH, 11]
    assert merged["user:a:events"] == "150-2"
    assert merged["user:0:events"] == "100-0"


def test_confirmations_drive_readiness_and_count_reconnects() -> None:
    book = SubscriptionBook()
    s = sub("channel", "user:1:events")
    book.apply("add", s)
    assert not book.ready()
    assert book.confirmed("subscribe", "user:1:events") == ("channel", [s])
    assert book.ready() and book.stats.reconnects == 0
    book.connection_lost()
    book.attempt = 3
    assert not book.ready()
    book.confirmed("subscribe", b"user:1:events")
    assert (book.stats.reconnects, book.attempt, book.ready()) == (1, 0, True)
    # a second confirmation of a live name means redis-py reconnected underneath
    book.confirmed("subscribe", "user:1:events")
    assert book.stats.reconnects == 2


def test_confirmation_of_a_name_nobody_listens_to_replays_nothing() -> None:
    book = SubscriptionBook()
    assert book.confirmed("psubscribe", "user:*:events") == ("pattern", [])
    assert book.ready()


def test_subscription_accepts_each_id_once() -> None:
    s = sub("channel", "system:events", baseline=f"0-{MAX_SEQ}")
    assert not s.accept(event("system:events", "0-5"))
    assert s.accept(event("system:events", "1-0"))
    assert not s.accept(event("system:events", "1-0"))
    assert s.position("system:events") == (1, 0)
