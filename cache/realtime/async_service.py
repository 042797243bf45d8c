"""The asyncio twin of `cache.realtime.service` and `cache.realtime.subscriber`, for ASGI servers.

Same channels, envelope, Lua script, dedupe and replay rules: validation, encoding and
every subscriber decision come from `RealtimeCore` and `SubscriptionBook`; this module
only awaits the I/O. Handlers may be plain functions or coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import redis
import redis.asyncio

from cache import connections, keys, lua
from cache.connections import Role
from cache.realtime.book import DEFAULT_POLL_INTERVAL_S, SubscriptionBook, default_backoff, pubsub_command
from cache.realtime.envelope import (
    DEFAULT_MAX_EVENT_BYTES,
    Event,
    EventHandler,
    Kind,
    SubscriberStats,
    Subscription,
    parse_stream_id,
    resolve_channel,
    time_baseline,
    validate_channel,
    validate_pattern,
    validate_user_id,
)
from cache.realtime.service import (
    DEFAULT_REPLAY_COUNT,
    RealtimeCore,
)

log = logging.getLogger(__name__)


class AsyncRealtimeService(RealtimeCore):
    """`RealtimeService` on `redis.asyncio`; same arguments, methods are coroutines.

    `client` defaults to `connections.build_async_client(Role.PRIMARY)`; build one per
    event loop (e.g. in the ASGI lifespan) and share it.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
        *,
        stream_maxlen: int | None = None,
        stream_ttl_s: int | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            stream_maxlen=stream_maxlen,
            stream_ttl_s=stream_ttl_s,
            max_event_bytes=max_event_bytes,
            clock=clock,
        )
        self.client = client if client is not None else connections.build_async_client(Role.PRIMARY)
        self._publish_script = lua.async_script(self.client, "realtime_publish")

    async def publish_user_event(self, user_id: str | int, event: str, data: Mapping[str, Any]) -> str:
        return await self.publish(keys.user_channel(validate_user_id(user_id)), event, data)

    async def publish_system_event(self, event: str, data: Mapping[str, Any]) -> str:
        return await self.publish(keys.SYSTEM_CHANNEL, event, data)

    async def publish(self, channel: str, event: str, data: Mapping[str, Any]) -> str:
        script_keys, args, errors = self._publish_call(channel, event, data)
        with errors:
            stream_id = await self._publish_script(keys=script_keys, args=args)
        return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)

    async def events_since(
        self, channel_or_user: str | int, last_id: str = "0-0", *, count: int = DEFAULT_REPLAY_COUNT
    ) -> list[Event]:
        channel = resolve_channel(channel_or_user)
        return (await self.replay({channel: last_id}, count=count)).get(channel, [])

    async def replay(
        self, positions: Mapping[str, str], *, count: int = DEFAULT_REPLAY_COUNT
    ) -> dict[str, list[Event]]:
        reads, errors = self._replay_plan(positions)
        with errors:
            pipe = self.client.pipeline(transaction=False)
            for read in reads:
                pipe.xrange(read.key, min=read.start, max="+", count=count)
            return self._replayed(reads, await pipe.execute())

    async def latest_id(self, channel: str) -> str:
        stream, errors = self._latest_call(channel)
        with errors:
            return self._newest_id(await self.client.xrevrange(stream, max="+", min="-", count=1))

    async def now_id(self) -> str:
        with self._time_errors():
            seconds, microseconds = await self.client.time()
        return time_baseline(int(seconds), int(microseconds))

    async def channels_matching(self, pattern: str) -> list[str]:
        match, errors = self._scan_call(pattern)
        with errors:
            found = [raw async for raw in self.client.scan_iter(match=match, count=1000, _type="stream")]
        return self._event_channels(found)


