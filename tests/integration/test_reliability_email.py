"""Fault injection on the email path: killed workers, an SMTP server that goes away.

Marker `reliability`. Each recipient gets one distinct email; "exactly once" is checked
per recipient at the SMTP server, except for the copies the worker flagged as possible
duplicates (a kill inside the SMTP transaction; see `_assert_once_unless_flagged`).
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

from jobs.email import enqueue_email, idempotency
from jobs.enqueue import fetch_job
from jobs.retry import RetryPolicy
from tests.integration.email_fixtures import SmtpServer
from tests.integration.processes import Processes
from tests.waiting import wait_until

pytestmark = pytest.mark.reliability

# Quick retries keep the scenarios short; the budget still outlasts the faults.
FAST = RetryPolicy(attempts=20, base_s=1, factor=2, cap_s=4)
CONTEXT = {"name": "Ada", "login_url": "https://app.example.com/login"}
# Each worker runs this many email jobs at once; the sink answers DATA late, as a remote
# relay does, so every worker has its slots full when it is killed.
CONCURRENCY = 8
RELAY_DELAY_S = 0.2


def _deliveries(server: SmtpServer) -> Counter[str]:
    return Counter(rcpt for message in server.received for rcpt in message.rcpt_tos)


def _unfinished(job_ids: list[str]) -> list[str]:
    """The jobs not finished yet; all of them while Redis answers this poll too slowly
    (the test's client has a 1 s call deadline, and the machine may be busy)."""
    pending = []
    try:
        for job_id in job_ids:
            job = fetch_job(job_id=job_id)
            if job is None or job.get_status(refresh=True).value != "finished":
                pending.append(job_id)
    except redis.TimeoutError:
        return job_ids
    return pending


def _assert_once_unless_flagged(
    server: SmtpServer, job_of: dict[str, str], killed_pids: set[int] | None = None
) -> set[str]:
    """Every recipient got the email; a second copy only where the job flagged it, same Message-ID.

    A kill between the server's 250 and the marker write cannot be told apart from a kill
    just before it, so exactly-once is checked for every email whose sending attempt did
    not find an earlier one cut off mid-transaction; those few must carry the flag.
    Returns the recipients whose job flagged a possible duplicate; with `killed_pids`, the
    attempt it names as interrupted must be one of those processes.
    """
    deliveries = _deliveries(server)
    assert set(deliveries) == set(job_of), "every recipient got the email"
    flagged = set()
    for recipient, job_id in job_of.items():
        job = fetch_job(job_id=job_id)
        assert job is not None
        result = job.return_value()
        if result["possible_duplicate"]:
            if killed_pids is not None:
                assert result["interrupted_attempt"]["pid"] in killed_pids, "flagged only after a kill"
            flagged.add(recipient)
    repeated = {rcpt: n for rcpt, n in deliveries.items() if n != 1}
    assert set(repeated) <= flagged, f"delivered more than once without the flag: {repeated}"
    for recipient in repeated:
        assert repeated[recipient] == 2, f"{recipient}: more than one extra copy"
        assert len({r.message["Message-ID"] for r in server.to(recipient)}) == 1
    return flagged


@pytest.fixture
def smtp(processes: Processes) -> SmtpServer:
    server = SmtpServer().start()
    server.handler.data_delay_s = RELAY_DELAY_S
    processes.env.update(server.env(), EMAIL_CONCURRENCY=str(CONCURRENCY))
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.timeout(420)
def test_twenty_worker_kills_lose_no_email_and_flag_every_copy(
    primary: redis.Redis, processes: Processes, smtp: SmtpServer
) -> None:
    recipients = [f"user{i}@example.com" for i in range(1000)]
    job_ids = [enqueue_email(to, "welcome", CONTEXT, retry=FAST) for to in recipients]
    workers: list[Popen[bytes]] = [processes.worker("email", name=f"w{i}") for i in range(3)]
    processes.scheduler()  # recovers the jobs of killed workers
    rng = random.Random(20)
    kills = 0
    killed_pids: set[int] = set()

    def driver() -> None:
        nonlocal kills
        while kills < 20:
            time.sleep(rng.uniform(0.2, 0.8))
            victim = rng.choice([w for w in workers if w.poll() is None])
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            killed_pids.add(victim.pid)
            workers.remove(victim)
            workers.append(processes.worker("email", name=f"replacement{kills}"))  # as supervisord would
            kills += 1

    killer = threading.Thread(target=driver, daemon=True)
    killer.start()
    killer.join(120)
    assert kills == 20
    assert smtp.handler.most_in_data >= CONCURRENCY, "a worker ran its slots full"
    pending = list(job_ids)

    def all_finished() -> bool:
        pending[:] = _unfinished(pending)
        return not pending

    wait_until(all_finished, 300, "every email job finished", interval_s=2)
    job_of = dict(zip(recipients, job_ids, strict=True))
    flagged = _assert_once_unless_flagged(smtp, job_of, killed_pids)
    assert idempotency.possible_duplicates() == len(flagged), "each flagged send counted once"
    # Only a killed attempt leaves a claim behind: at most the jobs in flight per kill.
    assert len(flagged) <= kills * CONCURRENCY


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
    assert smtp.handler.most_in_data >= CONCURRENCY, "a worker ran its slots full"
    _assert_once_unless_flagged(smtp, dict(zip(recipients, job_ids, strict=True)))
