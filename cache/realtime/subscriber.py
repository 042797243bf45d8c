"""A pub/sub subscriber that does not lose events: one connection, a thread, replay on reconnect.

One connection carries every channel and pattern. Each subscription has its own
handler and sees only its own channel (or pattern). Every SUBSCRIBE confirmation -
the first one, and each one after a reconnect - triggers a replay from the stream of
everything after the last event that subscription saw, and live messages are
deduplicated by event id; together: every event published after `subscribe()`
returned reaches the handler once, in order per channel, across Redis restarts.

`cache.realtime.book.SubscriptionBook` is the I/O-free half (routing, dedupe, positions,
what the connection has confirmed, reconnect delays), shared with the asyncio twin in
`cache.realtime.async_service`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import redis

from cache import connections, keys
from cache.realtime.book import DEFAULT_POLL_INTERVAL_S, SubscriptionBook, default_backoff, pubsub_command
from cache.realtime.envelope import (
    Event,
    EventHandler,
    Kind,
    SubscriberStats,
    Subscription,
    parse_stream_id,
    validate_channel,
    validate_pattern,
    validate_user_id,
)
from cache.realtime.service import DEFAULT_REPLAY_COUNT, RealtimeService

log = logging.getLogger(__name__)


class Subscriber:
    """Subscribe handlers to event channels over one connection served by a background thread.

    Args:
        client: the client the subscription connection comes from; defaults to
            `connections.pubsub_client()` (PRIMARY, no socket timeout, str responses).
        service: used for replays and start positions; defaults to `RealtimeService()`.
        backoff: seconds to wait before reconnect attempt `n` (0-based).
        poll_interval_s: longest a read blocks before the thread checks for commands and stop.
        replay_count: events per channel per replay read.

    Handlers run on the subscriber thread, one at a time; a handler that raises is
    logged and its event counts as delivered. Use as a context manager, or `start()`
    and `stop()`.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        service: RealtimeService | None = None,
        backoff: Callable[[int], float] = default_backoff,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        replay_count: int = DEFAULT_REPLAY_COUNT,
    ) -> None:
        self._service = service if service is not None else RealtimeService()
        self._own_client = client is None
        self.client = client
        self._backoff = backoff
        self._poll_interval_s = poll_interval_s
        self._replay_count = replay_count
        self._book = SubscriptionBook()
        self._commands: queue.SimpleQueue[tuple[Literal["add", "remove"], Subscription]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: redis.client.PubSub | None = None

    def subscribe(self, channel: str, handler: EventHandler, *, since: str | None = None) -> Subscription:
        """Deliver every event of `channel` published after this call (or after event id `since`).

        Raises:
            InvalidEvent: `channel` is not an event channel or `since` is not an event id.
            RedisUnavailable: without `since`, the current position could not be read.
        """
        validate_channel(channel)
        start = since if since is not None else self._service.latest_id(channel)
        return self._enqueue("add", Subscription("channel", channel, handler, parse_stream_id(start)))

    def subscribe_user(
        self, user_id: str | int, handler: EventHandler, *, since: str | None = None
    ) -> Subscription:
        """`subscribe` to `user:<id>:events`."""
        return self.subscribe(keys.user_channel(validate_user_id(user_id)), handler, since=since)

    def subscribe_system(self, handler: EventHandler, *, since: str | None = None) -> Subscription:
        """`subscribe` to `system:events`."""
        return self.subscribe(keys.SYSTEM_CHANNEL, handler, since=since)

    def psubscribe(self, pattern: str, handler: EventHandler, *, since: str | None = None) -> Subscription:
        """Deliver events of every channel matching the glob `pattern` (e.g. `user:*:events`).

        A reconnect replays by SCANning for matching streams, so channels first used while
        the subscriber was away are not lost either.
        """
        validate_pattern(pattern)
        start = since if since is not None else self._service.now_id()
        return self._enqueue("add", Subscription("pattern", pattern, handler, parse_stream_id(start)))

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to `subscription`; the name is unsubscribed once nobody listens."""
        self._enqueue("remove", subscription)

    def start(self) -> Subscriber:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            if self.client is None:
                self.client = connections.pubsub_client()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kryonix-realtime", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the connection; safe to call from a handler."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every subscription is confirmed on the current connection and replayed."""
        return self._ready.wait(timeout_s)

    @property
    def stats(self) -> SubscriberStats:
        return replace(self._book.stats)

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _enqueue(self, op: Literal["add", "remove"], sub: Subscription) -> Subscription:
        with self._lock:
            self._commands.put((op, sub))
            self._ready.clear()
        return sub

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect()
                while not self._stop.is_set():
                    self._step()
            except Exception as exc:
                self._disconnect()
                self._stop.wait(self._book.lost(exc, self._backoff))
        self._disconnect()

    def _connect(self) -> None:
        assert self.client is not None
        self._pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
        channels, patterns = self._book.names("channel"), self._book.names("pattern")
        if channels:
            self._pubsub.subscribe(*channels)
        if patterns:
            self._pubsub.psubscribe(*patterns)

    def _disconnect(self) -> None:
        self._ready.clear()
        self._book.connection_lost()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # the socket is already gone; nothing left to release
                log.debug("closing the pubsub connection failed", exc_info=True)

    def _step(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while not self._commands.empty():  # only this thread takes from the queue
            op, sub = self._commands.get_nowait()
            action = self._book.apply(op, sub)
            command = pubsub_command(action, sub)
            if command is not None:
                getattr(pubsub, command)(sub.name)
            elif action == "replay":
                self._replay([sub], sub.kind, sub.name)
        message = pubsub.get_message(timeout=self._poll_interval_s)
        if message is not None:
            self._handle(message)
        if not self._ready.is_set():
            with self._lock:
                if self._commands.empty() and self._book.ready():
                    self._ready.set()

    def _handle(self, message: Mapping[str, Any]) -> None:
        deliveries, replay = self._book.received(message)
        for sub, event in deliveries:
            self._deliver(sub, event)
        if replay is not None:
            kind, subs, name = replay
            self._replay(subs, kind, name)

    def _replay(self, subs: list[Subscription], kind: Kind, name: str) -> None:
        matching = self._service.channels_matching(name) if kind == "pattern" else []
        for positions in self._book.replay_batches(subs, kind, name, matching):
            while positions:
                events = self._service.replay(positions, count=self._replay_count)
                deliveries, positions = self._book.route_replay(subs, events)
                for sub, event in deliveries:
                    self._deliver(sub, event)

    def _deliver(self, sub: Subscription, event: Event) -> None:
        try:
            sub.handler(event)
        except Exception as exc:
            self._book.handler_failed(sub, event, exc)
