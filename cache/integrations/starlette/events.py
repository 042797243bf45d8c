"""Server-Sent Events for Starlette and FastAPI: `EventStreamResponse(request, user_id)`.

One `AsyncSubscriber` per worker process and event loop, started by the first stream
(never at import, so `--preload` and forking servers are safe). A resuming client's
backlog (everything after `Last-Event-ID` up to the newest event at connect time) is
read in pages straight to it, at its own pace; live events start after that newest id
(the subscription's baseline), so nothing is missed or sent twice. Live events wait in
a bounded buffer; a client too slow to drain it is closed, and its browser reconnects
with `Last-Event-ID` and is replayed what it missed. Streams end when the client goes
away, when the server shuts down (SIGTERM/SIGINT, chained to the server's own handler,
or `await shutdown_event_streams()` from the lifespan), so a graceful shutdown never
waits on an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from types import FrameType

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from cache import keys
from cache.errors import KryonixError
from cache.integrations import problems
from cache.integrations.starlette.sessions import problem_response
from cache.integrations.streams import DEFAULT_MAX_STREAMS, REPLAY_PAGE, StreamCounts
from cache.realtime.async_service import AsyncRealtimeService, AsyncSubscriber
from cache.realtime.envelope import (
    Event,
    InvalidEvent,
    backlog_page,
    backlog_start,
    parse_stream_id,
    resume_after,
    to_sse,
    validate_user_id,
)

__all__ = ["EventStreamResponse", "shutdown_event_streams"]

log = logging.getLogger(__name__)

DEFAULT_RETRY_MS = 3_000  # the browser's reconnect delay (`retry:`)
DEFAULT_KEEP_ALIVE_S = 15.0  # a comment this often: proxies close idle connections
DEFAULT_BUFFER = 256  # live events queued per client before it counts as too slow and is closed
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Hub:
    """This process's subscriber and shutdown flag, for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = os.getpid()
        self.loop = loop
        self.closing = asyncio.Event()
        self.per_user = StreamCounts()
        self._subscriber: AsyncSubscriber | None = None
        self._service: AsyncRealtimeService | None = None
        self._chain_signals()

    async def subscriber(self) -> tuple[AsyncSubscriber, AsyncRealtimeService]:
        if self._subscriber is None or self._service is None:
            self._service = AsyncRealtimeService()
            self._subscriber = await AsyncSubscriber(service=self._service).start()
        return self._subscriber, self._service

    async def close(self) -> None:
        self.closing.set()
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            await subscriber.stop()
        service, self._service = self._service, None
        if service is not None:
            await service.client.aclose()

    def _chain_signals(self) -> None:
        """Set `closing` on SIGTERM/SIGINT, then run the server's own handler (uvicorn's, gunicorn's)."""
        for number in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(number)
                signal.signal(number, self._handler(previous))
            except ValueError:  # not the main thread: rely on disconnects and shutdown_event_streams()
                return

    def _handler(self, previous: object) -> Callable[[int, FrameType | None], None]:
        def handle(number: int, frame: FrameType | None) -> None:
            self.loop.call_soon_threadsafe(self.closing.set)
            if callable(previous):
                previous(number, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(number, signal.SIG_DFL)
                signal.raise_signal(number)

        return handle


_hub: _Hub | None = None


def _current_hub() -> _Hub:
    global _hub
    loop = asyncio.get_running_loop()
    if _hub is None or _hub.pid != os.getpid() or _hub.loop is not loop:
        _hub = _Hub(loop)
    return _hub


async def shutdown_event_streams() -> None:
    """End every open stream of this process and stop its subscriber (call it in the lifespan's shutdown)."""
    if _hub is not None and _hub.pid == os.getpid():
        await _hub.close()


class EventStreamResponse(Response):
    """`text/event-stream` of one user's events, resuming after `Last-Event-ID` (or `?last_event_id=`).

    Args:
        request: the request; the resume position comes from its headers or query.
        user_id: whose events, from the session (never from the request itself).
        retry_ms, keep_alive_s: the `retry:` field and the keep-alive comment interval.
        max_streams: streams one user may hold open in this process; one more answers 429.
        buffer: live events queued for this client; one more and the stream is closed
            (the replayed backlog is not buffered: it is read as the client takes it).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        request: Request,
        user_id: str | int,
        *,
        retry_ms: int = DEFAULT_RETRY_MS,
        keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
        buffer: int = DEFAULT_BUFFER,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        super().__init__(headers=STREAM_HEADERS, media_type=self.media_type)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # open-ended
        self.user_id = user_id
        self.since = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or None
        self.retry_ms = retry_ms
        self.max_streams = max_streams
        self.keep_alive_s = keep_alive_s
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=buffer)
        self.overflowed = asyncio.Event()

    def _offer(self, event: Event) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            log.info("closing an event stream: the client is %d events behind", self.queue.maxsize)
            self.overflowed.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = _current_hub()
        if hub.closing.is_set():
            await problem_response(problems.shutting_down())(scope, receive, send)
            return
        try:
            if self.since is not None:
                parse_stream_id(self.since)  # a bad id answers 400 even with Redis down
            user = validate_user_id(self.user_id)
        except InvalidEvent:
            await problem_response(problems.bad_last_event_id())(scope, receive, send)
            return
        if not hub.per_user.claim(user, self.max_streams):
            await problem_response(problems.too_many_streams(self.max_streams))(scope, receive, send)
            return
        try:
            await self._serve(hub, user, scope, receive, send)
        finally:
            hub.per_user.release(user)

    async def _serve(self, hub: _Hub, user: str, scope: Scope, receive: Receive, send: Send) -> None:
        channel = keys.user_channel(user)
        try:
            subscriber, service = await hub.subscriber()
            newest = await service.latest_id(channel)  # the backlog ends here, live begins after it
            subscription = await subscriber.subscribe(channel, self._offer, since=newest)
        except KryonixError:  # Redis down (or refusing): the start position could not be read
            await problem_response(problems.events_unavailable())(scope, receive, send)
            return
        after = resume_after(self.since, newest) if self.since is not None else newest
        try:
            await self._stream(
                hub, receive, send, partial(self._backlog, send, service, channel, after, newest)
            )
        finally:
            subscriber.unsubscribe(subscription)

    @staticmethod
    async def _backlog(
        send: Send, service: AsyncRealtimeService, channel: str, after: str, until: str
    ) -> None:
        """Send what was published after `after` up to `until`, a page at a time as the client reads."""
        position = backlog_start(after, until)
        while position is not None:
            page, position = backlog_page(
                await service.events_since(channel, position, count=REPLAY_PAGE), until
            )
            for event in page:
                await send(_body(to_sse(event)))

    async def _stream(
        self, hub: _Hub, receive: Receive, send: Send, backlog: Callable[[], Awaitable[None]]
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.create_task(self._pump(send, backlog))
        stops = [
            asyncio.create_task(_disconnected(receive)),
            asyncio.create_task(hub.closing.wait()),
            asyncio.create_task(self.overflowed.wait()),
        ]
        try:
            await asyncio.wait([pump, *stops], return_when=asyncio.FIRST_COMPLETED)
            client_gone = stops[0].done()
        finally:
            for task in (pump, *stops):
                task.cancel()
            await asyncio.gather(pump, *stops, return_exceptions=True)
        if not client_gone:
            with contextlib.suppress(OSError, TimeoutError):  # a stuck client must not hold us
                await asyncio.wait_for(send({"type": "http.response.body", "body": b""}), 1.0)

    async def _pump(self, send: Send, backlog: Callable[[], Awaitable[None]]) -> None:
        await send(_body(f"retry: {self.retry_ms}\n\n"))
        await backlog()
        while True:
            try:
                event = await asyncio.wait_for(self.queue.get(), self.keep_alive_s)
            except TimeoutError:
                await send(_body(": keep-alive\n\n"))
                continue
            await send(_body(to_sse(event)))


def _body(text: str) -> Message:
    return {"type": "http.response.body", "body": text.encode(), "more_body": True}


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
