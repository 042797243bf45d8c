"""One email worker process runs many jobs at once, each an ordinary started RQ job.

A real worker process (`rq worker email` with our classes) sends through an aiosmtpd
relay that answers DATA late, so the jobs stay in flight while the test looks at them
the way operators do: RQ's registries and executions, `python -m workers status`,
rq-dashboard's JSON endpoints; then stops one job, times one out, and shuts the
worker down warm, cold and by SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from rq.command import send_stop_job_command
from rq.executions import ExecutionRegistry
from rq.registry import FailedJobRegistry, StartedJobRegistry

from jobs.email import enqueue_email
from jobs.enqueue import fetch_job
from jobs.queues import get_queue
from jobs.retry import RetryPolicy
from tests.integration.dashboard_fixtures import Dashboard
from tests.integration.email_fixtures import SmtpServer
from tests.integration.processes import Processes
from tests.waiting import wait_until
from workers.job import KryonixJob
from workers.maintenance import STUCK_AFTER_S, recover
from workers.worker import KryonixWorker

pytestmark = pytest.mark.reliability

SLOTS = 8
CONTEXT = {"name": "Ada", "login_url": "https://app.example.com/login"}
QUICK = RetryPolicy(attempts=5, base_s=1, factor=2, cap_s=2)


@pytest.fixture
def relay(processes: Processes) -> Iterator[SmtpServer]:
    """A relay that answers no DATA until the test lets it: the jobs stay in flight while it looks."""
    server = SmtpServer().start()
    server.handler.hold_data = True  # until a test releases them, no DATA is answered
    processes.env.update(server.env(), SMTP_TIMEOUT="30", EMAIL_CONCURRENCY=str(SLOTS))
    yield server
    server.stop()


def _enqueue(count: int, prefix: str, **options: object) -> list[str]:
    return [enqueue_email(f"{prefix}{i}@example.com", "welcome", CONTEXT, **options) for i in range(count)]  # type: ignore[arg-type]


def _started(client: redis.Redis) -> list[str]:
    return StartedJobRegistry("email", connection=client).get_job_ids()


def _status(job_id: str) -> str:
    job = fetch_job(job_id=job_id)
    return "gone" if job is None else job.get_status(refresh=True).value


def _wait_finished(job_ids: list[str], timeout_s: float) -> None:
    wait_until(
        lambda: all(_status(j) == "finished" for j in job_ids),
        timeout_s,
        "every job finished",
        interval_s=0.5,
    )


def _deliveries(server: SmtpServer) -> Counter[str]:
    return Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)


def test_one_worker_runs_its_slots_full_each_job_started_with_its_own_execution(
    primary: redis.Redis, processes: Processes, relay: SmtpServer, dashboard: Dashboard
) -> None:
    job_ids = _enqueue(SLOTS + 4, "many")
    processes.worker("email", name="w")
    wait_until(lambda: len(_started(primary)) == SLOTS, 30, "a full set of jobs started")
    started = _started(primary)
    assert get_queue(primary, name="email").count == 4, "no job is claimed beyond the free slots"

    jobs = [fetch_job(job_id=job_id) for job_id in started]
    assert all(job is not None and job.get_status(refresh=True).value == "started" for job in jobs)
    (worker,) = KryonixWorker.all(connection=primary)
    assert {job.worker_name for job in jobs if job is not None} == {worker.name}
    executions = worker.get_current_executions(refresh=True)
    assert sorted(e.job_id for e in executions) == sorted(started), "one execution per running job"
    for job_id in started:
        assert len(ExecutionRegistry(job_id, primary).get_execution_ids()) == 1
    assert worker.get_state() == "busy"

    status = processes.cli("status")
    assert f"{SLOTS} started" in status.stdout, status.stdout
    page = json.loads(dashboard.get(f"/0/data/jobs/email/started/{4 * SLOTS}/asc/1.json").text())
    assert sorted(job["id"] for job in page["jobs"]) == sorted(started), (
        "rq-dashboard lists every running job"
    )

    relay.handler.hold_data = False
    _wait_finished(job_ids, 60)
    assert _deliveries(relay) == Counter({f"many{i}@example.com": 1 for i in range(SLOTS + 4)})
    assert relay.handler.most_in_data == SLOTS


def test_stop_job_command_stops_that_job_alone(
    primary: redis.Redis, processes: Processes, relay: SmtpServer
) -> None:
    job_ids = _enqueue(3, "stop")
    processes.worker("email", name="w")
    wait_until(lambda: relay.handler.in_data == 3, 30, "three transactions in flight")
    send_stop_job_command(primary, job_ids[0])
    wait_until(lambda: _status(job_ids[0]) == "stopped", 10, "the job stopped")
    relay.handler.hold_data = False
    _wait_finished(job_ids[1:], 30)
    assert job_ids[0] in FailedJobRegistry("email", connection=primary), "kept, as RQ keeps a stopped job"
    time.sleep(2.5)  # longer than the retry backoff: a stopped job must not come back
    assert _status(job_ids[0]) == "stopped"


def test_each_job_keeps_its_own_timeout(
    primary: redis.Redis, processes: Processes, relay: SmtpServer
) -> None:
    (short,) = _enqueue(1, "short", retry=RetryPolicy(attempts=0))
    (normal,) = _enqueue(1, "normal")
    primary.hset(f"rq:job:{short}", "timeout", 2)  # far below the relay's answer
    processes.worker("email", name="w")
    wait_until(lambda: _status(short) == "failed", 30, "the short job timed out")
    relay.handler.hold_data = False
    failed = fetch_job(job_id=short)
    assert failed is not None
    result = failed.latest_result()
    assert result is not None and "Task exceeded maximum timeout value (2 seconds)" in str(result.exc_string)
    _wait_finished([normal], 30)


def test_sigterm_finishes_the_running_jobs_claims_no_more_and_exits(
    primary: redis.Redis, processes: Processes, relay: SmtpServer
) -> None:
    job_ids = _enqueue(SLOTS + 4, "warm")
    worker = processes.worker("email", name="w")
    wait_until(lambda: relay.handler.in_data == SLOTS, 30, "a full set in flight")
    running = _started(primary)
    os.killpg(worker.pid, signal.SIGTERM)
    time.sleep(1)  # the signal is handled before the jobs can end
    relay.handler.hold_data = False
    assert worker.wait(60) == 0
    assert all(_status(job_id) == "finished" for job_id in running)
    assert get_queue(primary, name="email").count == 4, "nothing claimed after the signal"
    assert sorted(set(job_ids) - set(running)) == sorted(get_queue(primary, name="email").get_job_ids())


def test_second_sigterm_exits_at_once_and_maintenance_recovers_every_running_job(
    primary: redis.Redis, processes: Processes, relay: SmtpServer
) -> None:
    job_ids = _enqueue(SLOTS, "cold", retry=QUICK)
    worker = processes.worker("email", name="w")
    wait_until(lambda: relay.handler.in_data == SLOTS, 30, "a full set in flight")
    os.killpg(worker.pid, signal.SIGTERM)
    time.sleep(1.2)  # RQ ignores a second signal within a second of the first
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(10)
    assert sorted(_started(primary)) == sorted(job_ids), "left running, for crash recovery"
    _recover_and_check(primary, processes, relay, job_ids, "cold")


def test_sigkill_with_a_full_set_in_flight_loses_no_job(
    primary: redis.Redis, processes: Processes, relay: SmtpServer
) -> None:
    job_ids = _enqueue(SLOTS, "killed", retry=QUICK)
    worker = processes.worker("email", name="w")
    wait_until(lambda: relay.handler.in_data == SLOTS, 30, "a full set in flight")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    _recover_and_check(primary, processes, relay, job_ids, "killed")


def _recover_and_check(
    primary: redis.Redis, processes: Processes, relay: SmtpServer, job_ids: list[str], prefix: str
) -> None:
    relay.handler.hold_data = False
    processes.scheduler()  # its maintenance finds the abandoned jobs once their heartbeats lapse
    processes.worker("email", name="replacement")
    _wait_finished(job_ids, 120)
    deliveries = _deliveries(relay)
    for i, job_id in enumerate(job_ids):
        job = fetch_job(job_id=job_id)
        assert job is not None
        copies = deliveries[f"{prefix}{i}@example.com"]
        # The server took each message before the kill and answered after it: the rerun
        # cannot know, sends again with the same Message-ID and says so.
        assert copies == 1 or (copies == 2 and job.return_value()["possible_duplicate"]), (job_id, copies)


def test_a_claim_is_never_only_in_the_workers_memory(primary: redis.Redis) -> None:
    """Both queues of `rq worker email report` are claimed into their intermediate lists;
    a worker that dies right after the claim leaves them where crash recovery requeues them."""
    from workers.loop import Claimer

    email, report = get_queue(primary, name="email"), get_queue(primary, name="report")
    email_ids = _enqueue(3, "claim")
    report_id = report.enqueue("jobs.reports.jobs.generate_report", {"report_id": "r"}).id
    claimed = Claimer(primary, job_class=KryonixJob).claim([(email, 2), (report, 1)])
    assert [job.id for job, _ in claimed] == [*email_ids[:2], report_id]
    assert primary.lrange(email.intermediate_queue_key, 0, -1) == [i.encode() for i in email_ids[:2]]
    assert primary.lrange(report.intermediate_queue_key, 0, -1) == [report_id.encode()]
    recover(primary, queue_names=["email", "report"])  # first sight: not stuck yet
    report_ = recover(primary, queue_names=["email", "report"], now=time.time() + STUCK_AFTER_S + 1)
    assert sorted(report_.requeued_from_intermediate["email"]) == sorted(email_ids[:2])
    assert report_.requeued_from_intermediate["report"] == [report_id]
    assert email.get_job_ids() == email_ids, "back at the front, in their order"
    assert report.get_job_ids() == [report_id]


def test_a_worker_on_both_queues_leaves_nothing_in_the_intermediate_lists(
    primary: redis.Redis, processes: Processes, relay: SmtpServer
) -> None:
    relay.handler.hold_data = False
    job_ids = _enqueue(SLOTS, "both")
    processes.worker("email", "report", name="w")
    _wait_finished(job_ids, 60)
    email = get_queue(primary, name="email")
    assert primary.lrange(email.intermediate_queue_key, 0, -1) == [], (
        "a finished job is not left to be requeued"
    )
    assert recover(primary, queue_names=["email"], now=time.time() + STUCK_AFTER_S + 1).total == 0
