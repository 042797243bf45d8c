"""`python -m workers events [--user ID] [--system]`: print real-time events as they happen.

For operators and demos. One line per event; a restart of Redis while tailing loses
nothing (the subscriber replays), and a malformed message is logged and skipped.
"""

from __future__ import annotations

import threading
from typing import TextIO

import orjson

from cache import keys
from cache.realtime.envelope import Event
from cache.realtime.subscriber import Subscriber

ALL_USERS_PATTERN = keys.user_channel("*")


def format_event(event: Event) -> str:
    """`<timestamp> <channel> <event> <id> <data as JSON>`: greppable, one line."""
    data = orjson.dumps(event.data, option=orjson.OPT_SORT_KEYS).decode()
    return f"{event.timestamp} {event.channel} {event.event} {event.id} {data}"


def tail_events(
    user_ids: list[str],
    system: bool,
    out: TextIO,
    *,
    stop: threading.Event | None = None,
) -> None:
    """Write every event of the chosen channels to `out` until `stop` is set (or Ctrl-C).

    With neither `user_ids` nor `system`, tails everything: all users' channels (one
    pattern subscription) and the system channel.

    Args:
        user_ids: users whose `user:<id>:events` to follow.
        system: follow `system:events` too.
        out: where lines go; flushed after each event.
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

    sub = Subscriber()
    try:
        if not user_ids and not system:
            sub.psubscribe(ALL_USERS_PATTERN, write)
            sub.subscribe_system(write)
        for user_id in user_ids:
            sub.subscribe_user(user_id, write)
        if system:
            sub.subscribe_system(write)
        sub.start()
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()
