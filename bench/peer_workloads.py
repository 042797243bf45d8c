"""One drain of one workload by one system, for `python -m bench peers`.

Every drain starts from a flushed Redis with its work queued first; the clock runs from
the first job taken (or first delivery) to the last, so process start-up is excluded.
The email drains stop at N deliveries or `budget_s` after the first one, whichever is
first: a slow system's rate is steady after a few seconds, and a fast one needs N well
above its emails in flight.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bench.common import stop_process_groups
from bench.email import LOGIN_URL
from bench.peer_apps import DONE_KEY
from bench.peer_systems import OURS, RQ_QUEUE, Mail, System, start

WAIT_S = 180.0  # the longest a drain may take before it is reported incomplete
POLL_S = 0.005
SINK_POLL_S = 0.002
SETTLE_S = 0.2  # a repeat delivered just after the last one is still counted


@dataclass(frozen=True)
class Drain:
    jobs_per_s: float
    wall_jobs_per_s: float  # start-up included
    commands_per_job: float
    complete: bool


@dataclass(frozen=True)
class EmailDrain:
    emails_per_s: float
    delivered: int  # distinct recipients reached (all N unless the budget ran out)
    duplicates: int
    complete: bool  # every one of the N delivered


def noop(system: System, client: redis.Redis, url: str, jobs: int, logdir: str, **env: str) -> Drain:
    """N no-op jobs queued, then drained; Redis commands per job from INFO commandstats."""
    client.flushall()
    system.enqueue(client, jobs)
    queue_key = f"rq:queue:{'email' if system is OURS else RQ_QUEUE}"
    client.config_resetstat()
    polls = 0
    processes = start(system, url, logdir, overrides=env)
    started = time.perf_counter()
    first: float | None = None
    complete = False
    try:
        while time.perf_counter() - started < WAIT_S:
            if system.peer:
                polls += 1
                done = int(client.get(DONE_KEY) or 0)
                if first is None and done > 0:
                    first = time.perf_counter()
                if done >= jobs:
                    complete = True
                    break
            else:
                if first is None:
                    polls += 1
                    if int(client.llen(queue_key)) < jobs:
                        first = time.perf_counter()
                if all(p.poll() is not None for p in processes):
                    complete = int(client.llen(queue_key)) == 0
                    polls += 1
                    break
            time.sleep(POLL_S)
        finished = time.perf_counter()
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        stop_process_groups(processes)
    calls = sum(int(v["calls"]) for v in stats.values())
    own = polls + (jobs if system.peer else 0)
    return Drain(
        jobs_per_s=jobs / (finished - (first or started)),
        wall_jobs_per_s=jobs / (finished - started),
        commands_per_job=(calls - own) / jobs,
        complete=complete,
    )


def wait_deliveries(sink: Any, count: int, *, budget_s: float) -> tuple[float, int, bool]:
    """(emails/s first to last delivery, deliveries seen, all `count` seen) with a budget after the first."""
    deadline = time.perf_counter() + WAIT_S
    first: float | None = None
    last, seen = 0.0, 0
    while time.perf_counter() < deadline:
        now, value = time.perf_counter(), int(sink.received.value)
        if value > seen:
            if first is None:
                first = now
                deadline = min(deadline, first + budget_s)
            last, seen = now, value
        if seen >= count:
            break
        time.sleep(SINK_POLL_S)
    rate = (seen - 1) / (last - first) if first is not None and seen > 1 and last > first else 0.0
    return rate, seen, seen >= count


def emails(
    system: System,
    client: redis.Redis,
    url: str,
    *,
    mail: Mail,
    count: int,
    tag: str,
    sink: Any,
    logdir: str,
    budget_s: float,
    env: Mapping[str, str],
) -> EmailDrain:
    """N emails, one job each, queued, then sent to the sink by the system's workers."""
    client.flushall()
    system.enqueue_email(mail, [f"{system.name}{tag}-{n}@example.com" for n in range(count)])
    return _send(system, client, url, mail, count, sink, logdir, budget_s, env)


def bulk(
    client: redis.Redis,
    url: str,
    *,
    mail: Mail,
    count: int,
    tag: str,
    sink: Any,
    logdir: str,
    budget_s: float,
    env: Mapping[str, str],
) -> EmailDrain:
    """Ours only: the same N emails as one `enqueue_bulk_email` (project defaults), then drained."""
    from jobs.email import enqueue_bulk_email

    client.flushall()
    recipients = [
        {"to": f"bulk{tag}-{n}@example.com", "context": {"name": f"User {n}"}} for n in range(count)
    ]
    enqueue_bulk_email("welcome", recipients, context={"login_url": LOGIN_URL}, client=client)
    return _send(OURS, client, url, mail, count, sink, logdir, budget_s, env)


def _send(
    system: System,
    client: redis.Redis,
    url: str,
    mail: Mail,
    count: int,
    sink: Any,
    logdir: str,
    budget_s: float,
    env: Mapping[str, str],
) -> EmailDrain:
    sink.reset()
    processes = start(system, url, logdir, smtp_port=mail.port, overrides=env)
    try:
        rate, _, complete = wait_deliveries(sink, count, budget_s=budget_s)
        time.sleep(SETTLE_S)
    finally:
        stop_process_groups(processes)
    duplicates = int(sink.duplicates.value)  # read after the stop: a warm shutdown's last sends count
    return EmailDrain(rate, int(sink.received.value) - duplicates, duplicates, complete)
