"""`python -m workers events [--user ID] [--system] [--replay N]`: print real-time events as they happen.

For operators and demos. One line per event on `out`, after the last N events of each
followed channel when asked; what is followed is said once on `notice` (stderr), so
`out` holds only events. A restart of Redis while tailing loses nothing (the
subscriber replays), and a malformed message is logged and skipped.
"""

from __future__ import annotations

import threading
from typing import TextIO

import orjson

from cache import keys
from cache.realtime.envelope import Event, parse_stream_id, validate_user_id
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from cache.text import printable

ALL_USERS_PATTERN = keys.user_channel("*")
READY_TIMEOUT_S = 10.0


def format_event(event: Event) -> str:
    """`<timestamp> <channel> <event> <id> <data as JSON>`: greppable, one line.

    Event data is anyone's text: no character of it that a terminal would act on (C0 and C1
    controls, bidirectional overrides, ...) is written raw. In the JSON it becomes a `\\u`
    escape, so the data still parses to the same value.
    """
    data = _json_escaped(orjson.dumps(event.data, option=orjson.OPT_SORT_KEYS).decode())
    head = " ".join(printable(part) for part in (event.timestamp, event.channel, event.event, event.id))
    return f"{head} {data}"


def _json_escaped(text: str) -> str:
    """Every non-printable character of JSON `text` as its `\\uXXXX` escape (a surrogate pair
    above U+FFFF); outside strings JSON holds only printable ASCII, so the value is unchanged."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _u_escape(char) for char in text)


def _u_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def tail_events(
    user_ids: list[str],
    system: bool,
    out: TextIO,
    *,
    replay: int = 0,
    notice: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Write every event of the chosen channels to `out` until `stop` is set (or Ctrl-C).

    With neither `user_ids` nor `system`, tails everything: all users' channels (one
    pattern subscription) and the system channel.

    Args:
        user_ids: users whose `user:<id>:events` to follow.
        system: follow `system:events` too.
        out: where event lines go; flushed after each event.
        replay: first write the last `replay` events of each followed channel (the
            channels of all users that have a stream, when following everything).
        notice: gets one line saying what is followed, once subscribed.
        stop: set it to return; without one, runs until KeyboardInterrupt.

    Raises:
        InvalidEvent: a user id is malformed.
        RedisUnavailable: the PRIMARY Redis cannot be reached at start.
    """
    stop = stop or threading.Event()
    lock = threading.Lock()

    def write(event: Event) -> None:
        with lock:
            out.write(format_event(event) + "\n")
            out.flush()

    service = RealtimeService()
    baseline = service.now_id()  # replayed: up to here; followed: after it, so nothing twice
    everything = not user_ids and not system
    channels = [keys.user_channel(validate_user_id(user_id)) for user_id in user_ids]
    channels += [keys.SYSTEM_CHANNEL] if system or everything else []
    sub = Subscriber(service=service)
    try:
        if everything:
            sub.psubscribe(ALL_USERS_PATTERN, write, since=baseline)
        for channel in channels:
            sub.subscribe(channel, write, since=baseline)
        if replay:
            replayed = channels + (service.channels_matching(ALL_USERS_PATTERN) if everything else [])
            for event in _merged(service.recent(replayed, count=replay, until_id=baseline)):
                write(event)
        sub.start()
        sub.wait_ready(READY_TIMEOUT_S)
        if notice is not None:
            notice.write(_following(([ALL_USERS_PATTERN] if everything else []) + channels, replay) + "\n")
            notice.flush()
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()


def _following(channels: list[str], replay: int) -> str:
    replayed = f" after the last {replay} event(s) of each" if replay else ""
    return f"following {', '.join(channels)}{replayed}; Ctrl-C to stop"


def _merged(events: dict[str, list[Event]]) -> list[Event]:
    """The events of every channel by the millisecond they were published, each channel in order.

    Ids of different streams are ordered only by their millisecond part: the sort is stable.
    """
    return sorted((e for found in events.values() for e in found), key=lambda e: parse_stream_id(e.id)[0])
