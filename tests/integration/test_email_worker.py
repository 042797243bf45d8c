"""Email jobs in real `rq worker email` processes against a real aiosmtpd server (marker `email`).

Retries go through the job core (scheduled registry, moved by `python -m workers
scheduler`); a killed worker's job is recovered by the scheduler's maintenance.
"""

from __future__ import annotations

import os
import signal
from collections import Counter, deque

import pytest
import redis

from cache import keys
from cache.errors import RedisUnavailable
from jobs.email import bulk_status, enqueue_bulk_email, enqueue_email, idempotency
from jobs.email.api import build_request
from jobs.enqueue import enqueue, fetch_job
from jobs.queues import KryonixQueue
from jobs.retry import RetryPolicy
from tests.integration.email_fixtures import SmtpServer
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until
from workers.cli.failed import list_failed
from workers.job import runs_of

pytestmark = pytest.mark.email

FAST_RETRY = RetryPolicy(attempts=3, base_s=1, factor=1, cap_s=1)
WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}


def _status(job_id: str) -> str | None:
    job = fetch_job(job_id=job_id)
    return None if job is None else job.get_status(refresh=True).value


def _enqueue_stalled(stall_at: str, idempotency_key: str | None = None) -> str:
    """Like `enqueue_email`, but the first run holds for 120 s at `stall_at` (the test kills it there)."""
    request = build_request("ana@example.com", "welcome", WELCOME, idempotency_key=idempotency_key)
    return enqueue(
        "email",
        "jobs.diagnostics.send_email_stalled_once",
        request.to_payload(),
        stall_at,
        120,
        f"test:stalled:{request.idempotency_key}",
        idempotency_key=f"email:{request.idempotency_key}",
        retry=FAST_RETRY,
    )


def _failure_kind(job_id: str) -> str | None:
    job = fetch_job(job_id=job_id)
    failure = job.meta.get("failure") if job is not None else None
    return failure.get("kind") if isinstance(failure, dict) else None


