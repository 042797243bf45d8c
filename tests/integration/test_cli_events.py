"""`python -m workers events` tails live events (marker `realtime`)."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import redis

from cache.realtime.service import RealtimeService
from tests.integration.processes import Processes, log_of, stderr_of
from tests.waiting import wait_until

pytestmark = pytest.mark.realtime


def test_events_command_prints_the_chosen_users_events(primary: redis.Redis, processes: Processes) -> None:
    tail = processes.start(sys.executable, "-m", "workers", "events", "--user", "42", name="tail")
    service = RealtimeService()

    def published_and_seen() -> bool:
        service.publish_user_event(7, "report.ready", {"other": "user"})
        service.publish_user_event(42, "report.ready", {"report_id": "r-1"})
        return "r-1" in log_of(tail)

    wait_until(published_and_seen, 30, "the tail printed user 42's event", interval_s=0.5)
    tail.send_signal(signal.SIGINT)
    tail.wait(30)
    output = log_of(tail)
    assert "user:42:events" in output and "report.ready" in output
    assert "user:7:events" not in output


def test_events_command_refuses_a_bad_user_id(processes: Processes) -> None:
    result = processes.cli("events", "--user", "bad id\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_events_command_says_what_it_follows_and_replays_the_last_events_first(
    primary: redis.Redis, processes: Processes
) -> None:
    service = RealtimeService()
    for n in range(1, 4):
        service.publish_user_event(42, "report.progress", {"n": n})
    service.publish_system_event("deploy", {"n": 10})
    service.publish_user_event(7, "report.progress", {"n": 70})
    tail = processes.start(
        sys.executable, "-m", "workers", "events", "--user", "42", "--system", "--replay", "2",
        name="tail", split_stderr=True,
    )  # fmt: skip
    wait_until(lambda: "following" in stderr_of(tail), 30, "the tail said what it follows")
    assert stderr_of(tail).splitlines() == [
        "following user:42:events, system:events after the last 2 event(s) of each; Ctrl-C to stop"
    ]
    service.publish_user_event(42, "report.ready", {"n": 4})
    wait_until(lambda: "report.ready" in log_of(tail), 30, "the live event followed the replay")
    tail.send_signal(signal.SIGINT)
    tail.wait(30)
    printed = [line.split(" ", 4) for line in log_of(tail).splitlines()]
    numbers = {channel: [json.loads(data)["n"] for _, ch, _, _, data in printed if ch == channel]
               for channel in ("user:42:events", "system:events")}  # fmt: skip
    assert numbers == {"user:42:events": [2, 3, 4], "system:events": [10]}, "the last two, then live, once"
    assert json.loads(printed[-1][4])["n"] == 4 and len(printed) == 4, "the replay came first"


def test_events_command_follows_everything_by_default_and_says_so(processes: Processes) -> None:
    tail = processes.start(sys.executable, "-m", "workers", "events", name="tail", split_stderr=True)
    wait_until(lambda: "following" in stderr_of(tail), 30, "the tail said what it follows")
    assert "following user:*:events, system:events; Ctrl-C to stop" in stderr_of(tail)
    assert log_of(tail) == "", "stdout holds only events"


def test_events_command_refuses_a_negative_replay(processes: Processes) -> None:
    result = processes.cli("events", "--replay", "-1")
    assert result.returncode == 2
    assert "Invalid value for '--replay'" in result.stderr


def test_events_command_refuses_a_replay_past_its_maximum_in_one_line(processes: Processes) -> None:
    result = processes.cli("events", "--user", "42", "--replay", "9223372036854775808")
    assert result.returncode == 2
    assert "Invalid value for '--replay'" in result.stderr and "10000" in result.stderr
    assert "Traceback" not in result.stderr


def test_events_command_follows_a_user_named_twice_once(primary: redis.Redis, processes: Processes) -> None:
    service = RealtimeService()
    service.publish_user_event(42, "report.progress", {"n": 1})
    tail = processes.start(
        sys.executable, "-m", "workers", "events", "--user", "42", "--user", "42", "--replay", "5",
        name="tail", split_stderr=True,
    )  # fmt: skip
    wait_until(lambda: "following" in stderr_of(tail), 30, "the tail said what it follows")
    assert "following user:42:events after" in stderr_of(tail)
    service.publish_user_event(42, "report.ready", {"n": 2})
    wait_until(lambda: "report.ready" in log_of(tail), 30, "the live event was printed")
    tail.send_signal(signal.SIGINT)
    tail.wait(30)
    printed = [json.loads(line.split(" ", 4)[4])["n"] for line in log_of(tail).splitlines()]
    assert printed == [1, 2], "each event once"
