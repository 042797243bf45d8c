"""One log format for RQ's lines and ours; RQ's per-job INFO lines left out unless at DEBUG."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

import pytest

from workers.logs import RQ_LOGGERS, configure_logging

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|DEBUG) ([\w.]+): (.*)")


@pytest.fixture
def restored_loggers() -> Iterator[None]:
    """configure_logging changes process-wide loggers: put them back after the test."""
    names = ("kryonix", *RQ_LOGGERS)
    saved = {name: logging.getLogger(name) for name in names}
    state = {name: (log.handlers[:], log.propagate, log.level) for name, log in saved.items()}
    yield
    for name, (handlers, propagate, level) in state.items():
        saved[name].handlers, saved[name].propagate = handlers, propagate
        saved[name].setLevel(level)


def _emit_a_job() -> None:
    rq_log = logging.getLogger("rq.worker")
    rq_log.setLevel(logging.DEBUG)
    rq_log.info("Worker %s: started with PID %d, version %s", "w1", 7, "3.0.0")
    rq_log.info("Successfully completed %s job in %ss on worker %s", "jobs.x()", "0:00:00.1", "w1")
    rq_log.info("Worker %s: %s: %s (%s)", "w1", "email", "Job OK", "j1")
    rq_log.info("Worker %s: job %s result is kept for %s seconds", "w1", "j1", 500)
    rq_log.warning("Worker %s: job %s failed (%s)", "w1", "j2", "boom")
    logging.getLogger("kryonix.job_stats").info("job j1 queue=email status=finished")


@pytest.mark.usefixtures("restored_loggers")
def test_rq_and_kryonix_lines_share_one_format_without_rq_per_job_lines(
    capsys: pytest.CaptureFixture[str], settings_env: Callable[..., None]
) -> None:
    settings_env(LOG_FORMAT="text")
    configure_logging(logging.INFO, force=True)
    _emit_a_job()
    lines = capsys.readouterr().err.splitlines()
    parsed = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m.group(2), m.group(3)) for m in parsed if m] == [
        ("rq.worker", "Worker w1: started with PID 7, version 3.0.0"),
        ("rq.worker", "Worker w1: job j2 failed (boom)"),
        ("kryonix.job_stats", "job j1 queue=email status=finished"),
    ]


@pytest.mark.usefixtures("restored_loggers")
def test_at_debug_every_rq_line_is_kept(
    capsys: pytest.CaptureFixture[str], settings_env: Callable[..., None]
) -> None:
    settings_env(LOG_FORMAT="text")
    configure_logging(logging.DEBUG, force=True)
    _emit_a_job()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 6 and all(TEXT_LINE.fullmatch(line) for line in lines), lines
    assert any("result is kept for 500 seconds" in line for line in lines)
