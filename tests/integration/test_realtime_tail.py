"""`tail_events`, behind `python -m workers events [--user ID] [--system]`."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
import pytest
import redis

from cache.realtime.envelope import InvalidEvent
from cache.realtime.service import RealtimeService
from tests.integration.realtime_fixtures import WAIT_S
from tests.waiting import wait_until
from workers.cli.events_tail import format_event, tail_events

pytestmark = pytest.mark.realtime


class Output(io.StringIO):
    """StringIO written by the subscriber thread and read by the test."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def lines(self) -> list[str]:
        with self._lock:
            return self.getvalue().splitlines()


@contextmanager
def tailing(user_ids: list[str], system: bool) -> Iterator[Output]:
    out, stop = Output(), threading.Event()
    thread = threading.Thread(target=tail_events, args=(user_ids, system, out), kwargs={"stop": stop})
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def prime(out: Output, publish: Callable[[], str]) -> None:
    """Publish probes until one shows up: from then on the tail is provably live."""
    wait_until(lambda: publish() in "\n".join(out.lines()), WAIT_S, "a probe printed by the tail")


def test_tail_prints_only_the_chosen_channels(primary: redis.Redis) -> None:
    service = RealtimeService()
    with tailing(["7"], system=True) as out:
        prime(out, lambda: service.publish_user_event(7, "probe", {}))
        start = len(out.lines())
        mine = service.publish_user_event(7, "report.ready", {"b": 2, "a": 1})
        service.publish_user_event(8, "not.mine", {})
        system = service.publish_system_event("maintenance", {"minutes": 5})
        wait_until(lambda: len(out.lines()) >= start + 2, WAIT_S, "two more lines printed")
        lines = out.lines()[start:]
    event = service.events_since(7, "0")[-1]
    assert lines == [format_event(event), format_event(service.events_since("system:events")[-1])]
    assert lines[0].endswith(f'user:7:events report.ready {mine} {{"a":1,"b":2}}')
    assert system in lines[1] and "not.mine" not in "".join(lines)


def test_tail_writes_no_terminal_control_of_the_events_data_and_the_json_still_parses(
    primary: redis.Redis,
) -> None:
    service = RealtimeService()
    hostile = {"m": "\x9b31mC1 \u202eRTL \x1b[31mESC \x85NEL \u200b \U0001f600 \U000e0001", "\x9b2J": 1}
    with tailing(["7"], system=False) as out:
        prime(out, lambda: service.publish_user_event(7, "probe", {}))
        sent = service.publish_user_event(7, "x.y", hostile)
        wait_until(lambda: sent in "\n".join(out.lines()), WAIT_S, "the hostile event printed")
        [line] = [line for line in out.lines() if sent in line]
    assert line.isprintable() and "\x1b" not in line, line
    assert orjson.loads(line.split(" ", 4)[4]) == hostile, "the escapes are JSON's: the value is unchanged"
    assert "\U0001f600" in line, "printable text (an emoji) stays as it is"


def test_tail_without_filters_follows_every_user_and_the_system(primary: redis.Redis) -> None:
    service = RealtimeService()
    with tailing([], system=False) as out:
        prime(out, lambda: service.publish_system_event("probe", {}))
        ids = [service.publish_user_event(user, "e", {}) for user in ("a", "b")]
        wait_until(lambda: all(i in "\n".join(out.lines()) for i in ids), WAIT_S, f"events {ids} printed")


def test_tail_rejects_a_bad_user_id(primary: redis.Redis) -> None:
    with pytest.raises(InvalidEvent, match="user_id"):
        tail_events(["not valid"], False, io.StringIO(), stop=threading.Event())
