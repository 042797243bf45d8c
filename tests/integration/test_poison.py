"""No entry in Redis stops a queue (marker `security`).

Poison entries are written straight into Redis (see `poison.py`) and processed by
real `python -m workers worker` processes: each is set aside with a readable reason
(failed registry or quarantine), the good job behind it runs, nothing is unpickled,
no URL is contacted, and maintenance never puts a poison back.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import redis

from cache.text import printable
from jobs.enqueue import enqueue, fetch_job
from jobs.quarantine import list_quarantined
from jobs.queues import KryonixQueue
from tests.integration.poison import (
    FAILED,
    POISONS,
    Context,
    Listener,
    Poison,
    job_hash,
    push,
)
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until
from workers.cli.failed import list_failed
from workers.maintenance import STUCK_AFTER_S, recover

pytestmark = pytest.mark.security


def python_worker(processes: Processes, queue: str, **env: str) -> object:
    return processes.start(sys.executable, "-m", "workers", "worker", queue, "--burst", name="worker", **env)


def assert_reported(primary: redis.Redis, queue: str, poison: Poison, job_id: bytes) -> None:
    if poison.expect == FAILED:
        rows = {row.id: row for row in list_failed(primary, queue=queue)}
        assert printable(job_id) in rows, f"{poison.name}: not in the failed registry: {rows}"
        row = rows[printable(job_id)]
        assert row.kind == "permanent", row
        assert poison.reason in row.reason, row
    else:
        entries = {entry.id: entry for entry in list_quarantined(primary)}
        assert printable(job_id) in entries, f"{poison.name}: not quarantined: {entries}"
        assert entries[printable(job_id)].queue == queue
        assert poison.reason in entries[printable(job_id)].reason, entries[printable(job_id)]


def assert_gone_from_the_queue(primary: redis.Redis, queue: str, job_id: bytes) -> None:
    key = KryonixQueue(queue, connection=primary).key
    for list_key in (key, f"{key}:intermediate"):
        assert job_id not in primary.lrange(list_key, 0, -1), f"{job_id!r} still in {list_key}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("poison", POISONS, ids=lambda p: p.name)
def test_each_poison_is_set_aside_and_the_job_behind_it_runs(
    primary: redis.Redis, processes: Processes, tmp_path: Path, webhook_listener: Listener, poison: Poison
) -> None:
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    ctx = Context(canaries, webhook_listener.url)
    job_id = poison.write(primary, "email", ctx)
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")

    worker = python_worker(processes, "email")
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]

    assert primary.lrange("kx:ran", 0, -1) == [b"good"], log_of(worker)  # type: ignore[attr-defined]
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]
    assert_reported(primary, "email", poison, job_id)
    assert_gone_from_the_queue(primary, "email", job_id)
    assert list(canaries.iterdir()) == [], "a canary ran"
    assert webhook_listener.received == []

    listed = processes.cli("failed", "list")
    assert listed.returncode == 0, listed.stderr
    assert printable(job_id) in listed.stdout
    assert "\x1b" not in listed.stdout, "an id reached the operator's terminal unescaped"
    status = processes.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queues"]["quarantined"] == len(list_quarantined(primary))


def test_maintenance_sets_poison_aside_once_and_never_requeues_it(primary: redis.Redis) -> None:
    """A poison stranded in the intermediate list (a worker died on it) is quarantined, not requeued."""
    queue = KryonixQueue("email", connection=primary)
    intermediate = f"{queue.key}:intermediate"
    bad = [b"../x", b"a.b", b"\xff", b"ghost-" + b"0" * 8]
    for job_id in bad:
        primary.rpush(intermediate, job_id)
    now = time.time()
    for moment in (now, now + STUCK_AFTER_S + 1, now + 2 * STUCK_AFTER_S + 2):
        recover(primary, now=moment)
        assert primary.llen(queue.key) == 0, "maintenance requeued a poison"
    assert primary.llen(intermediate) == 0
    assert {entry.id for entry in list_quarantined(primary)} == {printable(job_id) for job_id in bad}


@pytest.mark.timeout(120)
def test_a_poison_in_the_intermediate_list_does_not_stop_workers_at_start(
    primary: redis.Redis, processes: Processes
) -> None:
    queue = KryonixQueue("email", connection=primary)
    primary.rpush(f"{queue.key}:intermediate", b"bad/id", b"bad.id")
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")
    worker = python_worker(processes, "email")
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_malformed_ids_in_registries_stop_neither_maintenance_nor_failed_list(
    primary: redis.Redis, processes: Processes
) -> None:
    queue = KryonixQueue("email", connection=primary)
    primary.zadd(
        queue.failed_job_registry.key, {"bad/failed": time.time() + 3600, "bad.f": time.time() + 3600}
    )
    primary.zadd(queue.started_job_registry.key, {"bad/started:exec": 1, "bad.s": 1})
    failed = enqueue("email", "jobs.diagnostics.fail_permanently", "real failure")
    worker = python_worker(processes, "email")
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]

    maintain = processes.cli("maintain", "--once")
    assert maintain.returncode == 0, maintain.stderr
    listed = processes.cli("failed", "list")
    assert listed.returncode == 0, listed.stderr
    assert failed in listed.stdout and "permanent: real failure" in listed.stdout
    for bad in ("bad/failed", "bad.f"):
        assert bad in listed.stdout
    rows = json.loads(processes.cli("failed", "list", "--json").stdout)
    kinds = {row["id"]: row["kind"] for row in rows}
    assert kinds["bad/failed"] == "unreadable" and kinds["bad/started:exec"] == "quarantined"
    shown = processes.cli("failed", "show", "bad/failed")
    assert shown.returncode == 1 and "malformed" in shown.stderr and "Traceback" not in shown.stderr
    assert processes.cli("status").returncode == 0
    assert processes.cli("failed", "purge").returncode == 0
    assert list_failed(primary) == [] and list_quarantined(primary) == []


@pytest.mark.timeout(120)
def test_a_bad_dependent_does_not_stop_the_worker(primary: redis.Redis, processes: Processes) -> None:
    """A finished job whose `dependents` set names malformed or missing ids."""
    parent = "parent-job"
    job_hash(primary, parent, "email")
    primary.sadd(f"rq:job:{parent}:dependents", "bad/dependent", "missing-dependent")
    push(primary, "email", parent.encode())
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")
    worker = python_worker(processes, "email")
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]
    assert fetch_job(job_id=parent).get_status().value == "finished"  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_poison_in_scheduled_registries_stops_neither_the_scheduler_nor_due_jobs(
    primary: redis.Redis, processes: Processes
) -> None:
    queue = KryonixQueue("email", connection=primary)
    bad_scheduled = [b"bad/scheduled", b"\xffbad", b"bad.scheduled"]
    primary.zadd(queue.scheduled_job_registry.key, dict.fromkeys(bad_scheduled, 0))
    primary.zadd(queue.scheduled_job_registry.key, {b"ghost-scheduled": 0})  # no hash: RQ drops it
    bad_periodic = [b"\xfe-periodic", b"evil/periodic"]
    primary.zadd("rq:scheduler:scheduled_jobs", dict.fromkeys(bad_periodic, 0))
    due = enqueue("email", "jobs.diagnostics.noop", in_=1)

    scheduler = processes.scheduler()
    wait_until(lambda: due in queue.get_job_ids(), 60, "the due job moved to its queue")
    assert scheduler.poll() is None, log_of(scheduler)
    quarantined = {(entry.queue, entry.id) for entry in list_quarantined(primary)}
    assert {("email", printable(job_id)) for job_id in bad_scheduled} <= quarantined
    assert {("periodic", printable(job_id)) for job_id in bad_periodic} <= quarantined
    assert primary.zcard(queue.scheduled_job_registry.key) == 0
    assert primary.zcard("rq:scheduler:scheduled_jobs") == 0
    assert "Traceback" not in log_of(scheduler)


def test_a_forged_worker_registration_does_not_hide_status(
    primary: redis.Redis, processes: Processes
) -> None:
    primary.sadd("rq:workers", "rq:worker:forged", "not-a-worker-key")
    primary.hset("rq:worker:forged", mapping={"pid": "abc", "birth": "yesterday", "queues": "email"})
    enqueue("email", "jobs.diagnostics.noop")
    result = processes.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)["queues"]
    assert "error" not in section, section
    assert section["queues"]["email"]["queued"] == 1
    states = {w["name"]: w["state"] for w in section["workers"]}
    assert states.keys() == {"rq:worker:forged", "not-a-worker-key"}
    assert all(state.startswith("unreadable registration") for state in states.values())
