"""Real-time events: publish to pub/sub and to a capped stream per channel, replay from it.

Redis pub/sub alone is at-most-once: whatever is published while a subscriber is
disconnected is gone. So every event is also appended to a capped stream (one per
channel) in the same Lua call that publishes it, and the stream id is the event id.
A subscriber that reconnects asks `events_since(channel, last_id)` for what it
missed; `cache.realtime.subscriber.Subscriber` does that by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from cache import connections, keys, lua
from cache.connections import Role, translate_errors
from cache.realtime.envelope import (
    DEFAULT_MAX_EVENT_BYTES,
    Event,
    InvalidRealtimeLimit,
    RealtimeError,
    ReplayRead,
    encode_body,
    format_stream_id,
    is_event_channel,
    parse_replay,
    parse_stream_id,
    plan_replay,
    resolve_channel,
    time_baseline,
    validate_channel,
    validate_pattern,
    validate_user_id,
)
from cache.retry import bounded_call
from cache.settings import get_settings
from cache.text import as_text

log = logging.getLogger(__name__)

DEFAULT_REPLAY_COUNT = 1000  # events per channel per replay call; page with the last id for more


def check_limits(stream_maxlen: int, stream_ttl_s: int, max_event_bytes: int) -> None:
    """Raises InvalidRealtimeLimit (a ConfigError) naming the first argument that is not a positive int."""
    for name, value in (
        ("stream_maxlen", stream_maxlen),
        ("stream_ttl_s", stream_ttl_s),
        ("max_event_bytes", max_event_bytes),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidRealtimeLimit(f"{name} must be a positive integer, got {value!r}")


def _errors(action: str) -> translate_errors:
    """Redis errors of `action` as ours: outages `RedisUnavailable`, refusals `RealtimeError`."""
    return translate_errors(Role.PRIMARY, action=action, refused_class=RealtimeError)


class RealtimeCore:
    """Settings and the I/O-free steps shared by `RealtimeService` and its asyncio twin."""

    def __init__(
        self,
        *,
        stream_maxlen: int | None = None,
        stream_ttl_s: int | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if stream_maxlen is None or stream_ttl_s is None:
            settings = get_settings()  # EVENTS_STREAM_MAXLEN, EVENTS_STREAM_TTL
            stream_maxlen = settings.events_stream_maxlen if stream_maxlen is None else stream_maxlen
            stream_ttl_s = settings.events_stream_ttl_s if stream_ttl_s is None else stream_ttl_s
        check_limits(stream_maxlen, stream_ttl_s, max_event_bytes)
        self.stream_maxlen = stream_maxlen
        self.stream_ttl_s = stream_ttl_s
        self.max_event_bytes = max_event_bytes
        self._clock = clock

    def _publish_call(
        self, channel: str, event: str, data: Mapping[str, Any]
    ) -> tuple[list[str], list[Any], translate_errors]:
        """KEYS and ARGV of `realtime_publish.lua`, and its error translation; validates
        everything before any I/O."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        body = encode_body(event, data, now, max_bytes=self.max_event_bytes)
        stream = keys.event_stream(validate_channel(channel))
        errors = _errors(f"publish {event!r} to {channel}")
        return [stream], [channel, self.stream_maxlen, self.stream_ttl_s * 1000, body], errors

    @staticmethod
    def _replay_plan(positions: Mapping[str, str]) -> tuple[list[ReplayRead], translate_errors]:
        return plan_replay(positions), _errors("replay events")

    @staticmethod
    def _latest_call(channel: str) -> tuple[str, translate_errors]:
        """The stream to read the newest id of, and the error translation of that read."""
        return keys.event_stream(validate_channel(channel)), _errors(f"read the latest event of {channel}")

    @staticmethod
    def _time_errors() -> translate_errors:
        return _errors("read the server time")

    @staticmethod
    def _scan_call(pattern: str) -> tuple[str, translate_errors]:
        """The SCAN MATCH of `channels_matching(pattern)`, and its error translation."""
        return keys.event_stream(validate_pattern(pattern)), _errors(f"list streams matching {pattern!r}")

    @staticmethod
    def _replayed(reads: list[ReplayRead], results: list[Any]) -> dict[str, list[Event]]:
        events, skipped = parse_replay(reads, results)
        if skipped:
            log.warning("skipped %d malformed stream entries while replaying %s", skipped, sorted(events))
        return events

    @staticmethod
    def _newest_id(rows: Any) -> str:
        return as_text(rows[0][0]) if rows else "0-0"

    @staticmethod
    def _event_channels(raw_keys: list[Any]) -> list[str]:
        channels = (keys.event_stream_channel(as_text(raw)) for raw in raw_keys)
        return sorted(ch for ch in channels if ch is not None and is_event_channel(ch))


