"""`job ID --watch`: one line per change off a terminal, one bar redrawn in place on one.

It appended a whole block every second (58 lines for a 16 s report).
"""

from __future__ import annotations

import io
import os
import pty
from collections.abc import Iterator
from typing import Any

import pytest

from workers.cli.failed import iso_utc
from workers.cli.jobwatch import progress_line, watch_job
from workers.job import count_run, runs_of


def _info(status: str, percent: float | None = None, message: str = "") -> dict[str, Any]:
    progress = None if percent is None else {"percent": percent, "message": message}
    return {
        "id": "j1",
        "queue": "report",
        "func": "jobs.x",
        "status": status,
        "attempts": 1,
        "progress": progress,
    }


def _describe(states: list[dict[str, Any]]) -> Any:
    remaining: Iterator[dict[str, Any]] = iter(states)
    return lambda: next(remaining)


STATES = [
    _info("queued"),
    _info("queued"),
    _info("started", 10.0, "1 / 10 rows"),
    _info("started", 10.0, "1 / 10 rows"),
    _info("started", 10.0, "1 / 10 rows"),
    _info("started", 55.5, "5 / 10 rows"),
    _info("finished", 100.0, "done"),
]


def test_off_a_terminal_one_line_is_written_per_change_then_the_final_state() -> None:
    out = io.StringIO()
    info = watch_job(_describe(STATES), out=out, interval_s=0)

    assert info["status"] == "finished"
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "queued",
        "started 10.0% 1 / 10 rows",
        "started 55.5% 5 / 10 rows",
        "finished 100.0% done",
    ]
    assert lines[4] == "job j1 on report: finished (attempt 1)"
    assert len(lines[:4]) == len(set(lines[:4])), "no line twice"


def test_a_progress_line_escapes_job_data() -> None:
    assert progress_line(_info("started", 1.0, "\x1b]0;owned\x07")) == "started 1.0% \\x1b]0;owned\\x07"


def test_on_a_terminal_one_bar_is_redrawn_in_place() -> None:
    many = [_info("started", float(n), f"{n} / 40 rows") for n in range(40)] + [_info("finished", 100.0)]
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as out:
        watch_job(_describe(many), out=out, interval_s=0.01)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode()

    assert "\x1b[" in text, "cursor control: the bar is redrawn"
    assert text.count("\n") < 10, f"41 states must not become 41 lines: {text!r}"
    assert "job j1 on report: finished (attempt 1)" in text


def test_runs_count_each_start_and_ignore_a_forged_count() -> None:
    class FakeJob:
        meta: dict[str, Any] = {}
        _unreadable_meta = None

    job: Any = FakeJob()
    job.meta = {"runs": "abc"}
    assert runs_of(job) == 0
    count_run(job)
    count_run(job)
    assert runs_of(job) == 2


def test_times_are_iso_utc_to_the_second() -> None:
    assert iso_utc(0.5) == "1970-01-01T00:00:00Z"
    assert iso_utc(None) is None


def test_on_a_terminal_a_missing_job_draws_nothing_before_the_error() -> None:
    def missing() -> dict[str, Any]:
        raise LookupError("no job 'nonexist'")

    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as out:
        with pytest.raises(LookupError, match="nonexist"):
            watch_job(missing, out=out, interval_s=0)
        out.flush()
        os.set_blocking(master, False)
        try:
            drawn = os.read(master, 65536)
        except BlockingIOError:
            drawn = b""
    os.close(master)
    assert drawn == b"", "no empty bar before the error"
