"""The job core against a real redis-server and real `rq worker` processes (marker `queues`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import signal
import time
import uuid
import zlib
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from jobs.enqueue import enqueue, enqueue_bulk, fetch_job
from jobs.errors import EnqueueUnavailable, JobValidationError
from jobs.periodic import Periodic
from jobs.queues import EMAIL, KryonixQueue
from jobs.retry import RetryPolicy
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until
from workers.cli.failed import list_failed
from workers.cli.jobview import describe_job, render_job
from workers.job import runs_of
from workers.maintenance import STUCK_AFTER_S, recover
from workers.scheduler import PeriodicScheduler

pytestmark = pytest.mark.queues

FAST_RETRY = RetryPolicy(attempts=3, base_s=1, factor=1, cap_s=1)


def _status(job_id: str) -> str | None:
    job = fetch_job(job_id=job_id)
    return None if job is None else job.get_status(refresh=True).value


# --- enqueue validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: enqueue("nope", "jobs.diagnostics.noop"), "unknown queue 'nope'"),
        (lambda: enqueue("email", "os.system", "id"), "not on the allow-list"),
        (lambda: enqueue("email", "jobs.diagnostics.record", object()), "builtins.object"),
        (lambda: enqueue("email", "jobs.diagnostics.record", "k", {1, 2}), "builtins.set"),
        (lambda: enqueue("email", "jobs.diagnostics.record", float("inf")), "cannot be sent"),
        (lambda: enqueue("email", "jobs.diagnostics.noop", at=dt.datetime(2030, 1, 1)), "timezone-aware"),
        (lambda: enqueue("email", "jobs.diagnostics.noop", in_=-5), "must not be negative"),
        (
            lambda: enqueue("email", "jobs.diagnostics.noop", at=dt.datetime.now(dt.UTC), in_=5),
            "either at= or in_=",
        ),
        (lambda: enqueue("email", "jobs.diagnostics.noop", idempotency_key=""), "idempotency_key"),
        (lambda: enqueue("email", "jobs.diagnostics.noop", meta={"x": object()}), "job meta"),
        (
            lambda: enqueue_bulk(
                "email", "jobs.diagnostics.record", [(["k", "ok"], {}), (["k", object()], {})]
            ),
            "builtins.object",
        ),
    ],
)
def test_refused_enqueue_writes_nothing(primary: redis.Redis, call: object, expected: str) -> None:
    with pytest.raises(JobValidationError) as info:
        call()  # type: ignore[operator]
    assert expected in str(info.value)
    assert primary.dbsize() == 0, "a refused job must leave nothing in Redis"


def test_enqueue_returns_id_and_job_carries_policy(primary: redis.Redis) -> None:
    job_id = enqueue(
        "email", "jobs.diagnostics.record", "k", Decimal("1.10"), kwargs={"token": dt.date(2026, 1, 2)}
    )
    job = fetch_job(job_id=job_id)
    assert job is not None
    assert job.origin == "email"
    assert job.timeout == EMAIL.job_timeout_s
    assert job.retries_left == EMAIL.retry.attempts
    assert job.args == ["k", Decimal("1.10")]
    assert job.kwargs == {"token": dt.date(2026, 1, 2)}
    raw = primary.hget(f"rq:job:{job_id}", "data")
    assert raw is not None
    assert json.loads(zlib.decompress(raw))[0] == "jobs.diagnostics.record", (
        "payload must be JSON, never pickle"
    )


def test_idempotency_key_gives_one_job(primary: redis.Redis) -> None:
    first = enqueue("email", "jobs.diagnostics.noop", idempotency_key="welcome:42")
    second = enqueue("email", "jobs.diagnostics.noop", idempotency_key="welcome:42")
    other = enqueue("email", "jobs.diagnostics.noop", idempotency_key="welcome:43")
    assert first == second != other
    assert KryonixQueue("email", connection=primary).count == 2


def test_bulk_enqueue_in_one_pipeline(primary: redis.Redis) -> None:
    ids = enqueue_bulk("email", "jobs.diagnostics.record", [(["bulk", str(i)], {}) for i in range(50)])
    assert len(set(ids)) == 50
    assert KryonixQueue("email", connection=primary).job_ids == ids


def test_scheduled_enqueue_goes_to_the_scheduled_registry(primary: redis.Redis) -> None:
    job_id = enqueue(
        "email", "jobs.diagnostics.record", "k", kwargs={"token": "t"}, in_=dt.timedelta(minutes=5)
    )
    queue = KryonixQueue("email", connection=primary)
    assert queue.count == 0
    assert job_id in queue.scheduled_job_registry.get_job_ids()
    job = fetch_job(job_id=job_id)
    assert job is not None and (job.args, job.kwargs) == (["k"], {"token": "t"})


def test_enqueue_with_redis_down_is_a_clear_error(
    redis_env: dict[str, str], redis_factory: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cache import connections
    from cache.settings import reset_settings
    from workers.dev.servers import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("REDIS_RETRY_ATTEMPTS", "1")
    reset_settings()
    connections.reset_clients()
    with pytest.raises(EnqueueUnavailable) as info:
        enqueue("email", "jobs.diagnostics.noop")
    assert "REDIS_URL" in str(info.value)
    assert "not enqueued" in str(info.value)


def test_enqueue_on_a_full_primary_is_refused_and_nothing_is_lost(primary: redis.Redis) -> None:
    kept = enqueue("email", "jobs.diagnostics.record", "k", "kept")
    used = int(primary.info("memory")["used_memory"])
    configured = primary.config_get("maxmemory")["maxmemory"]  # the session server's, from redis.conf
    primary.config_set("maxmemory", used + 1024)
    try:
        with pytest.raises(EnqueueUnavailable) as info:
            for i in range(200):
                enqueue("email", "jobs.diagnostics.record", "k", "x" * 4096, kwargs={"token": str(i)})
        assert "full" in str(info.value)
    finally:
        primary.config_set("maxmemory", configured)
    assert fetch_job(job_id=kept) is not None
    assert kept in KryonixQueue("email", connection=primary).job_ids


# --- workers ------------------------------------------------------------------------------


def test_literal_rq_worker_command_processes_both_queues(primary: redis.Redis, processes: Processes) -> None:
    email_job = enqueue("email", "jobs.diagnostics.record", "kx:ran", "email")
    report_job = enqueue("report", "jobs.diagnostics.record", "kx:ran", "report")
    worker = processes.worker("email", "report", burst=True)
    assert worker.wait(60) == 0, log_of(worker)
    assert sorted(x.decode() for x in primary.lrange("kx:ran", 0, -1)) == ["email", "report"]
    assert _status(email_job) == _status(report_job) == "finished"
    assert "queue=email" in log_of(worker) and "status=finished" in log_of(worker)


def _write_raw_job(primary: redis.Redis, queue: str, data: bytes) -> str:
    """A job written straight into Redis, bypassing the enqueue API, as an attacker would."""
    job_id = str(uuid.uuid4())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    primary.hset(
        f"rq:job:{job_id}",
        mapping={
            "data": data,
            "origin": queue,
            "status": "queued",
            "created_at": now,
            "enqueued_at": now,
            "description": "hand-written",
            "timeout": 30,
        },
    )
    primary.sadd("rq:queues", f"rq:queue:{queue}")
    primary.rpush(f"rq:queue:{queue}", job_id)
    return job_id


class _Pwn:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("queue", ["email", "report"])
def test_hand_written_jobs_outside_the_allow_list_do_not_run(
    primary: redis.Redis, processes: Processes, tmp_path: Path, queue: str
) -> None:
    marker_json = tmp_path / "pwned-json"
    marker_traversal = tmp_path / "pwned-traversal"
    marker_pickle = tmp_path / "pwned-pickle"
    json_job = _write_raw_job(
        primary, queue, json.dumps(["os.system", None, [f"touch {marker_json}"], {}]).encode()
    )
    traversal_job = _write_raw_job(
        primary,
        queue,
        json.dumps(["jobs.diagnostics.os.system", None, [f"touch {marker_traversal}"], {}]).encode(),
    )
    pickle_job = _write_raw_job(
        primary, queue, pickle.dumps(("jobs.diagnostics.noop", None, [_Pwn(marker_pickle)], {}))
    )
    worker = processes.worker(queue, burst=True)
    worker.wait(60)
    assert not marker_json.exists() and not marker_traversal.exists() and not marker_pickle.exists()
    failed = {row.id: row for row in list_failed(primary, queue=queue)}
    assert set(failed) == {json_job, traversal_job, pickle_job}
    assert "not on the allow-list" in failed[json_job].reason
    assert failed[json_job].kind == "permanent"
    assert "jobs.diagnostics.os" in failed[traversal_job].reason


def test_permanent_failure_goes_to_failed_registry_at_once(
    primary: redis.Redis, processes: Processes
) -> None:
    job_id = enqueue("email", "jobs.diagnostics.fail_permanently", "template 'x' does not exist")
    worker = processes.worker("email", burst=True)
    assert worker.wait(60) == 0
    assert _status(job_id) == "failed"
    [row] = list_failed(primary, queue="email")
    assert row.id == job_id
    assert row.kind == "permanent"
    assert row.reason == "template 'x' does not exist"
    assert row.attempts == 1
    queue = KryonixQueue("email", connection=primary)
    assert queue.scheduled_job_registry.count == 0, "a permanent failure must not be retried"


@pytest.mark.timeout(120)
def test_transient_failure_is_retried_with_backoff_then_succeeds(
    primary: redis.Redis, processes: Processes
) -> None:
    job_id = enqueue("email", "jobs.diagnostics.flaky", "kx:flaky", 2, retry=FAST_RETRY)
    processes.worker("email")
    processes.scheduler()
    wait_until(lambda: _status(job_id) == "finished", 60, "flaky job finished after two retries")
    job = fetch_job(job_id=job_id)
    assert job is not None
    assert job.return_value() == 3
    assert int(primary.get("kx:flaky") or 0) == 3
    assert runs_of(job) == 3


@pytest.mark.timeout(120)
def test_transient_failures_exhaust_retries_into_failed_registry(
    primary: redis.Redis, processes: Processes
) -> None:
    job_id = enqueue(
        "email", "jobs.diagnostics.crash", "boom", retry=RetryPolicy(attempts=1, base_s=1, cap_s=1)
    )
    processes.worker("email")
    processes.scheduler()
    wait_until(lambda: _status(job_id) == "failed", 60, "job failed after its retry")
    [row] = list_failed(primary, queue="email")
    assert (row.kind, row.reason, row.attempts) == ("transient", "boom", 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("queue", ["email", "report"])
def test_sigterm_lets_the_running_job_finish(primary: redis.Redis, processes: Processes, queue: str) -> None:
    job_id = enqueue(queue, "jobs.diagnostics.sleep", 3, "kx:done", "finished-after-sigterm")
    worker = processes.worker(queue)
    wait_until(lambda: _status(job_id) == "started", 30, "job started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, log_of(worker)
    assert _status(job_id) == "finished"
    assert primary.lrange("kx:done", 0, -1) == [b"finished-after-sigterm"]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("queue", ["email", "report"])
def test_sigkill_of_worker_and_horse_runs_the_job_again(
    primary: redis.Redis, processes: Processes, queue: str
) -> None:
    job_id = enqueue(queue, "jobs.diagnostics.sleep", 4, "kx:done", "second-run", retry=FAST_RETRY)
    worker = processes.worker(queue, name="doomed")
    wait_until(lambda: _status(job_id) == "started", 30, "job started")
    horses = _children(worker.pid)
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and everything in its process group
    worker.wait()
    for horse in horses:  # the report horse runs in its own group: it must die with its parent
        wait_until(lambda h=horse: not Path(f"/proc/{h}").exists() or _zombie(h), 10, f"horse {horse} gone")
    processes.worker(queue, name="survivor")
    processes.scheduler()
    wait_until(lambda: _status(job_id) == "finished", 90, "job recovered and finished")
    assert primary.lrange("kx:done", 0, -1) == [b"second-run"], "one complete run after recovery"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_job_stranded_in_intermediate_list_is_requeued(primary: redis.Redis) -> None:
    job_id = enqueue("email", "jobs.diagnostics.noop")
    queue = KryonixQueue("email", connection=primary)
    # A worker died right after BLMOVE, before registering the job as started.
    primary.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT")
    now = time.time()
    assert recover(primary, now=now).total == 0, "first sighting only marks it"
    assert recover(primary, now=now + 1).total == 0, "not yet stuck"
    report = recover(primary, now=now + STUCK_AFTER_S + 1)
    assert report.requeued_from_intermediate["email"] == [job_id]
    assert queue.job_ids == [job_id]
    assert primary.llen(queue.intermediate_queue.key) == 0


def test_a_job_dequeued_again_later_is_a_new_arrival_not_a_stuck_one(primary: redis.Redis) -> None:
    """Seen once on its way to a worker, then run, retried and dequeued again by a live worker.

    The old first sighting must not count: requeueing it would hand the job to a second
    worker while the first starts it (two concurrent runs, seen under 20 worker kills).
    """
    job_id = enqueue("email", "jobs.diagnostics.noop")
    queue = KryonixQueue("email", connection=primary)
    now = time.time()
    primary.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT")
    assert recover(primary, now=now).total == 0, "seen on its way to a worker"
    primary.lrem(queue.intermediate_queue.key, 1, job_id)  # the worker took it
    queue.push_job_id(job_id)  # retried later
    assert recover(primary, now=now + 1).total == 0, "gone from the list: its sighting is dropped"
    primary.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT")  # dequeued again
    assert recover(primary, now=now + STUCK_AFTER_S + 1).total == 0, "a new arrival"
    report = recover(primary, now=now + 2 * STUCK_AFTER_S + 2)
    assert report.requeued_from_intermediate["email"] == [job_id], "stuck since its new arrival"


# --- progress and the job view ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_progress_is_visible_while_running(primary: redis.Redis, processes: Processes) -> None:
    job_id = enqueue("report", "jobs.diagnostics.sleep", 4)
    processes.worker("report")
    wait_until(
        lambda: (describe_job(primary, job_id=job_id).get("progress") or {}).get("percent", 0) > 0,
        30,
        "progress",
    )
    text = render_job(describe_job(primary, job_id=job_id))
    assert "started" in text and "[#" in text
    wait_until(lambda: _status(job_id) == "finished", 30, "finished")
    assert "result: 'done'" in render_job(describe_job(primary, job_id=job_id))
    result = processes.cli("job", job_id)
    assert result.returncode == 0 and "finished" in result.stdout
    missing = processes.cli("job", "no-such-job")
    assert missing.returncode == 1 and "no job 'no-such-job'" in missing.stderr


# --- failed registry CLI ----------------------------------------------------------------------


def test_failed_registry_cli(primary: redis.Redis, processes: Processes) -> None:
    ids = [enqueue("email", "jobs.diagnostics.fail_permanently", f"reason {i}") for i in range(3)]
    report_id = enqueue("report", "jobs.diagnostics.fail_permanently", "report reason")
    assert processes.worker("email", "report", burst=True).wait(60) == 0

    listed = processes.cli("failed", "list")
    assert listed.returncode == 0
    assert all(job_id in listed.stdout for job_id in [*ids, report_id])
    assert "4 failed job(s)" in listed.stdout and "permanent: reason 0" in listed.stdout
    only_report = json.loads(processes.cli("failed", "list", "--queue", "report", "--json").stdout)
    assert [row["id"] for row in only_report] == [report_id]

    shown = json.loads(processes.cli("failed", "show", ids[0], "--json").stdout)
    assert shown["args"] == ["reason 0"]
    assert "PermanentJobError" in shown["traceback"]

    assert processes.cli("failed", "requeue", ids[0]).returncode == 0
    assert ids[0] in KryonixQueue("email", connection=primary).job_ids
    assert processes.cli("failed", "requeue", "nope").returncode == 1
    assert processes.cli("failed", "requeue").returncode == 2  # neither id nor --all

    requeued = processes.cli("failed", "requeue", "--all", "--queue", "email")
    assert "requeued 2 job(s)" in requeued.stdout
    assert set(KryonixQueue("email", connection=primary).job_ids) == set(ids)

    assert "purged 0 job(s)" in processes.cli("failed", "purge", "--older-than", "1d").stdout
    assert "purged 1 job(s)" in processes.cli("failed", "purge", "--queue", "report").stdout
    assert fetch_job(job_id=report_id) is None
    assert "is not a duration" in processes.cli("failed", "purge", "--older-than", "soon").stderr
    assert "unknown queue" in processes.cli("failed", "list", "--queue", "nope").stderr


# --- periodic jobs -----------------------------------------------------------------------------


def test_one_slot_fires_once_even_when_two_schedulers_race(primary: redis.Redis) -> None:
    definition = Periodic(name="race", func="jobs.diagnostics.noop", queue="email", every_s=60)
    first = PeriodicScheduler([definition], primary, tick_s=1)
    second = PeriodicScheduler([definition], primary, tick_s=1)
    first.register(time.time() - 120)
    # Both see the same due slot (as when a lock expired mid-run) and both enqueue it.
    [job] = first.get_jobs_to_queue()
    first.enqueue_job(job)
    primary.zadd(first.scheduled_jobs_key, {job.id: int(time.time()) - 60})
    first.enqueue_job(job)
    primary.zadd(first.scheduled_jobs_key, {job.id: int(time.time()) - 60})
    second.enqueue_job(job)
    queue = KryonixQueue("email", connection=primary)
    slots = [fetch_job(job_id=job_id).meta["slot"] for job_id in queue.job_ids]  # type: ignore[union-attr]
    assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
    assert primary.zscore(first.scheduled_jobs_key, job.id) > time.time()


@pytest.mark.timeout(120)
def test_two_scheduler_processes_fire_each_slot_once(
    primary: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    script = (
        "from workers.scheduler import SchedulerProcess\n"
        "from jobs.periodic import Periodic\n"
        "SchedulerProcess(definitions=[Periodic(name='tick', func='jobs.diagnostics.record_slot', "
        "queue='email', every_s=2, args=('kx:slots',))], tick_s=0.2).run()\n"
    )
    import sys

    schedulers = [processes.start(sys.executable, "-c", script, name=f"sched{i}") for i in range(2)]
    worker = processes.worker("email")
    wait_until(lambda: primary.llen("kx:slots") >= 4, 60, "four periodic slots ran")
    for process in schedulers:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_of(process)
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    slots = [int(x) for x in primary.lrange("kx:slots", 0, -1)]
    assert len(slots) == len(set(slots)), f"a slot fired twice: {slots}"
    assert all(slot % 2 == 0 for slot in slots)
    assert all(b - a == 2 for a, b in zip(sorted(slots), sorted(slots)[1:], strict=False)), slots


# --- status ----------------------------------------------------------------------------------


def test_status_reports_queues_and_workers(primary: redis.Redis, processes: Processes) -> None:
    enqueue("email", "jobs.diagnostics.noop")
    enqueue("email", "jobs.diagnostics.noop")
    enqueue("report", "jobs.diagnostics.fail_permanently", "x")
    processes.worker("report", burst=True).wait(60)
    result = processes.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queues"]["queues"]["email"]["queued"] == 2
    assert report["queues"]["queues"]["email"]["oldest_queued_age_s"] >= 0
    assert report["queues"]["queues"]["report"]["failed"] == 1
    text = processes.cli("status").stdout
    assert "email: 2 queued" in text