class RealtimeService(RealtimeCore):
    """Publish events to users and to everyone, and replay what a client missed.

    Args:
        client: a PRIMARY client; defaults to `connections.primary()`.
        stream_maxlen: each channel's stream keeps about this many recent events
            (`XADD MAXLEN ~`: Redis trims whole nodes, so it may briefly hold up to one
            node, `stream-node-max-entries`, more); default `EVENTS_STREAM_MAXLEN`.
        stream_ttl_s: a stream expires this long after its last event; default
            `EVENTS_STREAM_TTL`.
        max_event_bytes: larger encoded events are refused.
        clock: epoch seconds, for the events' timestamps; injected by tests.

    Raises:
        InvalidRealtimeLimit: a limit is not a positive integer (a ConfigError).
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
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
        self.client = client if client is not None else connections.primary()
        self._publish_script = lua.script(self.client, "realtime_publish")

    def publish_user_event(self, user_id: str | int, event: str, data: Mapping[str, Any]) -> str:
        """Send `event` to one user's channel `user:<id>:events`; returns the event id.

        Raises:
            InvalidEvent: bad user id, event name or data; nothing was written.
            RedisUnavailable: the PRIMARY Redis cannot be reached.
        """
        return self.publish(keys.user_channel(validate_user_id(user_id)), event, data)

    def publish_system_event(self, event: str, data: Mapping[str, Any]) -> str:
        """Send `event` to every subscriber of `system:events`; returns the event id."""
        return self.publish(keys.SYSTEM_CHANNEL, event, data)

    def publish(self, channel: str, event: str, data: Mapping[str, Any]) -> str:
        """Append to the channel's stream and publish, in one atomic script call.

        Returns:
            The event id (the stream id), also the `id` of the published envelope.

        Raises:
            InvalidEvent: bad channel, event name or data; nothing was written.
            RedisUnavailable: the PRIMARY Redis cannot be reached.
            RealtimeError: Redis refused the write (e.g. out of memory under noeviction).
        """
        script_keys, args, errors = self._publish_call(channel, event, data)
        with bounded_call(self.client), errors:
            return as_text(self._publish_script(keys=script_keys, args=args))

    def events_since(
        self, channel_or_user: str | int, last_id: str = "0-0", *, count: int = DEFAULT_REPLAY_COUNT
    ) -> list[Event]:
        """Events of one channel strictly after `last_id`, oldest first, at most `count`.

        Call again with the last returned id to page on. Events older than the stream
        cap (`stream_maxlen`) or TTL are gone; the replay starts at the oldest kept one.

        Args:
            channel_or_user: `system:events`, `user:<id>:events`, or a bare user id.
            last_id: the last event id the client saw (an SSE `Last-Event-ID`); `0-0` for all.
            count: page size.

        Raises:
            InvalidEvent: bad channel, user id or event id.
            RedisUnavailable: the PRIMARY Redis cannot be reached.
        """
        channel = resolve_channel(channel_or_user)
        return self.replay({channel: last_id}, count=count).get(channel, [])

    def replay(
        self, positions: Mapping[str, str], *, count: int = DEFAULT_REPLAY_COUNT
    ) -> dict[str, list[Event]]:
        """`events_since` for many channels in one round trip: `{channel: last_id}` -> events."""
        reads, errors = self._replay_plan(positions)
        with errors:
            pipe = self.client.pipeline(transaction=False)
            for read in reads:
                pipe.xrange(read.key, min=read.start, max="+", count=count)
            return self._replayed(reads, pipe.execute())

    def recent(self, channels: Sequence[str], *, count: int, until_id: str = "+") -> dict[str, list[Event]]:
        """The last `count` events of each channel up to `until_id` (included), oldest first.

        One round trip; for a tail that shows what just happened before following live.

        Raises:
            ValueError: `count` is not positive.
            InvalidEvent: bad channel or id.
            RedisUnavailable: the PRIMARY Redis cannot be reached.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        reads, errors = self._replay_plan(dict.fromkeys(channels, "0-0"))
        maximum = until_id if until_id == "+" else format_stream_id(parse_stream_id(until_id))
        with errors:
            pipe = self.client.pipeline(transaction=False)
            for read in reads:
                pipe.xrevrange(read.key, max=maximum, min="-", count=count)
            newest_first = pipe.execute()
        return self._replayed(reads, [list(reversed(rows)) for rows in newest_first])

    def latest_id(self, channel: str) -> str:
        """The id of the newest event kept for `channel`, `0-0` when there is none."""
        stream, errors = self._latest_call(channel)
        with errors:
            return self._newest_id(self.client.xrevrange(stream, max="+", min="-", count=1))

    def now_id(self) -> str:
        """An id just below anything published from now on (Redis' clock, not ours)."""
        with self._time_errors():
            seconds, microseconds = self.client.time()
        return time_baseline(int(seconds), int(microseconds))

    def channels_matching(self, pattern: str) -> list[str]:
        """Event channels that have a stream and match a pub/sub glob `pattern`.

        SCANs the keyspace: meant for a pattern subscriber's replay after a reconnect.
        """
        match, errors = self._scan_call(pattern)
        with errors:
            return self._event_channels(list(self.client.scan_iter(match=match, count=1000, _type="stream")))
