"""The I/O-free half of both subscribers: routing, dedupe, positions, what the connection confirmed.

`SubscriptionBook` makes every decision of `cache.realtime.subscriber.Subscriber` (a
thread) and `cache.realtime.async_service.AsyncSubscriber` (an asyncio task): what a
queued command sends, where a message goes, what to replay, how long to wait after a
lost connection, what a failed handler leaves behind. The loops only move bytes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal

import redis

from cache.realtime.envelope import (
    Event,
    InvalidEnvelope,
    Kind,
    SubscriberStats,
    Subscription,
    decode_envelope,
    format_stream_id,
    reconnect_delay_s,
)
from cache.text import as_text

log = logging.getLogger("cache.realtime.subscriber")  # one logger for both subscribers

DEFAULT_POLL_INTERVAL_S = 0.1  # how long a read blocks before the loop looks at commands and stop
REPLAY_BATCH = 500  # channels per pipelined replay read
Delivery = tuple[Subscription, Event]


def default_backoff(attempt: int) -> float:
    return reconnect_delay_s(attempt, random.random())


class SubscriptionBook:
    """Which subscriptions exist, what each has seen, and what the connection has confirmed.

    The subscriber loops (thread or asyncio) only move bytes; every decision is here.
    """

    def __init__(self) -> None:
        self._by_name: dict[tuple[Kind, str], list[Subscription]] = {}
        self._confirmed: set[tuple[Kind, str]] = set()
        self._had_connection = False
        self._lost = False
        self.attempt = 0  # failed connection attempts since the last confirmation
        self.stats = SubscriberStats()

    # -- subscriptions -------------------------------------------------------------

    def apply(
        self, op: Literal["add", "remove"], sub: Subscription
    ) -> Literal["subscribe", "unsubscribe", "replay"] | None:
        """A queued command -> what to send: a (P)SUBSCRIBE, an (P)UNSUBSCRIBE, a replay, or nothing.

        A subscription added to a name the connection already confirmed is replayed at
        once, before any further live message is read, so it sees its events in order.
        """
        key = (sub.kind, sub.name)
        if op == "add":
            subs = self._by_name.setdefault(key, [])
            subs.append(sub)
            if len(subs) == 1:
                return "subscribe"
            # Not confirmed yet: the confirmation on its way replays every subscription of the name.
            return "replay" if key in self._confirmed else None
        subs = self._by_name.get(key, [])
        if sub not in subs:
            return None
        subs.remove(sub)
        if subs:
            return None
        del self._by_name[key]
        self._confirmed.discard(key)
        return "unsubscribe"

    def names(self, kind: Kind) -> list[str]:
        return [name for k, name in self._by_name if k == kind]

    # -- the connection --------------------------------------------------------------

    def connection_lost(self) -> None:
        """Nothing is subscribed on the next connection until its confirmations arrive."""
        self._confirmed.clear()
        self._lost = self._had_connection

    def confirmed(self, message_type: str, name: Any) -> tuple[Kind, list[Subscription]]:
        """A (p)subscribe confirmation -> the subscriptions to replay now."""
        kind: Kind = "channel" if message_type == "subscribe" else "pattern"
        key = (kind, as_text(name))
        if key in self._confirmed:
            # redis-py reconnected underneath us and resubscribed everything: each
            # confirmation now replays what was published in between.
            self._confirmed.clear()
            self._lost = True
        if self._lost:
            self._lost = False
            self.stats.reconnects += 1
        self._had_connection = True
        self.attempt = 0
        subs = list(self._by_name.get(key, []))
        if subs:
            self._confirmed.add(key)
        return kind, subs

    def ready(self) -> bool:
        """Every subscription is confirmed on the current connection (and so replayed)."""
        return set(self._by_name) <= self._confirmed

    # -- events ----------------------------------------------------------------------

    def route(self, message: Mapping[str, Any]) -> list[Delivery]:
        """A pub/sub message -> the (subscription, event) pairs to deliver, duplicates dropped.

        A payload that is not an envelope is logged and counted, never raised: one bad
        publisher must not stop the subscriber. A message for a name whose (re)subscription
        is not confirmed yet is dropped: it was in flight for an earlier subscription (the
        name was unsubscribed and subscribed again), and the confirmation's replay delivers
        it in order. Accepting it would move the new subscriptions past what that replay
        still has to deliver.
        """
        kind: Kind = "pattern" if message["type"] == "pmessage" else "channel"
        channel = as_text(message["channel"])
        name = as_text(message["pattern"]) if kind == "pattern" else channel
        subs = self._by_name.get((kind, name))
        if not subs or (kind, name) not in self._confirmed:
            return []
        try:
            event = decode_envelope(channel, message["data"])
        except InvalidEnvelope as exc:
            self.stats.malformed += 1
            log.warning("skipped a malformed message on %s: %s (%.200r)", channel, exc, message["data"])
            return []
        return self._accept(subs, [event], "live")

    def replay_batches(
        self, subs: list[Subscription], kind: Kind, name: str, matching: list[str]
    ) -> list[dict[str, str]]:
        """Replay start positions, in batches: per channel the oldest position among `subs`.

        For a pattern, `matching` (streams found by SCAN) adds channels first used while
        the subscriber was away; they start at the subscription's baseline.
        """
        if kind == "channel":
            channels = [name]
        else:
            channels = sorted({ch for sub in subs for ch in sub.positions}.union(matching))
        return [
            {
                ch: format_stream_id(min(sub.position(ch) for sub in subs))
                for ch in channels[i : i + REPLAY_BATCH]
            }
            for i in range(0, len(channels), REPLAY_BATCH)
        ]

    def route_replay(
        self, subs: list[Subscription], events: Mapping[str, list[Event]]
    ) -> tuple[list[Delivery], dict[str, str]]:
        """Replayed events -> the pairs to deliver, and where to read on (channels that returned any)."""
        out = []
        for channel_events in events.values():
            out.extend(self._accept(subs, channel_events, "replayed"))
        return out, {ch: evs[-1].id for ch, evs in events.items() if evs}

    # -- what the loops hand over -------------------------------------------------------

    def received(
        self, message: Mapping[str, Any]
    ) -> tuple[list[Delivery], tuple[Kind, list[Subscription], str] | None]:
        """A message read from the connection -> events to deliver, and a replay to run
        (`(kind, subscriptions, name)`) when it confirmed a (P)SUBSCRIBE."""
        if message["type"] in ("message", "pmessage"):
            return self.route(message), None
        if message["type"] in ("subscribe", "psubscribe"):
            kind, subs = self.confirmed(message["type"], message["channel"])
            if subs:
                return [], (kind, subs, as_text(message["channel"]))
        return [], None

    def lost(self, exc: BaseException, backoff: Callable[[int], float]) -> float:
        """The connection failed with `exc`: logged, counted; returns the seconds to wait."""
        delay = backoff(self.attempt)
        self.attempt += 1
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError):
            log.warning("realtime subscriber lost Redis (%s); reconnecting in %.2f s", exc, delay)
        else:
            log.error("realtime subscriber failed; reconnecting in %.2f s", delay, exc_info=exc)
        return delay

    def handler_failed(self, sub: Subscription, event: Event, exc: BaseException) -> None:
        """A handler raised: logged and counted; its event counts as delivered."""
        self.stats.handler_errors += 1
        log.error(
            "realtime handler %r failed on %s event %s", sub.handler, event.channel, event.id, exc_info=exc
        )

    def _accept(
        self, subs: list[Subscription], events: list[Event], counter: Literal["live", "replayed"]
    ) -> list[Delivery]:
        out = []
        for event in events:
            for sub in subs:
                if sub.accept(event):
                    out.append((sub, event))
                    setattr(self.stats, counter, getattr(self.stats, counter) + 1)
                else:
                    self.stats.duplicates += 1
        return out


def pubsub_command(action: str | None, sub: Subscription) -> str | None:
    """The PubSub method a `SubscriptionBook.apply` action calls for `sub`, or None."""
    if action == "subscribe":
        return "subscribe" if sub.kind == "channel" else "psubscribe"
    if action == "unsubscribe":
        return "unsubscribe" if sub.kind == "channel" else "punsubscribe"
    return None
