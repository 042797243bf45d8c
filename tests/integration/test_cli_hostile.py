"""`failed` and `job` against job data written by hand into Redis (marker `security`).

An attack run found: `failed requeue` sending a job to the queue its hash's `origin`
named (none, or an escape sequence) while printing the registry's queue; one bad
result-stream entry or quarantine entry stopping `failed list` and `status`; `job ID`
printing tracebacks or "no job" for a job that exists but cannot be read; cryptic
errors (`Error: utf-8`) and ids escaped twice.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import zlib

import pytest
import redis

from jobs.quarantine import QUARANTINE_KEY
from tests.integration.poison import job_hash
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until

pytestmark = pytest.mark.security


def _failed(primary: redis.Redis, job_id: str, **fields: object) -> None:
    job_hash(primary, job_id, "email", status="failed", **fields)
    primary.zadd("rq:failed:email", {job_id: time.time() + 3600})


def _ok(processes: Processes, *args: str) -> str:
    shown = processes.cli(*args)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    return shown.stdout


def _error(processes: Processes, *args: str) -> str:
    shown = processes.cli(*args)
    assert shown.returncode == 1, (shown.stdout, shown.stderr)
    assert "Traceback" not in shown.stderr and len(shown.stderr.splitlines()) == 1, shown.stderr
    return shown.stderr


@pytest.mark.parametrize("origin", [None, "\x1b]0;PWNED\x07", "report"], ids=repr)
def test_failed_requeue_puts_the_job_on_the_queue_whose_registry_listed_it(
    primary: redis.Redis, processes: Processes, origin: str | None
) -> None:
    _failed(primary, "noorigin", origin=origin)
    if origin is None:
        primary.hdel("rq:job:noorigin", "origin")

    shown = _ok(processes, "failed", "show", "noorigin")
    assert shown.startswith("job noorigin on email: failed"), shown
    said = _ok(processes, "failed", "requeue", "noorigin")
    assert said.startswith("requeued noorigin on email (its origin was "), said
    assert "\x1b" not in said
    assert primary.lrange("rq:queue:email", 0, -1) == [b"noorigin"]
    assert primary.hget("rq:job:noorigin", "origin") == b"email"
    assert [key for key in primary.scan_iter("rq:queue:*")] == [b"rq:queue:email"], "no queue nobody serves"


def test_failed_show_of_a_failed_status_no_registry_lists_does_not_contradict_itself(
    primary: redis.Redis, processes: Processes
) -> None:
    job_hash(primary, "stray", "email", status="failed")
    said = _error(processes, "failed", "show", "stray")
    assert "says it failed, but no failed registry lists it" in said
    assert "it is failed" not in said


def test_an_unreadable_result_entry_is_a_reason_not_an_error(
    primary: redis.Redis, processes: Processes
) -> None:
    _failed(primary, "esc3")
    _failed(primary, "fine")
    primary.xadd("rq:results:esc3", {"type": "zz", "created_at": "garbage", "exc_string": "x"})

    listed = _ok(processes, "failed", "list")
    assert "2 failed job(s)" in listed and "fine" in listed
    assert "esc3" in listed and "result stream entry unreadable" in listed
    assert "result stream entry unreadable" in _ok(processes, "failed", "show", "esc3")
    assert "esc3 on email: failed" in _ok(processes, "job", "esc3")


def test_job_shows_a_finished_job_whose_result_is_garbage(primary: redis.Redis, processes: Processes) -> None:
    job_hash(primary, "fin", "email", status="finished")
    primary.xadd("rq:results:fin", {"type": "1", "created_at": "1", "return_value": "\xe9t\xe9"})

    shown = _ok(processes, "job", "fin")
    assert "fin on email: finished" in shown
    assert "  result: <unreadable: " in shown


@pytest.mark.parametrize("at", ["notafloat", None, True, 1e300, -5])
def test_a_hand_written_quarantine_entry_stops_neither_failed_list_nor_status(
    primary: redis.Redis, processes: Processes, at: object
) -> None:
    entry = {"queue": "x", "id": "y", "reason": "r", "source": "", "at": at}
    primary.hset(QUARANTINE_KEY, "q/y", json.dumps(entry))
    primary.hset(
        QUARANTINE_KEY, "email/ok", json.dumps(entry | {"id": "ok", "queue": "email", "at": time.time()})
    )
    primary.hset(QUARANTINE_KEY, "q/z", "not json")

    listed = _ok(processes, "failed", "list").splitlines()
    assert len(listed) == 4 and listed[-1] == "3 failed job(s)", listed
    assert listed[0].startswith("ok  email  20"), "the readable one first, with its time"
    unreadable = [line for line in listed[1:3]]
    assert all("  -  " in line and "unreadable quarantine entry" in line for line in unreadable), unreadable
    assert "1970" not in "\n".join(listed)
    rows = json.loads(_ok(processes, "failed", "list", "--json"))
    assert [row["failed_at"] is None for row in rows] == [False, True, True]
    report = json.loads(processes.cli("status", "--json").stdout)
    assert report["queues"]["quarantined"] == 3, report["queues"]


@pytest.mark.parametrize("args", [("job", "undecodable"), ("job", "undecodable", "--json")])
def test_job_shows_a_job_whose_data_cannot_be_decoded(
    primary: redis.Redis, processes: Processes, args: tuple[str, ...]
) -> None:
    _failed(primary, "undecodable", data=b"\x78\x9c\xff\xff")
    assert "<undecodable>" in _ok(processes, *args)
    shown = _ok(processes, "failed", "show", "undecodable")
    assert "  function: <undecodable>" in shown
    assert "'<undecodable: DeserializationError" in shown, shown


@pytest.mark.parametrize(
    "fields",
    [{"data": None}, {"status": "\x1b[31m"}, {"enqueued_at": "garbage"}, {"description": b"\xff\xfe"}],
    ids=repr,
)
def test_job_says_a_job_that_exists_is_unreadable_and_why(
    primary: redis.Redis, processes: Processes, fields: dict[str, object]
) -> None:
    job_hash(primary, "broken", "email", **fields)
    said = _error(processes, "job", "broken")
    assert "job 'broken' cannot be shown: job hash rq:job:broken is unreadable" in said, said
    assert "no job" not in said


def test_job_watch_says_so_when_the_job_turns_unreadable(primary: redis.Redis, processes: Processes) -> None:
    job_hash(primary, "turns", "email", status="started")
    watch = processes.start(sys.executable, "-m", "workers", "job", "turns", "--watch", name="watch")
    wait_until(lambda: "started" in log_of(watch), 30, "the watch printed the job's state")
    primary.hset("rq:job:turns", "meta", "5")
    assert watch.wait(30) == 1
    assert "job 'turns' cannot be shown: job hash rq:job:turns is unreadable: meta is JSON int" in log_of(
        watch
    )
    assert "Traceback" not in log_of(watch)


def test_failed_requeue_of_an_unreadable_entry_says_it_is_there(
    primary: redis.Redis, processes: Processes
) -> None:
    _failed(primary, "nodata", data=None)
    assert "nodata  email  -  attempts=0  unreadable" in _ok(processes, "failed", "list")

    said = _error(processes, "failed", "requeue", "nodata")
    assert "job 'nodata' is in the email failed registry but cannot be requeued" in said
    assert "no data field" in said and "failed purge --queue email" in said


@pytest.mark.parametrize("command", [("failed", "requeue"), ("failed", "show"), ("job",)])
@pytest.mark.parametrize(
    ("job_id", "quoted"),
    [("\udcff\x1b[31m", "'\\udcff\\x1b[31m'"), ("ok\x1b[31m", "'ok\\x1b[31m'")],
    ids=repr,
)
def test_a_job_id_that_cannot_be_one_is_one_clear_line_escaped_once(
    processes: Processes, command: tuple[str, ...], job_id: str, quoted: str
) -> None:
    said = _error(processes, *command, job_id)
    assert said == f"Error: job id {quoted} is malformed: only letters, digits, '_' and '-' allowed\n"


def test_failed_show_prints_the_end_of_a_huge_traceback(primary: redis.Redis, processes: Processes) -> None:
    traceback = "".join(f'  File "x.py", line {n}, in f\n' for n in range(200_000)) + "LastError: the end\n"
    _failed(primary, "huge")
    exc_string = base64.b64encode(zlib.compress(traceback.encode())).decode()
    primary.xadd("rq:results:huge", {"type": "2", "created_at": "1", "exc_string": exc_string})

    shown = _ok(processes, "failed", "show", "huge")
    assert len(shown) < 100_000, len(shown)
    assert shown.rstrip().endswith("LastError: the end")
    assert "lines) cut; `failed show huge --json` prints it whole]" in shown
    whole = json.loads(_ok(processes, "failed", "show", "huge", "--json"))
    assert whole["traceback"] == traceback
