"""Server-Sent Events for Flask: a user's events as a streaming `Response`.

One `Subscriber` (one pub/sub connection, one thread) per worker process, started on
the first stream, so nothing connects at import and a fork (gunicorn `--preload`)
never shares a subscriber: a process that finds one made by its parent builds its
own. A resuming client's backlog (everything after `Last-Event-ID` up to the newest
event at connect time) is read in pages straight to it, at its own pace, in one
connection; live events start after that newest id (the subscription's baseline), so
nothing is missed or sent twice. Live events feed a bounded queue; a client that stops
reading fills it and is closed (its browser reconnects with `Last-Event-ID` and
replays what it missed) instead of growing the buffer.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType

from flask import Response, request

from cache import keys
from cache.errors import KryonixError
from cache.integrations import problems
from cache.integrations.flask_sessions import problem_response
from cache.integrations.streams import DEFAULT_MAX_STREAMS, REPLAY_PAGE, StreamCounts
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
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber

__all__ = [
    "DEFAULT_BUFFER_EVENTS",
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_RETRY_MS",
    "EventStream",
    "close_event_streams",
    "end_streams_on_sigterm",
    "event_stream",
]

DEFAULT_RETRY_MS = 3_000  # the browser's reconnect delay (`retry:`)
DEFAULT_KEEPALIVE_S = 15.0  # a comment this often keeps proxies from closing an idle stream
DEFAULT_BUFFER_EVENTS = 256  # live events held for one slow client before it is closed
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
_CLOSE = object()  # the queue's end marker


class EventStream:
    """One client's bounded buffer and its SSE frames; framework-free, so tests drive it directly."""

    def __init__(
        self, *, buffer_events: int, keepalive_s: float, retry_ms: int, backlog: Iterable[Event] = ()
    ) -> None:
        self.backlog = backlog
        self.queue: queue.Queue[object] = queue.Queue(maxsize=buffer_events)
        self.keepalive_s = keepalive_s
        self.retry_ms = retry_ms
        self.ended = False

    def offer(self, event: Event) -> None:
        """The subscriber's handler: never blocks the subscriber thread; a full buffer closes the stream."""
        if self.ended:
            return
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.ended = True

    def close(self) -> None:
        """End the stream at its next wake-up (server shutdown)."""
        self.ended = True
        with contextlib.suppress(queue.Full):  # a full buffer: `ended` stops the loop before its next read
            self.queue.put_nowait(_CLOSE)

    def frames(self) -> Iterator[str]:
        """`retry:`, the backlog, then one frame per live event and a comment per idle `keepalive_s`,
        until closed."""
        yield f"retry: {self.retry_ms}\n\n"
        for event in self.backlog:  # live events wait in the queue meanwhile
            if self.ended:
                return
            yield to_sse(event)
        while not self.ended:
            try:
                item = self.queue.get(timeout=self.keepalive_s)
            except queue.Empty:
                yield ": keep-alive\n\n"
                continue
            if not isinstance(item, Event):
                return
            yield to_sse(item)


class _Hub:
    """This process's subscriber and open streams; rebuilt in a forked child."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.service = RealtimeService()
        self.subscriber = Subscriber(service=self.service)
        self.streams: set[EventStream] = set()
        self.per_user = StreamCounts()


_lock = threading.Lock()
_hub: _Hub | None = None
_closed_in: int | None = None  # the pid that called close_event_streams: it is shutting down


def _current_hub() -> _Hub:
    global _hub
    with _lock:
        if _hub is None or _hub.pid != os.getpid():
            _hub = _Hub()  # a parent's subscriber thread does not exist in a forked child
            _hub.subscriber.start()
        return _hub


def close_event_streams() -> None:
    """End every open stream of this process and stop its subscriber (call at shutdown).

    Takes no lock, so a signal handler may call it.
    """
    global _hub, _closed_in
    _closed_in = os.getpid()
    hub, _hub = _hub, None
    if hub is not None and hub.pid == os.getpid():
        for stream in list(hub.streams):
            stream.close()
        hub.subscriber.stop()


def end_streams_on_sigterm() -> None:
    """Chain SIGTERM to `close_event_streams`, then to the handler already installed.

    Call it in the worker's main thread after the server set its own handlers, e.g.
    gunicorn's `post_worker_init`; streams then end at once and the graceful shutdown
    does not wait for its timeout.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        close_event_streams()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def event_stream(
    user_id: str | int,
    *,
    last_event_id: str | None = None,
    retry_ms: int = DEFAULT_RETRY_MS,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
    buffer_events: int = DEFAULT_BUFFER_EVENTS,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> Response:
    """A `text/event-stream` response of `user_id`'s events, replaying those after the last seen.

    Take `user_id` from the session, never from the request. The position is
    `last_event_id`, else the `Last-Event-ID` header (a reconnecting browser), else the
    `last_event_id` query parameter (a reloaded page). A malformed one answers 400
    `bad_last_event_id`; Redis down when the start position must be read, 503
    `events_unavailable`; after `close_event_streams()`, 503 `shutting_down`; a user
    already holding `max_streams` open streams in this process, 429 `too_many_streams`.
    """
    if _closed_in == os.getpid():
        return problem_response(problems.shutting_down())
    since = last_event_id or request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    hub = _current_hub()
    try:
        if since:
            parse_stream_id(since)  # a bad id answers 400 even with Redis down
        user = validate_user_id(user_id)
    except InvalidEvent:
        return problem_response(problems.bad_last_event_id())
    if not hub.per_user.claim(user, max_streams):
        return problem_response(problems.too_many_streams(max_streams))
    try:
        channel = keys.user_channel(user)
        newest = hub.service.latest_id(channel)  # the backlog ends here, live begins after it
        backlog = _backlog(hub.service, channel, resume_after(since, newest), newest) if since else ()
        stream = EventStream(
            buffer_events=buffer_events, keepalive_s=keepalive_s, retry_ms=retry_ms, backlog=backlog
        )
        subscription = hub.subscriber.subscribe(channel, stream.offer, since=newest)
    except KryonixError:  # Redis down (or refusing): the start position could not be read
        hub.per_user.release(user)
        return problem_response(problems.events_unavailable())
    hub.streams.add(stream)
    ended = threading.Event()

    def end() -> None:  # the client went away, overflowed, or the server is shutting down
        if not ended.is_set():
            ended.set()
            hub.streams.discard(stream)
            hub.subscriber.unsubscribe(subscription)
            hub.per_user.release(user)

    response = Response(stream.frames(), mimetype="text/event-stream", headers=SSE_HEADERS)
    response.call_on_close(end)  # also when the body never started
    return response


def _backlog(service: RealtimeService, channel: str, after: str, until: str) -> Iterator[Event]:
    """What was published after `after` up to `until`, read a page at a time as the client takes it."""
    position = backlog_start(after, until)
    while position is not None:
        page, position = backlog_page(service.events_since(channel, position, count=REPLAY_PAGE), until)
        yield from page
