"""The pure core of real-time events: envelope, channel names, stream ids, backoff.

No I/O here. The sync service and subscriber (`cache.realtime.service`,
`cache.realtime.subscriber`) and their asyncio twin (`cache.realtime.async_service`) share
every rule below, so a fix to validation or decoding lands once.

Envelope on the wire (one JSON object, published and replayed alike)::

    {"id": "1714561200123-0", "event": "report.ready", "data": {...},
     "timestamp": "2024-05-01T11:00:00.123Z"}

`id` is the id of the event's entry in the channel's capped stream, so ids grow
strictly per channel and a client can resume from the last one it saw.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson

from cache import keys
from cache.errors import ConfigError, KryonixError

DEFAULT_MAX_EVENT_BYTES = 64 * 1024  # an event is a notification, not a file transfer
MAX_SEQ = 2**64 - 1  # largest sequence part of a Redis stream id

_USER_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")  # no ':' so a channel name parses one way
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,99}")
_USER_CHANNEL = re.compile(r"user:([A-Za-z0-9_.@+-]{1,128}):events")
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")  # ASCII only: `\d` takes any script's digits
_PATTERN_CHARS = re.compile(r"[\x21-\x7e]{1,200}")  # printable, no whitespace

StreamId = tuple[int, int]


class RealtimeError(KryonixError):
    """Base of the real-time events errors."""


class InvalidEvent(RealtimeError, ValueError):
    """A publish or subscribe argument is unusable; the message says which and why."""


class InvalidEnvelope(RealtimeError, ValueError):
    """A message on an event channel is not a well-formed envelope."""


class InvalidRealtimeLimit(RealtimeError, ConfigError):
    """A stream cap, TTL or event size that is not a positive integer; the message names it."""


@dataclass(frozen=True, slots=True)
class Event:
    """One delivered event: the envelope plus the channel it came from."""

    id: str
    channel: str
    event: str
    data: dict[str, Any]
    timestamp: str

    def to_json(self) -> str:
        """The envelope exactly as it is published (without the channel)."""
        return orjson.dumps(
            {"id": self.id, "event": self.event, "data": self.data, "timestamp": self.timestamp}
        ).decode()


# -- validation --------------------------------------------------------------------


def validate_user_id(user_id: str | int) -> str:
    """The user id as text; ints are accepted since database ids usually are.

    Raises:
        InvalidEvent: not 1-128 characters of letters, digits and `_.@+-`.
    """
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise InvalidEvent(
            f"user_id must be 1-128 characters of letters, digits and _.@+- (no ':'), got {user_id!r}"
        )
    return user_id


def validate_event_name(event: str) -> str:
    """Raises InvalidEvent unless `event` looks like `report.ready` or `email:sent`."""
    if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event):
        raise InvalidEvent(
            "event must start with a letter and hold at most 100 letters, digits and _.:- "
            f"(e.g. 'report.ready'), got {event!r}"
        )
    return event


def validate_pattern(pattern: str) -> str:
    """Raises InvalidEvent unless `pattern` is a printable glob without whitespace."""
    if not isinstance(pattern, str) or not _PATTERN_CHARS.fullmatch(pattern):
        raise InvalidEvent(f"pattern must be 1-200 printable characters without spaces, got {pattern!r}")
    return pattern


def is_event_channel(channel: str) -> bool:
    return channel == keys.SYSTEM_CHANNEL or _USER_CHANNEL.fullmatch(channel) is not None


def resolve_channel(channel_or_user: str | int) -> str:
    """`system:events` and `user:<id>:events` stay as they are; anything else is a user id.

    Raises:
        InvalidEvent: neither an event channel nor a valid user id.
    """
    if isinstance(channel_or_user, str) and is_event_channel(channel_or_user):
        return channel_or_user
    try:
        return keys.user_channel(validate_user_id(channel_or_user))
    except InvalidEvent:
        raise InvalidEvent(
            f"expected {keys.SYSTEM_CHANNEL!r}, 'user:<id>:events' or a user id, got {channel_or_user!r}"
        ) from None


def validate_channel(channel: str) -> str:
    """Raises InvalidEvent unless `channel` is one of the event channels (which have streams)."""
    if not isinstance(channel, str) or not is_event_channel(channel):
        raise InvalidEvent(f"channel must be {keys.SYSTEM_CHANNEL!r} or 'user:<id>:events', got {channel!r}")
    return channel


# -- stream ids --------------------------------------------------------------------


def parse_stream_id(value: str) -> StreamId:
    """`"1714561200123-4"` -> `(1714561200123, 4)`; a bare `"123"` means `123-0`.

    Raises:
        InvalidEvent: not a Redis stream id (what a client sends as Last-Event-ID is checked here).
    """
    match = _STREAM_ID.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidEvent(f"an event id looks like '1714561200123-0', got {value!r}")
    ms, seq = int(match.group(1)), int(match.group(2) or 0)
    if ms > MAX_SEQ or seq > MAX_SEQ:
        raise InvalidEvent(f"event id out of range: {value!r}")
    return ms, seq


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def resume_after(since: str, newest: str) -> str:
    """Where a client that last saw `since` resumes: `since`, or `newest` when `since` is beyond it
    (an id from the future, or from a stream that expired since), so live events still reach it.

    Raises:
        InvalidEvent: `since` is not an event id.
    """
    return format_stream_id(min(parse_stream_id(since), parse_stream_id(newest)))


def backlog_start(after: str, until: str) -> str | None:
    """Where a replay from `after` up to `until` begins reading; None: there is nothing to replay."""
    return after if parse_stream_id(after) < parse_stream_id(until) else None


def backlog_page(events: list[Event], until: str) -> tuple[list[Event], str | None]:
    """One replay page cut at `until` (where the live subscription begins): the events to send,
    and the id to read the next page after (None: the backlog is done, live takes over)."""
    end = parse_stream_id(until)
    kept = [event for event in events if parse_stream_id(event.id) <= end]
    if not kept or len(kept) < len(events) or parse_stream_id(kept[-1].id) >= end:
        return kept, None
    return kept, kept[-1].id


def id_before_ms(ms: int) -> StreamId:
    """The largest id below every id Redis can generate in millisecond `ms` or later."""
    return (ms - 1, MAX_SEQ) if ms > 0 else (0, 0)


# -- encoding and decoding ---------------------------------------------------------


def format_timestamp(now: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. `2024-05-01T11:00:00.123Z`.

    Raises:
        ValueError: `now` is naive; a naive time would be read as local time somewhere.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_body(event: str, data: Mapping[str, Any], now: datetime, *, max_bytes: int) -> bytes:
    """The envelope without its id: what the stream stores and the publish script completes.

    Raises:
        InvalidEvent: bad event name, `data` not a JSON object, or larger than `max_bytes`.
    """
    validate_event_name(event)
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"data must be a JSON object (a dict), got {type(data).__name__}")
    try:
        body = orjson.dumps({"event": event, "data": data, "timestamp": format_timestamp(now)})
    except TypeError as exc:
        raise InvalidEvent(f"data of event {event!r} is not JSON-serialisable: {exc}") from None
    if len(body) > max_bytes:
        raise InvalidEvent(f"event {event!r} is {len(body)} bytes encoded; the limit is {max_bytes}")
    return body


def envelope_from_body(stream_id: str, body: bytes | str) -> str:
    """Prepend the id to a stored body; `realtime_publish.lua` does the same byte for byte."""
    text = body.decode() if isinstance(body, bytes) else body
    return '{"id":"' + stream_id + '",' + text[1:]


def decode_envelope(channel: str, payload: bytes | str) -> Event:
    """Parse a published message.

    Raises:
        InvalidEnvelope: not JSON, not an object, or a field is missing or of the wrong type.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidEnvelope(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEnvelope(f"expected a JSON object, got {type(obj).__name__}")
    stream_id = obj.get("id")
    if not isinstance(stream_id, str):
        raise InvalidEnvelope("field 'id' missing or not a string")
    return _event(channel, stream_id, obj)


def decode_entry(channel: str, stream_id: str, fields: Mapping[Any, Any]) -> Event:
    """Parse one stream entry (as XRANGE returns it) into an Event.

    Raises:
        InvalidEnvelope: the entry has no JSON-object `body`.
    """
    body = fields.get("body", fields.get(b"body"))
    if body is None:
        raise InvalidEnvelope("stream entry has no 'body' field")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEnvelope(f"stream entry body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEnvelope("stream entry body is not a JSON object")
    return _event(channel, stream_id, obj)


def _event(channel: str, stream_id: str, obj: dict[str, Any]) -> Event:
    try:
        parse_stream_id(stream_id)
    except InvalidEvent:
        raise InvalidEnvelope(f"field 'id' is not a stream id: {stream_id!r}") from None
    event, data, timestamp = obj.get("event"), obj.get("data"), obj.get("timestamp")
    if not isinstance(event, str) or not event:
        raise InvalidEnvelope("field 'event' missing or not a string")
    if not isinstance(data, dict):
        raise InvalidEnvelope("field 'data' missing or not an object")
    if not isinstance(timestamp, str):
        raise InvalidEnvelope("field 'timestamp' missing or not a string")
    return Event(id=stream_id, channel=channel, event=event, data=data, timestamp=timestamp)


def to_sse(event: Event) -> str:
    """One Server-Sent Events frame; the browser echoes `id` back as `Last-Event-ID`."""
    return f"id: {event.id}\nevent: {event.event}\ndata: {event.to_json()}\n\n"


# -- subscriptions -----------------------------------------------------------------

Kind = Literal["channel", "pattern"]


class EventHandler(Protocol):
    """Called with each event of its subscription; the asyncio subscriber awaits an awaitable result."""

    def __call__(self, event: Event, /) -> object: ...


@dataclass(eq=False)
class Subscription:
    """A handle returned by `subscribe`; pass it to `unsubscribe`."""

    kind: Kind
    name: str
    handler: EventHandler
    baseline: StreamId
    positions: dict[str, StreamId] = field(default_factory=dict)

    def position(self, channel: str) -> StreamId:
        """The id of the last event delivered from `channel` (or where the subscription began)."""
        return self.positions.get(channel, self.baseline)

    def accept(self, event: Event) -> bool:
        """True, and remember the id, when `event` is newer than anything delivered on its channel."""
        stream_id = parse_stream_id(event.id)
        if stream_id <= self.position(event.channel):
            return False
        self.positions[event.channel] = stream_id
        return True


@dataclass
class SubscriberStats:
    """Counters for operators and tests; a subscriber's `stats` returns a snapshot."""

    live: int = 0
    replayed: int = 0
    duplicates: int = 0
    malformed: int = 0
    handler_errors: int = 0
    reconnects: int = 0


# -- reconnecting ------------------------------------------------------------------


def reconnect_delay_s(attempt: int, rand: float, *, base_s: float = 0.1, cap_s: float = 5.0) -> float:
    """Delay before reconnect attempt `attempt` (0-based): exponential, capped, jittered.

    "Equal jitter": half of the step is fixed, half random, so many subscribers that lost
    the same Redis do not reconnect in lockstep, and none retries in a busy loop.

    Args:
        attempt: failed attempts so far.
        rand: a number in [0, 1), injected so the arithmetic is testable.
        base_s: the first step.
        cap_s: the largest step.
    """
    step: float = min(cap_s, base_s * 2.0 ** min(attempt, 32))
    return step / 2 + step / 2 * rand


# -- replay requests and results (shared by the sync and async services) -----------


@dataclass(frozen=True, slots=True)
class ReplayRead:
    """One XRANGE of a replay: `channel`'s stream, strictly after `after`."""

    channel: str
    key: str
    start: str


def plan_replay(positions: Mapping[str, str]) -> list[ReplayRead]:
    """Validate `{channel_or_user: last_id}` and turn it into exclusive XRANGE reads.

    Raises:
        InvalidEvent: a channel or id is malformed.
    """
    reads = []
    for channel_or_user, last_id in positions.items():
        channel = resolve_channel(channel_or_user)
        position = parse_stream_id(last_id)
        if position != (MAX_SEQ, MAX_SEQ):  # nothing can follow the largest id
            reads.append(ReplayRead(channel, keys.event_stream(channel), "(" + format_stream_id(position)))
    return reads


def parse_replay(
    reads: list[ReplayRead], results: list[list[tuple[Any, Mapping[Any, Any]]]]
) -> tuple[dict[str, list[Event]], int]:
    """Decode the XRANGE results of `plan_replay`; returns events per channel and how many were skipped.

    A stream entry that is not an envelope (written by hand, by an old version) is
    skipped, so one bad entry cannot block every later event of its channel.
    """
    events: dict[str, list[Event]] = {}
    skipped = 0
    for read, entries in zip(reads, results, strict=True):
        decoded = events.setdefault(read.channel, [])
        for raw_id, fields in entries:
            stream_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            try:
                decoded.append(decode_entry(read.channel, stream_id, fields))
            except InvalidEnvelope:
                skipped += 1
    return events, skipped


def time_baseline(seconds: int, microseconds: int) -> str:
    """From Redis `TIME`: the id just before anything published from now on."""
    return format_stream_id(id_before_ms(seconds * 1000 + microseconds // 1000))
