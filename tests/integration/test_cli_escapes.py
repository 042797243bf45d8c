"""`failed list/show`, `job ID` and `status` escape job data: no terminal control (marker `security`).

Ids were escaped, but a failure reason, kind or function name written by hand into
Redis (or carried from user text into an error message) reached the terminal as is:
OSC sequences set the window title or, with OSC 52, the clipboard. A hand-written
`progress` meta made `job ID` exit with a traceback.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from tests.integration.poison import job_hash
from tests.integration.processes import Processes

pytestmark = pytest.mark.security

ESCAPES = [
    "\x1b]0;owned\x07",  # window title
    "\x1b]52;c;aGk=\x07",  # clipboard write
    "\x1b[2J\x1b[31m",  # clear screen, colour
    "\x9b31m",  # 8-bit CSI
    "\r\x1b[Kfake line",  # overwrite the line
]
CONTROL = ("\x1b", "\x07", "\x9b", "\r")


def failed_job(primary: redis.Redis, job_id: str, text: str, **fields: object) -> None:
    failure = {
        "kind": "permanent" + text,
        "type": "X",
        "reason": "reason " + text,
        "attempt": 1,
        "at": time.time(),
    }
    job_hash(primary, job_id, "email", status="failed", meta=json.dumps({"failure": failure}), **fields)
    primary.zadd("rq:failed:email", {job_id: time.time() + 3600})


@pytest.mark.parametrize("text", ESCAPES, ids=repr)
def test_failed_list_and_job_escape_control_characters_in_job_data(
    primary: redis.Redis, processes: Processes, text: str
) -> None:
    failed_job(primary, "escapes", text)

    for args in (("failed", "list"), ("failed", "show", "escapes"), ("job", "escapes")):
        shown = processes.cli(*args)
        assert shown.returncode == 0, shown.stderr
        assert "escapes" in shown.stdout
        assert not any(char in shown.stdout for char in CONTROL), (args, shown.stdout)


@pytest.mark.parametrize("progress", [{"percent": "abc"}, 5, {"percent": None}, [1]], ids=repr)
def test_job_shows_a_job_whose_progress_meta_is_hand_written(
    primary: redis.Redis, processes: Processes, progress: object
) -> None:
    job_hash(primary, "odd-progress", "email", status="started", meta=json.dumps({"progress": progress}))

    shown = processes.cli("job", "odd-progress")
    assert shown.returncode == 0, shown.stderr
    assert "odd-progress on email: started" in shown.stdout


@pytest.mark.parametrize("text", ESCAPES, ids=repr)
def test_status_escapes_control_characters_in_a_forged_worker_record(
    primary: redis.Redis, processes: Processes, text: str
) -> None:
    name = "forged" + text
    key = f"rq:worker:{name}"
    primary.sadd("rq:workers", key)
    primary.sadd("rq:workers:email", key)
    primary.hset(key, mapping={"queues": "email", "state": "busy" + text, "current_job": "job" + text})
    primary.hset(
        key, mapping={"birth": "2026-12-01T10:00:00.000000Z", "last_heartbeat": "2026-12-01T10:00:00.000000Z"}
    )

    shown = processes.cli("status")
    assert "forged" in shown.stdout, shown.stderr
    assert not any(char in shown.stdout for char in CONTROL), shown.stdout
