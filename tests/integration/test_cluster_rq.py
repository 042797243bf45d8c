"""RQ and rq-scheduler on a real 6-node Redis Cluster, all their keys on the `{rq}` slot (marker `cluster`).

RQ reads its key prefix once per process, when `rq` is first imported, and this test
process imported it with the single-server prefix. So every step that uses RQ runs in
a child process (`python -c ...child(...)`) whose environment names the cluster
(`REDIS_CLUSTER_NODES`) and nothing else: the project itself must set `{rq}` there.
The child functions import the project lazily, for that reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tests.integration import cluster_children as children
from tests.integration.email_fixtures import SmtpServer
from tests.waiting import wait_until
from workers.dev.cluster import LocalCluster
from workers.dev.servers import PROJECT_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
CHILDREN = "tests.integration.test_cluster_rq"  # where a child process finds `_child_<name>`

RQ_SLOT = 141  # CLUSTER KEYSLOT {rq}
WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}
LOG_KEY = "test:cluster:log"


# --- Child processes: the project with REDIS_CLUSTER_NODES and no RQ_KEY_PREFIX.


def run_child(cluster: LocalCluster, name: str, *args: str, timeout_s: float = 120, **env: str) -> Any:
    """Run `_child_<name>(*args)` in a child process to its end; returns the JSON it printed last."""
    return children.run_child(CHILDREN, cluster.addresses, name, *args, timeout_s=timeout_s, **env)


@pytest.fixture
def spawn(cluster: LocalCluster, tmp_path: Path) -> Iterator[Any]:
    """`spawn(name, *args, **env)` starts `child(name, ...)` in the background; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}-{len(started)}.log", "wb") as log:
            process = subprocess.Popen(
                children.child_command(CHILDREN, name, *args),
                env=children.child_env(cluster.addresses, **env),
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _primary() -> Any:
    from cache.connections import primary

    return primary()


def _rq_keys(client: RedisCluster) -> dict[str, int]:
    """Every key of the cluster but ours (`test:`) -> its slot."""
    found = {}
    for node in client.get_primaries():
        for key in client.get_redis_connection(node).keys("*"):
            if not key.startswith(b"test:"):
                found[key.decode()] = client.keyslot(key)
    return found


# --- Enqueue


def _child_enqueue() -> dict[str, Any]:
    import datetime as dt

    import rq.defaults
    from rq.job import JobStatus

    from jobs.enqueue import enqueue
    from jobs.queues import get_queue

    client = _primary()
    queue = get_queue(client, name="email")
    parent = enqueue("email", "jobs.diagnostics.noop", client=client)
    dependent = queue.enqueue_call("jobs.diagnostics.noop", depends_on=parent)
    unique = [
        enqueue("email", "jobs.diagnostics.noop", idempotency_key="once", client=client) for _ in range(2)
    ]
    later = enqueue("email", "jobs.diagnostics.noop", in_=dt.timedelta(hours=1), client=client)
    return {
        "prefix": rq.defaults.RQ_KEY_PREFIX,
        "queued": queue.get_job_ids(),
        "deferred": queue.deferred_job_registry.get_job_ids(),
        "dependent_status": dependent.get_status() == JobStatus.DEFERRED,
        "parent": parent,
        "dependent": dependent.id,
        "unique": unique,
        "scheduled": queue.scheduled_job_registry.get_job_ids(),
        "later": later,
        "keys": _rq_keys(client),
    }


def test_enqueue_with_dependency_unique_id_and_delay_keeps_every_rq_key_on_one_slot(
    cluster: LocalCluster,
) -> None:
    result = run_child(cluster, "enqueue")
    assert result["prefix"] == "{rq}", "the project set RQ_KEY_PREFIX for the cluster"
    assert result["queued"] == [result["parent"], result["unique"][0]]
    assert result["unique"][0] == result["unique"][1], "one job for one idempotency key"
    assert result["deferred"] == [result["dependent"]] and result["dependent_status"]
    assert result["scheduled"] == [result["later"]]
    keys = result["keys"]
    assert f"{{rq}}:job:{result['parent']}" in keys
    assert set(keys.values()) == {RQ_SLOT}, f"keys off the {{rq}} slot: {keys}"


# --- Worker


def _counting_worker(queues: list[str]) -> Any:
    """A KryonixWorker on the cluster that notes which jobs ran in-process and which in a horse."""
    from workers.worker import KryonixWorker

    class CountingWorker(KryonixWorker):
        in_process: list[str] = []
        forked: list[str] = []

        def start_in_slot(self, job: Any, queue: Any) -> None:
            self.in_process.append(job.id)
            super().start_in_slot(job, queue)

        def fork_work_horse(self, job: Any, queue: Any) -> None:
            self.forked.append(job.id)
            super().fork_work_horse(job, queue)

    return CountingWorker(queues, connection=_primary())


def _child_drain(reports_dir: str, email_kind: str) -> dict[str, Any]:
    from cache.appcache.platform import create_schema, make_engine
    from jobs.email import enqueue_email
    from jobs.enqueue import fetch_job
    from jobs.queues import get_queue
    from jobs.reports import enqueue_report
    from tests.integration.reports_fixtures import full_range, seed_bulk

    engine = make_engine(os.environ["DATABASE_URL"])
    create_schema(engine)
    plan = seed_bulk(engine, 200)
    client = _primary()
    if email_kind == "real":
        email = enqueue_email("ana@example.com", "welcome", WELCOME)
    else:
        email = (
            get_queue(client, name="email")
            .enqueue_call("jobs.diagnostics.record", args=(LOG_KEY, "email"))
            .id
        )
    report = enqueue_report("activity_detail", full_range(plan))
    after = get_queue(client, name="report").enqueue_call(
        "jobs.diagnostics.record", args=(LOG_KEY, "after-email"), depends_on=email
    )
    worker = _counting_worker(["email", "report"])
    worker.work(burst=True)
    statuses = {}
    for job_id in (email, report, after.id):
        job = fetch_job(client, job_id=job_id)
        statuses[job_id] = None if job is None else job.get_status(refresh=True).value
    return {
        "email": email,
        "report": report,
        "after": after.id,
        "statuses": statuses,
        "in_process": worker.in_process,
        "forked": worker.forked,
        "log": [token.decode() for token in client.lrange(LOG_KEY, 0, -1)],
        "files": sorted(os.listdir(reports_dir)),
        "registered_workers": client.scard("{rq}:workers"),
    }


def _drain(cluster: LocalCluster, smtp_server: SmtpServer, tmp_path: Path, email_kind: str) -> dict[str, Any]:
    reports_dir = tmp_path / "reports"
    reports_dir.mkdir()
    result: dict[str, Any] = run_child(
        cluster,
        "drain",
        str(reports_dir),
        email_kind,
        DATABASE_URL=f"sqlite:///{tmp_path / 'kryonix.db'}",
        REPORTS_DIR=str(reports_dir),
        **smtp_server.env(),
    )
    assert set(result["statuses"].values()) == {"finished"}, result
    assert result["email"] in result["in_process"] and result["email"] not in result["forked"]
    assert result["report"] in result["forked"] and result["report"] not in result["in_process"]
    assert result["files"] == [f"{result['report']}.csv"], "the horse wrote the report"
    assert result["registered_workers"] == 0, "the burst worker unregistered"
    return result


def test_worker_runs_email_queue_in_process_report_in_a_horse_and_the_dependent_after(
    cluster: LocalCluster, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    result = _drain(cluster, smtp_server, tmp_path, "diagnostic")
    assert result["log"] == ["email", "after-email"], "the dependent ran once, after its parent"


def test_worker_delivers_a_real_email_once_on_the_cluster(
    cluster: LocalCluster, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    result = _drain(cluster, smtp_server, tmp_path, "real")
    assert result["log"] == ["after-email"], "the dependent ran once, after its parent"
    assert len(smtp_server.to("ana@example.com")) == 1


# --- RQ's own CLI, run by hand as docs/jobs.md shows

RQ_EXPORTS = {  # docs/jobs.md: the RQ environment, and the prefix for a cluster
    "RQ_KEY_PREFIX": "{rq}",
    "RQ_WORKER_CLASS": "workers.worker.KryonixWorker",
    "RQ_JOB_CLASS": "workers.job.KryonixJob",
    "RQ_QUEUE_CLASS": "jobs.queues.KryonixQueue",
}


def _child_enqueue_noop() -> str:
    from jobs.enqueue import enqueue

    return enqueue("email", "jobs.diagnostics.noop", client=_primary())


def _child_status(job_id: str) -> str | None:
    from jobs.enqueue import fetch_job

    job = fetch_job(_primary(), job_id=job_id)
    return None if job is None else job.get_status(refresh=True).value


def _rq(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    node = cluster.addresses.split(",")[0]
    command = [str(Path(sys.executable).parent / "rq"), *args]
    command += ["--connection-class", "jobs.rq_cluster.RQClusterClient", "-u", f"redis://{node}"]
    done = subprocess.run(
        command, env=children.child_env(cluster.addresses, **RQ_EXPORTS), cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"rq {args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_rqs_own_worker_and_info_work_on_the_cluster_as_documented(cluster: LocalCluster) -> None:
    job_id = run_child(cluster, "enqueue_noop")
    assert "email" in _rq(cluster, "info", "--only-queues").stdout
    _rq(cluster, "worker", "--burst", "email")
    assert run_child(cluster, "status", job_id) == "finished"


def test_python_m_workers_worker_asks_the_cluster_whether_rq_is_suspended(cluster: LocalCluster) -> None:
    """`rq worker` checks suspension on its own connection before the worker starts: the cluster's."""
    job_id = run_child(cluster, "enqueue_noop")
    _rq(cluster, "suspend")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "workers", "worker", "--burst", "email"],
            env=children.child_env(cluster.addresses), cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        _rq(cluster, "resume")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "RQ is currently suspended" in done.stdout + done.stderr
    assert run_child(cluster, "status", job_id) == "queued"


# --- Failed registry, requeue, the schedulers


def _child_fail_and_requeue() -> dict[str, Any]:
    from jobs.enqueue import enqueue, fetch_job
    from jobs.queues import get_queue
    from jobs.retry import RetryPolicy

    client = _primary()
    queue = get_queue(client, name="email")
    job_id = enqueue("email", "jobs.diagnostics.flaky", "test:cluster:runs", 1, retry=RetryPolicy(attempts=0))
    _counting_worker(["email"]).work(burst=True)
    failed = queue.failed_job_registry.get_job_ids()
    queue.failed_job_registry.requeue(job_id)
    requeued = queue.get_job_ids()
    _counting_worker(["email"]).work(burst=True)
    job = fetch_job(client, job_id=job_id)
    return {
        "job": job_id,
        "failed": failed,
        "requeued": requeued,
        "failed_after": queue.failed_job_registry.get_job_ids(),
        "status": None if job is None else job.get_status(refresh=True).value,
        "runs": int(client.get("test:cluster:runs")),
    }


def test_a_failed_job_lands_in_the_failed_registry_and_runs_again_when_requeued(
    cluster: LocalCluster,
) -> None:
    result = run_child(cluster, "fail_and_requeue")
    assert result["failed"] == [result["job"]]
    assert result["requeued"] == [result["job"]]
    assert result["failed_after"] == []
    assert result["status"] == "finished" and result["runs"] == 2


def _child_schedule() -> dict[str, Any]:
    import threading

    from jobs.enqueue import enqueue
    from jobs.periodic import Periodic
    from jobs.queues import get_queue
    from workers.scheduler import SchedulerProcess

    client = _primary()
    queue = get_queue(client, name="email")
    delayed = enqueue("email", "jobs.diagnostics.record", LOG_KEY, "delayed", in_=1, client=client)
    every = Periodic(
        name="tick", func="jobs.diagnostics.record", queue="email", every_s=1, args=(LOG_KEY, "tick")
    )
    scheduler = SchedulerProcess(client, definitions=[every], tick_s=0.2, maintenance_interval_s=0.5)
    runner = threading.Thread(target=scheduler.run, kwargs={"install_signals": False})
    runner.start()
    try:
        wait_until(lambda: delayed in queue.get_job_ids(), 60, "the delayed job moved to its queue")
        wait_until(lambda: queue.count >= 2, 60, "a periodic slot fired")
    finally:
        scheduler.stop_event.set()
        runner.join()
    keys = _rq_keys(client)
    _counting_worker(["email"]).work(burst=True)
    return {"log": sorted({t.decode() for t in client.lrange(LOG_KEY, 0, -1)}), "keys": keys}


def test_rq_scheduler_and_rqs_own_scheduler_move_due_jobs_on_the_cluster(cluster: LocalCluster) -> None:
    result = run_child(cluster, "schedule")
    assert result["log"] == ["delayed", "tick"]
    keys = result["keys"]
    assert "{rq}:scheduler:scheduled_jobs" in keys, "rq-scheduler's keys follow RQ_KEY_PREFIX"
    assert set(keys.values()) == {RQ_SLOT}, f"keys off the {{rq}} slot: {keys}"


# --- RQ's command channel


def _child_work(queues: str) -> dict[str, Any]:
    """A worker that runs until SIGTERM."""
    _counting_worker(queues.split(",")).work()
    return {}


def _child_stop_jobs() -> dict[str, Any]:
    from rq.command import send_stop_job_command

    from jobs.email import enqueue_email
    from jobs.enqueue import enqueue, fetch_job
    from jobs.serialization import JSONSerializer

    client = _primary()

    def status(job_id: str) -> str | None:
        job = fetch_job(client, job_id=job_id)
        return None if job is None else job.get_status(refresh=True).value

    # An email held at DATA by the test's relay: a slot job stops at its next wait (jobs.interrupts).
    in_slot = enqueue_email("ana@example.com", "welcome", WELCOME)
    in_horse = enqueue("report", "jobs.diagnostics.sleep", 60, client=client)
    stopped = {}
    for job_id in (in_slot, in_horse):
        wait_until(lambda job_id=job_id: status(job_id) == "started", 60, f"{job_id} started")
        send_stop_job_command(client, job_id, serializer=JSONSerializer)
        wait_until(lambda job_id=job_id: status(job_id) == "stopped", 60, f"{job_id} stopped")
        stopped[job_id] = status(job_id)
    return {"stopped": stopped}


def test_rqs_stop_job_command_reaches_the_worker_for_a_slot_job_and_a_horse(
    cluster: LocalCluster, spawn: Any, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.hold_data = True
    worker = spawn("work", "email,report", **{**smtp_server.env(), "SMTP_TIMEOUT": "120"})
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    wait_until(lambda: client.scard("{rq}:workers") == 1, 90, "the worker registered")
    client.close()
    result = run_child(cluster, "stop_jobs", timeout_s=170)
    assert set(result["stopped"].values()) == {"stopped"}
    assert not smtp_server.received
    smtp_server.handler.hold_data = False
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, "the worker stopped warm"
