"""Report jobs in real `rq worker` processes, on SQLite and PostgreSQL (marker `reports`).

Completion, progress and the job view, the stop command, a worker killed mid-report,
failure classification and scheduled reports.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.command import send_stop_job_command
from sqlalchemy import Engine, func, select

from cache.appcache.platform import activity
from cache.realtime.service import RealtimeService
from jobs.enqueue import enqueue, fetch_job
from jobs.queues import KryonixQueue
from jobs.reports import enqueue_report, scheduled_report
from jobs.reports.seed import SeedPlan, seed_demo
from jobs.retry import RetryPolicy
from jobs.serialization import JSONSerializer
from tests.integration.processes import Processes, log_of
from tests.integration.reports_fixtures import (
    all_files,
    db_url,
    detail_rows_in_db,
    full_range,
    read_csv,
    seed_bulk,
    visible_files,
)
from tests.waiting import wait_until
from workers.cli.failed import list_failed
from workers.job import runs_of
from workers.scheduler import PeriodicScheduler

pytestmark = pytest.mark.reports

FAST_RETRY = RetryPolicy(attempts=3, base_s=1, factor=1, cap_s=1)
ROWS = 100_000


def _worker(
    processes: Processes, engine: Engine | None, directory: Path, name: str = "worker", url: str | None = None
) -> subprocess.Popen[bytes]:
    return processes.worker(
        "report",
        name=name,
        DATABASE_URL=url or db_url(engine),
        REPORTS_DIR=str(directory),  # type: ignore[arg-type]
    )


def _status(job_id: str) -> str | None:
    job = fetch_job(job_id=job_id)
    return None if job is None else job.get_status(refresh=True).value


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux `/proc`), e.g. a worker's forked horse."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    assert found, f"process {pid} has no child: the report is not running in a horse"
    return found


def _progress(job_id: str) -> dict[str, Any]:
    job = fetch_job(job_id=job_id)
    return {} if job is None else dict(job.meta.get("progress") or {})


class _Watch:
    """Asserts, at every poll, that no partial report is ever visible in the reports directory."""

    def __init__(self, directory: Path, report_id: str, expected_lines: int) -> None:
        self.directory = directory
        self.final = f"{report_id}.csv"
        self.expected_lines = expected_lines
        self.polls = 0

    def check(self) -> None:
        self.polls += 1
        visible = visible_files(self.directory)
        assert set(visible) <= {self.final}, f"unexpected visible files {visible}"
        if visible:
            lines = read_csv(self.directory / self.final)
            assert len(lines) == self.expected_lines, f"a partial report was visible: {len(lines)} lines"


@pytest.mark.timeout(180)
def test_report_completes_with_progress_event_and_job_view(
    db_engine: Engine, primary: redis.Redis, processes: Processes, reports_dir: Path
) -> None:
    plan = seed_bulk(db_engine, ROWS)
    job_id = enqueue_report(
        "activity_detail",
        full_range(plan),
        requested_by=7,
        notify_email="ops@example.com",
        throttle_rows_per_s=40_000,  # about 2.5 s: long enough to watch it run
    )
    processes.env["REPORTS_BASE_URL"] = "https://app.example.com/reports/"
    worker = _worker(processes, db_engine, reports_dir)
    wait_until(lambda: _progress(job_id).get("rows_done", 0) > 0, 60, "progress while running")
    paused = _descendants(worker.pid)  # the horse: frozen while the CLI starts, so it is still running
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        running = processes.cli("job", job_id)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    assert running.returncode == 0, running.stderr
    assert "started" in running.stdout and "[#" in running.stdout and f"/ {ROWS:,} rows" in running.stdout
    watch = _Watch(reports_dir, job_id, ROWS + 1)
    wait_until(lambda: watch.check() or _status(job_id) == "finished", 90, "report finished")

    job = fetch_job(job_id=job_id)
    assert job is not None
    result = job.return_value()
    path = Path(result["path"])
    assert path == (reports_dir / f"{job_id}.csv").resolve()
    assert (result["rows"], result["format"], result["report_id"]) == (ROWS, "csv", job_id)
    assert result["size_bytes"] == path.stat().st_size
    rows = read_csv(path)
    assert rows[1:] == detail_rows_in_db(db_engine), "the file matches the database"
    assert all_files(reports_dir) == [path.name]
    progress = _progress(job_id)
    assert (progress["percent"], progress["rows_done"], progress["rows_total"]) == (100.0, ROWS, ROWS)

    finished = processes.cli("job", job_id)
    assert "finished" in finished.stdout and "result:" in finished.stdout and str(path) in finished.stdout
    events = RealtimeService(primary).events_since(7)
    [event] = [e for e in events if e.event == "report.ready"]
    assert event.data["report_id"] == job_id and event.data["rows"] == ROWS
    progress_events = [e.data for e in events if e.event == "report.progress"]
    assert progress_events, "the requesting user is told how far the report is"
    assert all(p["report_id"] == job_id and 0 <= p["percent"] <= 100 for p in progress_events)
    assert events.index(event) > max(i for i, e in enumerate(events) if e.event == "report.progress")
    assert event.data["sha256"] == result["sha256"]
    assert event.data["download_url"] == f"https://app.example.com/reports/{job_id}.csv", "REPORTS_BASE_URL"
    if importlib.util.find_spec("jobs.email") is None:
        assert "'report ready' email to ['ops@example.com'] NOT sent" in log_of(worker)
    else:
        assert KryonixQueue("email", connection=primary).count == 1, "one report-ready email queued"


@pytest.mark.timeout(120)
def test_stop_command_leaves_no_file(
    db_engine: Engine, primary: redis.Redis, processes: Processes, reports_dir: Path
) -> None:
    plan = seed_bulk(db_engine, ROWS)
    job_id = enqueue_report("activity_detail", full_range(plan), throttle_rows_per_s=20_000)
    _worker(processes, db_engine, reports_dir)
    wait_until(lambda: _progress(job_id).get("rows_done", 0) >= 10_000, 60, "report under way")
    send_stop_job_command(primary, job_id, serializer=JSONSerializer)
    wait_until(lambda: _status(job_id) == "stopped", 30, "job stopped")
    assert all_files(reports_dir) == [], "neither the report nor a temporary file remains"
    assert _progress(job_id)["rows_done"] < ROWS
    assert KryonixQueue("report", connection=primary).scheduled_job_registry.count == 0, (
        "a stop is not retried"
    )
    shown = processes.cli("job", job_id)
    assert "stopped" in shown.stdout


@pytest.mark.timeout(240)
def test_worker_killed_mid_report_is_rerun_and_never_shows_a_partial_file(
    db_engine: Engine, primary: redis.Redis, processes: Processes, reports_dir: Path
) -> None:
    plan = seed_bulk(db_engine, ROWS)
    job_id = enqueue_report("activity_detail", full_range(plan), throttle_rows_per_s=25_000, retry=FAST_RETRY)
    watch = _Watch(reports_dir, job_id, ROWS + 1)
    doomed = _worker(processes, db_engine, reports_dir, name="doomed")
    wait_until(lambda: watch.check() or _progress(job_id).get("rows_done", 0) >= 20_000, 60, "half way")
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker; its horse dies with it (PR_SET_PDEATHSIG)
    doomed.wait()
    assert visible_files(reports_dir) == []

    _worker(processes, db_engine, reports_dir, name="survivor")
    processes.scheduler()
    wait_until(lambda: watch.check() or _status(job_id) == "finished", 150, "job recovered and finished")
    job = fetch_job(job_id=job_id)
    assert job is not None and runs_of(job) >= 2, "it ran again after the crash"
    assert job.return_value()["rows"] == ROWS
    assert read_csv(reports_dir / f"{job_id}.csv")[1:] == detail_rows_in_db(db_engine)
    assert all_files(reports_dir) == [f"{job_id}.csv"], "no temporary file left by the killed run"
    assert watch.polls > 10


@pytest.mark.timeout(120)
def test_failures_are_classified(primary: redis.Redis, processes: Processes, tmp_path: Path) -> None:
    invalid = enqueue("report", "jobs.reports.jobs.generate_report", "sales", kwargs={"filters": {}})
    unreachable = enqueue(
        "report",
        "jobs.reports.jobs.generate_report",
        "users",
        retry=RetryPolicy(attempts=1, base_s=1, factor=1, cap_s=1),
    )
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    _worker(processes, None, tmp_path / "reports", url=url)
    processes.scheduler()
    wait_until(lambda: _status(invalid) == _status(unreachable) == "failed", 90, "both failed")
    failed = {row.id: row for row in list_failed(primary, queue="report")}
    assert failed[invalid].kind == "permanent" and failed[invalid].attempts == 1
    assert failed[invalid].reason.startswith("invalid report definition: unknown report type 'sales'")
    assert failed[unreachable].kind == "transient" and failed[unreachable].attempts == 2, "retried once"
    assert failed[unreachable].reason.startswith("database unavailable: OperationalError")
    assert "127.0.0.1" in failed[unreachable].reason and "postgres@" not in failed[unreachable].reason


@pytest.mark.timeout(120)
def test_scheduled_report_fires_through_the_periodic_scheduler(
    db_engine: Engine, primary: redis.Redis, processes: Processes, reports_dir: Path
) -> None:
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    seed_demo(db_engine, SeedPlan(companies=5, users=100, days=3, activity=600, until=yesterday))
    entry = scheduled_report(
        "daily-detail", "* * * * *", "activity_detail", {}, ["ops@example.com"], window_days=1
    )
    scheduler = PeriodicScheduler([entry], primary, tick_s=1)
    scheduler.register(time.time() - 120)
    [due] = scheduler.get_jobs_to_queue()
    scheduler.enqueue_job(due)
    [run_id] = KryonixQueue("report", connection=primary).job_ids
    _worker(processes, db_engine, reports_dir)
    wait_until(lambda: _status(run_id) == "finished", 60, "scheduled run finished")
    job = fetch_job(job_id=run_id)
    assert job is not None
    slot_day = dt.datetime.fromtimestamp(job.meta["slot"], dt.UTC).date()
    result = job.return_value()
    day = slot_day - dt.timedelta(days=1)
    assert result["filters"] == {"date_from": day.isoformat(), "date_to": day.isoformat()}
    with db_engine.connect() as conn:
        expected = conn.execute(
            select(func.count()).select_from(activity).where(activity.c.day == day)
        ).scalar()
    assert result["rows"] == expected and expected > 0
    assert {row[1] for row in read_csv(Path(result["path"]))[1:]} == {day.isoformat()}
