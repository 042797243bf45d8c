"""Fault injection on the email path: killed workers, an SMTP server that goes away.

Marker `reliability`. Each recipient gets one distinct email; "exactly once" is checked
per recipient at the SMTP server.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from subprocess import Popen

import pytest
import redis

from jobs.email import enqueue_email
from jobs.enqueue import fetch_job
from jobs.retry import RetryPolicy
from tests.integration.email_fixtures import SmtpServer
from tests.integration.processes import Processes, wait_until

pytestmark = pytest.mark.reliability

# Quick retries keep the scenarios short; the budget still outlasts the faults.
FAST = RetryPolicy(attempts=20, base_s=1, factor=2, cap_s=4)
CONTEXT = {"name": "Ada", "login_url": "https://app.example.com/login"}


def _deliveries(server: SmtpServer) -> Counter[str]:
    return Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)


def _unfinished(job_ids: list[str]) -> list[str]:
    pending = []
    for job_id in job_ids:
        job = fetch_job(job_id)
        if job is None or job.get_status(refresh=True).value != "finished":
            pending.append(job_id)
    return pending


@pytest.fixture
def smtp(processes: Processes) -> SmtpServer:
    server = SmtpServer().start()
    processes.env.update(server.env())
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.timeout(420)
def test_twenty_worker_kills_deliver_every_email_exactly_once(
    primary: redis.Redis, processes: Processes, smtp: SmtpServer
) -> None:
    recipients = [f"user{i}@example.com" for i in range(1000)]
    job_ids = [enqueue_email(to, "welcome", CONTEXT, retry=FAST) for to in recipients]
    workers: list[Popen[bytes]] = [processes.worker("email", name=f"w{i}") for i in range(3)]
    processes.scheduler()  # recovers the jobs of killed workers
    rng = random.Random(20)
    kills = 0

    def driver() -> None:
        nonlocal kills
        while kills < 20:
            time.sleep(rng.uniform(0.2, 0.8))
            victim = rng.choice([w for w in workers if w.poll() is None])
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            workers.remove(victim)
            workers.append(processes.worker("email", name=f"replacement{kills}"))  # as supervisord would
            kills += 1

    killer = threading.Thread(target=driver, daemon=True)
    killer.start()
    killer.join(120)
    assert kills == 20
    pending = list(job_ids)

    def all_finished() -> bool:
        pending[:] = _unfinished(pending)
        return not pending

    wait_until(all_finished, 300, "every email job finished", interval_s=2)
    deliveries = _deliveries(smtp)
    assert set(deliveries) == set(recipients), "every recipient got the email"
    repeated = {rcpt: n for rcpt, n in deliveries.items() if n != 1}
    assert not repeated, f"delivered more than once: {repeated}"


@pytest.mark.timeout(300)
def test_smtp_down_for_thirty_seconds(primary: redis.Redis, processes: Processes, smtp: SmtpServer) -> None:
    recipients = [f"outage{i}@example.com" for i in range(200)]
    processes.worker("email", name="w1")
    processes.worker("email", name="w2")
    processes.scheduler()  # moves due retries back to the queue
    job_ids = [enqueue_email(to, "welcome", CONTEXT, retry=FAST) for to in recipients[:100]]
    wait_until(lambda: len(smtp.received) >= 20, 60, "delivery under way")
    smtp.stop()
    down_until = time.monotonic() + 30
    job_ids += [enqueue_email(to, "welcome", CONTEXT, retry=FAST) for to in recipients[100:]]
    time.sleep(max(0.0, down_until - time.monotonic()))
    smtp.start()  # same port
    pending = list(job_ids)

    def all_finished() -> bool:
        pending[:] = _unfinished(pending)
        return not pending

    wait_until(all_finished, 180, "every email delivered after the server returned", interval_s=1)
    deliveries = _deliveries(smtp)
    assert set(deliveries) == set(recipients)
    assert all(n == 1 for n in deliveries.values()), {r: n for r, n in deliveries.items() if n != 1}
