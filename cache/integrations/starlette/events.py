"""Server-Sent Events for Starlette and FastAPI: `EventStreamResponse(request, user_id)`.

One `AsyncSubscriber` per worker process and event loop, started by the first stream
(never at import, so `--preload` and forking servers are safe). Each client has a
bounded buffer; a client too slow to drain it is closed, and its browser reconnects
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
from collections.abc import Callable
from types import FrameType

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from cache.errors import KryonixError
from cache.integrations import problems
from cache.integrations.starlette.sessions import problem_response
from cache.realtime.async_service import AsyncRealtimeService, AsyncSubscriber
from cache.realtime.envelope import Event, InvalidEvent, to_sse

__all__ = ["EventStreamResponse", "shutdown_event_streams"]

log = logging.getLogger(__name__)

DEFAULT_RETRY_MS = 3_000  # the browser's reconnect delay (`retry:`)
DEFAULT_KEEP_ALIVE_S = 15.0  # a comment this often: proxies close idle connections
DEFAULT_BUFFER = 256  # events queued per client before it counts as too slow and is closed
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Hub:
    """This process's subscriber and shutdown flag, for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = os.getpid()
        self.loop = loop
        self.closing = asyncio.Event()
        self._subscriber: AsyncSubscriber | None = None
        self._service: AsyncRealtimeService | None = None
        self._chain_signals()

    async def subscriber(self) -> AsyncSubscriber:
        if self._subscriber is None:
            self._service = AsyncRealtimeService()
            self._subscriber = await AsyncSubscriber(service=self._service).start()
        return self._subscriber

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
        buffer: events queued for this client; one more and the stream is closed.
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
    ) -> None:
        super().__init__(headers=STREAM_HEADERS, media_type=self.media_type)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # open-ended
        self.user_id = user_id
        self.since = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or None
        self.retry_ms = retry_ms
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
            subscriber = await hub.subscriber()
            subscription = await subscriber.subscribe_user(self.user_id, self._offer, since=self.since)
        except InvalidEvent:
            await problem_response(problems.bad_last_event_id())(scope, receive, send)
            return
        except KryonixError:  # Redis down (or refusing): the start position could not be read
            await problem_response(problems.events_unavailable())(scope, receive, send)
            return
        try:
            await self._stream(hub, receive, send)
        finally:
            subscriber.unsubscribe(subscription)

    async def _stream(self, hub: _Hub, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.create_task(self._pump(send))
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

    async def _pump(self, send: Send) -> None:
        await send(_body(f"retry: {self.retry_ms}\n\n"))
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
