"""Operations: the supervisord tree, rq-dashboard, JSON logs (marker `ops`)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from cache import connections
from cache.connections import Role
from cache.errors import ConfigError
from cache.settings import Settings
from jobs.enqueue import enqueue, fetch_job
from jobs.queues import KryonixQueue
from tests.integration.ops_fixtures import Tree
from tests.integration.processes import Processes, log_of
from tests.integration.sentinel import SentinelCluster
from tests.waiting import wait_until
from workers.dashboard.app import create_app, is_loopback
from workers.dev.servers import PROJECT_ROOT, free_port, wait_for_port

pytestmark = pytest.mark.ops


def _status(job_id: str) -> str | None:
    job = fetch_job(job_id=job_id)
    return None if job is None else job.get_status(refresh=True).value


@pytest.mark.timeout(300)
def test_supervisord_tree_runs_jobs_and_recovers_a_killed_worker(primary: redis.Redis, tree: Tree) -> None:
    email = enqueue("email", "jobs.diagnostics.record", "kx:ran", "email")
    report = enqueue("report", "jobs.diagnostics.record", "kx:ran", "report")
    wait_until(lambda: _status(email) == _status(report) == "finished", 60, "both jobs processed")

    # Both email workers block on the queue; whichever takes this job is SIGKILLed mid-job.
    slow = enqueue("email", "jobs.diagnostics.sleep", 3, "kx:slow", "recovered")
    wait_until(lambda: _status(slow) == "started", 30, "slow job started")
    job = fetch_job(job_id=slow)
    assert job is not None and job.worker_name
    email_workers = ("kryonix:email-worker-00", "kryonix:email-worker-01")
    busy = [name for name in email_workers if _worker_running(primary, tree.pid(name), slow)]
    assert len(busy) == 1
    old_pid = tree.pid(busy[0])
    os.kill(old_pid, signal.SIGKILL)
    wait_until(
        lambda: tree.states().get(busy[0]) == "RUNNING" and tree.pid(busy[0]) != old_pid, 60, "restarted"
    )
    wait_until(lambda: _status(slow) == "finished", 120, "killed worker's job recovered by the scheduler")
    assert primary.lrange("kx:slow", 0, -1) == [b"recovered"]


def _worker_running(primary: redis.Redis, pid: int, job_id: str) -> bool:
    from rq.worker import Worker

    return any(w.pid == pid and w.get_current_job_id() == job_id for w in Worker.all(connection=primary))


@pytest.mark.timeout(180)
def test_supervisorctl_stop_lets_the_running_job_finish(primary: redis.Redis, tree: Tree) -> None:
    job_id = enqueue("report", "jobs.diagnostics.sleep", 4, "kx:done", "finished")
    wait_until(lambda: _status(job_id) == "started", 30, "report job started")
    result = tree.ctl("stop", "kryonix:report-worker-00")
    assert "stopped" in result.stdout, result.stdout + result.stderr
    assert _status(job_id) == "finished", "supervisorctl stop must wait for the running job"
    assert primary.lrange("kx:done", 0, -1) == [b"finished"]


# --- dashboard ----------------------------------------------------------------------------


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.timeout(120)
def test_dashboard_requires_credentials_and_lists_our_queues(
    primary: redis.Redis, processes: Processes
) -> None:
    enqueue("email", "jobs.diagnostics.noop")
    enqueue("report", "jobs.diagnostics.noop")
    port = free_port()
    dashboard = processes.start(
        sys.executable, "-m", "workers", "dashboard", name="dashboard",
        DASHBOARD_PORT=str(port), DASHBOARD_USERNAME="ops", DASHBOARD_PASSWORD="s3cret",
    )  # fmt: skip
    wait_for_port(port, 30)
    url = f"http://127.0.0.1:{port}/0/data/queues.json"
    assert _get(url)[0] == 401
    assert _get(url, ("ops", "wrong"))[0] == 401
    assert _get(f"http://127.0.0.1:{port}/static/css/main.css")[0] == 401
    status, body = _get(url, ("ops", "s3cret"))
    assert status == 200, log_of(dashboard)
    queues = {q["name"]: q for q in json.loads(body)["queues"]}
    assert {"email", "report"} <= set(queues)
    assert queues["email"]["count"] == 1


@pytest.mark.timeout(120)
def test_dashboard_follows_sentinel_to_the_new_master(sentinel_cluster: SentinelCluster) -> None:
    settings = Settings.from_env(
        {"REDIS_URL": sentinel_cluster.master.url, "REDIS_SENTINELS": sentinel_cluster.addresses}
    )
    app = create_app(settings)
    client = app.test_client()

    def email_count() -> int | None:
        response = client.get("/0/data/queues.json")
        if response.status_code != 200:  # e.g. while the Sentinels elect the new master
            return None
        return {q["name"]: q for q in response.get_json()["queues"]}["email"]["count"]

    workers_client = connections.build_client(Role.PRIMARY, settings)
    KryonixQueue("email", connection=workers_client).enqueue("jobs.diagnostics.noop")
    assert workers_client.wait(1, 5_000) == 1, "the replica has the job before the master dies"
    assert email_count() == 1
    sentinel_cluster.master.kill()

    def enqueued_on_the_new_master() -> bool:
        try:
            KryonixQueue("email", connection=workers_client).enqueue("jobs.diagnostics.noop")
        except redis.RedisError:
            return False
        return True

    wait_until(enqueued_on_the_new_master, 60, "enqueue through Sentinel after the failover", interval_s=0.5)
    wait_until(lambda: email_count() == 2, 30, "the dashboard reads the new master")
    assert workers_client.connection_pool.get_master_address()[1] == sentinel_cluster.replica.port  # type: ignore[attr-defined]


def test_dashboard_refuses_public_bind_without_credentials() -> None:
    settings = Settings.from_env({"DASHBOARD_BIND": "0.0.0.0"})
    with pytest.raises(ConfigError, match="without authentication"):
        create_app(settings)
    with pytest.raises(ConfigError, match="both DASHBOARD_USERNAME and DASHBOARD_PASSWORD"):
        create_app(Settings.from_env({"DASHBOARD_USERNAME": "ops"}))
    create_app(
        Settings.from_env({"DASHBOARD_BIND": "0.0.0.0", "DASHBOARD_USERNAME": "a", "DASHBOARD_PASSWORD": "b"})
    )


def test_dashboard_cli_exits_with_a_clear_error(processes: Processes) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "dashboard"],
        env={**processes.env, "DASHBOARD_BIND": "0.0.0.0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "without authentication" in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False)],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- JSON logs ------------------------------------------------------------------------------


def test_json_logs_from_a_worker(primary: redis.Redis, processes: Processes) -> None:
    job_id = enqueue("email", "jobs.diagnostics.noop")
    worker = processes.worker("email", burst=True, LOG_FORMAT="json")
    assert worker.wait(60) == 0
    entries = [json.loads(line) for line in log_of(worker).splitlines() if line.startswith("{")]
    started, outcome = [e for e in entries if e.get("job_id") == job_id]
    assert started["status"] == "started" and started["queue"] == "email", log_of(worker)
    assert outcome["queue"] == "email" and outcome["status"] == "finished"
    assert outcome["level"] == "info" and "duration_ms" in outcome
    assert any(e["logger"] == "rq.worker" for e in entries), "RQ's own lines are JSON too"


# --- text logs ------------------------------------------------------------------------------

# `logging`'s and supervisord's timestamp, the one format of every line a worker prints.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO|WARNING|ERROR) [\w.]+: .*")
SUPERVISORD_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO|WARN|CRIT) (?!\w+\.\w+:).*")


def test_a_worker_logs_a_start_and_an_end_line_per_job_in_one_format(
    primary: redis.Redis, processes: Processes
) -> None:
    jobs = {
        "email": enqueue("email", "jobs.diagnostics.noop"),
        "report": enqueue("report", "jobs.diagnostics.noop"),
    }
    worker = processes.worker("email", "report", burst=True)
    assert worker.wait(60) == 0, log_of(worker)
    lines = log_of(worker).splitlines()
    assert lines and [line for line in lines if not TEXT_LINE.fullmatch(line)] == [], log_of(worker)
    for queue, job_id in jobs.items():  # the report job runs in a forked work horse
        about = [line.split(": ", 1)[1] for line in lines if job_id in line]
        assert len(about) == 2, log_of(worker)
        assert about[0] == f"job {job_id} queue={queue} func=jobs.diagnostics.noop attempt=1 status=started"
        ended = rf"job {job_id} queue={queue} func=jobs.diagnostics.noop attempt=1 status=finished"
        assert re.fullmatch(ended + r" duration_ms=[\d.]+", about[1]), about[1]


@pytest.mark.timeout(180)
def test_supervisord_prints_each_of_its_lines_once(processes: Processes, tmp_path: Path) -> None:
    """On a pipe, as under `make run` or `docker run`: each line once, not also nodaemon's copy."""
    env = {**processes.env, "KRYONIX_RUN_DIR": str(tmp_path), "DASHBOARD_PORT": str(free_port())}
    tree = subprocess.Popen(
        [sys.executable, "-m", "workers", "supervise", "--run-dir", str(tmp_path)],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert tree.stdout is not None
        for line in tree.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: sum("entered RUNNING state" in line for line in lines) >= 5, 90, "5 programs RUNNING"
        )
    finally:
        tree.send_signal(signal.SIGTERM)
        try:
            tree.wait(60)
        finally:
            if tree.poll() is None:
                os.killpg(tree.pid, signal.SIGKILL)
                tree.wait()
    reader.join(10)
    assert tree.stdout is not None
    tree.stdout.close()
    own = [line for line in lines if SUPERVISORD_LINE.fullmatch(line)]
    assert any("supervisord started with pid" in line for line in own), lines
    assert [line for line, count in Counter(own).items() if count > 1] == [], "\n".join(lines)
