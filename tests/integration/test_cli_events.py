"""`python -m workers events` tails live events (marker `realtime`)."""

from __future__ import annotations

import signal
import sys

import pytest
import redis

from cache.realtime.service import RealtimeService
from tests.integration.processes import Processes, log_of
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