@pytest.mark.timeout(120)
def test_451_twice_then_accepted_is_delivered_once_after_retries(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.data_replies = deque(["451 4.3.0 Try again later"] * 2)
    job_id = enqueue_email("ana@example.com", "welcome", WELCOME, retry=FAST_RETRY)
    processes.worker("email", **smtp_server.env())
    processes.scheduler()
    wait_until(lambda: _status(job_id) == "finished", 60, "email delivered after two 451 replies")
    assert len(smtp_server.received) == 1
    assert smtp_server.handler.data_commands == 3
    job = fetch_job(job_id=job_id)
    assert job is not None and runs_of(job) == 3
    assert job.return_value()["status"] == "sent"


def test_550_goes_to_the_failed_registry_at_once(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.data_reply = "550 5.7.1 Message content rejected"
    job_id = enqueue_email("ana@example.com", "welcome", WELCOME, retry=FAST_RETRY)
    worker = processes.worker("email", burst=True, **smtp_server.env())
    assert worker.wait(60) == 0, log_of(worker)
    assert _status(job_id) == "failed"
    [row] = list_failed(primary, queue="email")
    assert (row.id, row.kind, row.attempts) == (job_id, "permanent", 1)
    assert row.reason == "SMTP DATA refused: 550 5.7.1 Message content rejected"
    assert KryonixQueue("email", connection=primary).scheduled_job_registry.count == 0, "no retry"
    assert smtp_server.handler.data_commands == 1


@pytest.mark.timeout(120)
def test_server_down_is_retried_with_backoff_then_delivered_once(
    primary: redis.Redis, processes: Processes
) -> None:
    server = SmtpServer()  # not started: connections are refused
    retry = RetryPolicy(attempts=6, base_s=1, factor=1, cap_s=1)
    job_id = enqueue_email("ana@example.com", "welcome", WELCOME, retry=retry)
    processes.worker("email", **server.env())
    processes.scheduler()
    wait_until(lambda: _failure_kind(job_id) == "transient", 30, "first attempt failed: server down")
    job = fetch_job(job_id=job_id)
    assert job is not None and "cannot reach SMTP server" in job.meta["failure"]["reason"]
    server.start()
    try:
        wait_until(lambda: _status(job_id) == "finished", 60, "delivered once the server is back")
        assert len(server.received) == 1
        job = fetch_job(job_id=job_id)
        assert job is not None and runs_of(job) >= 2
    finally:
        server.stop()


@pytest.mark.timeout(240)
def test_rerun_after_worker_killed_right_after_acceptance_does_not_resend(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    job_id = _enqueue_stalled("after_marker", idempotency_key="welcome-ana")
    doomed = processes.worker("email", name="doomed", **smtp_server.env())
    marker = keys.email_sent_marker("welcome-ana")
    wait_until(lambda: primary.exists(marker), 30, "server accepted and marker written")
    assert _status(job_id) == "started", "killed while the job is still running"
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    processes.worker("email", name="survivor", **smtp_server.env())
    processes.scheduler()
    wait_until(lambda: _status(job_id) == "finished", 150, "job recovered and finished")
    job = fetch_job(job_id=job_id)
    assert job is not None and runs_of(job) >= 2, "the job really ran again"
    assert job.return_value()["status"] == "already_sent"
    assert job.return_value()["possible_duplicate"] is False
    assert len(smtp_server.received) == 1, "the server received the message once"
    assert idempotency.possible_duplicates() == 0


@pytest.mark.timeout(240)
def test_residual_window_crash_between_acceptance_and_marker_sends_twice_with_one_message_id(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    """The documented window: the copy carries the same Message-ID, so clients can collapse it."""
    job_id = _enqueue_stalled("after_accept")
    doomed = processes.worker("email", name="doomed", **smtp_server.env())
    wait_until(lambda: len(smtp_server.received) == 1, 30, "server accepted")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    processes.worker("email", name="survivor", **smtp_server.env())
    processes.scheduler()
    wait_until(lambda: _status(job_id) == "finished", 150, "job recovered and finished")
    first, second = (r.message["Message-ID"] for r in smtp_server.received)
    assert first == second
    job = fetch_job(job_id=job_id)
    assert job is not None
    result = job.return_value()
    assert result["possible_duplicate"] is True, "the resend says what it may be"
    assert result["interrupted_attempt"]["pid"] == doomed.pid
    assert idempotency.possible_duplicates() == 1


@pytest.mark.timeout(240)
def test_bulk_of_1000_with_refusals_reaches_every_accepted_recipient_once(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    addresses = [f"user{i}@example.com" for i in range(1000)]
    refused = set(addresses[::20])  # 5 %
    deferred_once = {a for a in addresses[7::50] if a not in refused}
    smtp_server.handler.rcpt_replies = {a: "550 5.1.1 No such user" for a in refused}
    smtp_server.handler.rcpt_replies_once = {a: "451 4.2.1 Try again later" for a in deferred_once}
    handle = enqueue_bulk_email(
        "welcome",
        [{"to": a, "context": {"name": f"User {i}"}} for i, a in enumerate(addresses)],
        context={"login_url": "https://app.example.com/login"},
        idempotency_key="launch-2026",
        retry=FAST_RETRY,
    )
    assert handle.recipients == 1000 and len(handle.job_ids) == 8
    for n in range(2):
        processes.worker("email", name=f"w{n}", **smtp_server.env())
    processes.scheduler()

    def complete() -> bool:
        try:
            status = bulk_status(bulk_id=handle.bulk_id)
        except RedisUnavailable:  # this poll's client has a 1 s deadline; a busy machine may miss it
            return False
        return status is not None and status.complete

    wait_until(complete, 120, "every recipient has a final outcome")
    status = bulk_status(bulk_id=handle.bulk_id)
    assert status is not None
    assert status.sent == 950 and set(status.refused) == refused
    assert all(reason.startswith("550 5.1.1") for reason in status.refused.values())
    delivered = Counter(r for message in smtp_server.received for r in message.rcpt_tos)
    assert set(delivered) == set(addresses) - refused
    assert set(delivered.values()) == {1}, "every accepted recipient got exactly one message"
    assert smtp_server.handler.data_commands == 950, "no message was sent twice"
    [sample] = smtp_server.to("user7@example.com")
    assert "User 7" in sample.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    retried = [fetch_job(job_id=j) for j in handle.job_ids]
    assert any(job is not None and runs_of(job) == 2 for job in retried), "deferrals were retried"
    wait_until(lambda: all(_status(j) == "finished" for j in handle.job_ids), 30, "all chunks finished")