class AsyncSubscriber:
    """`Subscriber` as an asyncio task: one connection, replay on every (re)subscription.

    Args:
        client: the client the subscription connection comes from; defaults to
            `connections.build_async_client(Role.PRIMARY, pubsub=True)`.
        service: defaults to `AsyncRealtimeService()`.
        backoff, poll_interval_s, replay_count: as for `Subscriber`.

    Use `async with AsyncSubscriber() as subscriber:` or `await start()` / `await stop()`.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
        *,
        service: AsyncRealtimeService | None = None,
        backoff: Callable[[int], float] = default_backoff,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        replay_count: int = DEFAULT_REPLAY_COUNT,
    ) -> None:
        self._service = service if service is not None else AsyncRealtimeService()
        self._own_client = client is None
        self.client = client
        self._backoff = backoff
        self._poll_interval_s = poll_interval_s
        self._replay_count = replay_count
        self._book = SubscriptionBook()
        self._commands: deque[tuple[Literal["add", "remove"], Subscription]] = deque()
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pubsub: redis.asyncio.client.PubSub | None = None

    async def subscribe(
        self, channel: str, handler: EventHandler, *, since: str | None = None
    ) -> Subscription:
        """See `Subscriber.subscribe`."""
        validate_channel(channel)
        start = since if since is not None else await self._service.latest_id(channel)
        return self._enqueue("add", Subscription("channel", channel, handler, parse_stream_id(start)))

    async def subscribe_user(
        self, user_id: str | int, handler: EventHandler, *, since: str | None = None
    ) -> Subscription:
        return await self.subscribe(keys.user_channel(validate_user_id(user_id)), handler, since=since)

    async def subscribe_system(self, handler: EventHandler, *, since: str | None = None) -> Subscription:
        return await self.subscribe(keys.SYSTEM_CHANNEL, handler, since=since)

    async def psubscribe(
        self, pattern: str, handler: EventHandler, *, since: str | None = None
    ) -> Subscription:
        """See `Subscriber.psubscribe`."""
        validate_pattern(pattern)
        start = since if since is not None else await self._service.now_id()
        return self._enqueue("add", Subscription("pattern", pattern, handler, parse_stream_id(start)))

    def unsubscribe(self, subscription: Subscription) -> None:
        self._enqueue("remove", subscription)

    async def start(self) -> AsyncSubscriber:
        if self._task is None:
            if self.client is None:
                self.client = connections.build_async_client(Role.PRIMARY, pubsub=True)
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="kryonix-realtime")
        return self

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the task and close the connection (cancelling the task if it does not stop in time)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(task, timeout_s)
            except TimeoutError:
                log.warning("realtime subscriber did not stop within %.1f s; cancelled", timeout_s)
        if self._own_client and self.client is not None:
            await self.client.aclose()
            self.client = None

    async def wait_ready(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def stats(self) -> SubscriberStats:
        return replace(self._book.stats)

    async def __aenter__(self) -> AsyncSubscriber:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _enqueue(self, op: Literal["add", "remove"], sub: Subscription) -> Subscription:
        self._commands.append((op, sub))
        self._ready.clear()
        return sub

    # -- the task ----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._connect()
                while not self._stop.is_set():
                    await self._step()
            except Exception as exc:
                await self._disconnect()
                delay = self._book.lost(exc, self._backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        await self._disconnect()

    async def _connect(self) -> None:
        assert self.client is not None
        self._pubsub = self.client.pubsub()
        channels, patterns = self._book.names("channel"), self._book.names("pattern")
        if channels:
            await self._pubsub.subscribe(*channels)
        if patterns:
            await self._pubsub.psubscribe(*patterns)

    async def _disconnect(self) -> None:
        self._ready.clear()
        self._book.connection_lost()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception:  # the socket is already gone; nothing left to release
                log.debug("closing the pubsub connection failed", exc_info=True)

    async def _step(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while self._commands:
            op, sub = self._commands.popleft()
            action = self._book.apply(op, sub)
            command = pubsub_command(action, sub)
            if command is not None:
                await getattr(pubsub, command)(sub.name)
            elif action == "replay":
                await self._replay([sub], sub.kind, sub.name)
        if pubsub.connection is None:  # nothing subscribed yet: redis.asyncio cannot read
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._poll_interval_s)
        else:
            message = await pubsub.get_message(timeout=self._poll_interval_s)
            if message is not None:
                await self._handle(message)
        if not self._commands and self._book.ready():
            self._ready.set()

    async def _handle(self, message: Mapping[str, Any]) -> None:
        deliveries, replay = self._book.received(message)
        for sub, event in deliveries:
            await self._deliver(sub, event)
        if replay is not None:
            kind, subs, name = replay
            await self._replay(subs, kind, name)

    async def _replay(self, subs: list[Subscription], kind: Kind, name: str) -> None:
        matching = await self._service.channels_matching(name) if kind == "pattern" else []
        for positions in self._book.replay_batches(subs, kind, name, matching):
            while positions:
                events = await self._service.replay(positions, count=self._replay_count)
                deliveries, positions = self._book.route_replay(subs, events)
                for sub, event in deliveries:
                    await self._deliver(sub, event)

    async def _deliver(self, sub: Subscription, event: Event) -> None:
        try:
            result = sub.handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._book.handler_failed(sub, event, exc)
