"""Enqueue cost: `enqueue_email` and our bulk enqueue against raw RQ on the same server.

`python -m bench enqueue`, interleaved rounds on one redis-server (the shipped
redis.conf, AOF everysec):
- latency: `enqueue_email(...)` (address validation, template and context checks,
  JSON, unique enqueue) against raw `Queue.enqueue` of the same job payload (pickle,
  no checks). Target (issue 11): p99 <= 1.5x raw.
- calls/s: the same `enqueue_email` samples as a rate, one call after another.
- bulk: `jobs.enqueue.enqueue_bulk` (validation + JSON, one pipeline) against raw
  `Queue.enqueue_many` in one pipeline, 1,000 jobs a batch. Target: >= 0.8x raw.
- bulk email: one `enqueue_bulk_email` to 10,000 personalised recipients (validation,
  trial renders, 40 chunk jobs), in seconds; no baseline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from rq import Queue

from bench.common import median, percentile, private_primary, row
from jobs.email import enqueue_email
from jobs.email.api import SEND_EMAIL, enqueue_bulk_email
from jobs.enqueue import enqueue_bulk

SAMPLES = 1500  # per round and side
ROUNDS = 3
BATCH = 1000
CONTEXT = {"name": "Ada", "login_url": "https://app.kryonix.example/login"}
BULK_RECIPIENTS = 10_000


def _ours_once(connection: redis.Redis) -> float:
    start = time.perf_counter()
    enqueue_email("ada@example.com", "welcome", CONTEXT, client=connection)
    return time.perf_counter() - start


def _payload() -> dict[str, Any]:
    return {
        "to": ["ada@example.com"],
        "template": "welcome",
        "locale": "en",
        "context": CONTEXT,
        "idempotency_key": uuid.uuid4().hex,
    }


def _raw_once(queue: Queue) -> float:
    payload = _payload()
    start = time.perf_counter()
    queue.enqueue(SEND_EMAIL, payload)
    return time.perf_counter() - start


def _latencies(connection: redis.Redis) -> tuple[list[float], list[float]]:
    raw_queue = Queue("raw-email", connection=connection)
    ours, raw = [], []
    for _ in range(ROUNDS):
        connection.flushall()
        ours += [_ours_once(connection) for _ in range(SAMPLES)]
        raw += [_raw_once(raw_queue) for _ in range(SAMPLES)]
    return ours, raw


def _bulk(connection: redis.Redis) -> tuple[float, float]:
    ours, raw = [], []
    raw_queue = Queue("raw-email", connection=connection)
    for _ in range(ROUNDS):
        connection.flushall()
        calls = [((_payload(),), {}) for _ in range(BATCH)]
        start = time.perf_counter()
        enqueue_bulk("email", SEND_EMAIL, calls, client=connection)
        ours.append(BATCH / (time.perf_counter() - start))
        datas = [Queue.prepare_data(SEND_EMAIL, args=(_payload(),)) for _ in range(BATCH)]
        start = time.perf_counter()
        with connection.pipeline() as pipe:
            raw_queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
        raw.append(BATCH / (time.perf_counter() - start))
    return median(ours), median(raw)


def _bulk_email(connection: redis.Redis) -> float:
    """Median seconds of one `enqueue_bulk_email` to BULK_RECIPIENTS personalised recipients."""
    recipients = [
        {"to": f"user{i}@example.com", "context": {"name": f"User {i}"}} for i in range(BULK_RECIPIENTS)
    ]
    shared = {"login_url": CONTEXT["login_url"]}
    took = []
    for _ in range(ROUNDS):
        connection.flushall()
        start = time.perf_counter()
        enqueue_bulk_email("welcome", recipients, context=shared, client=connection)
        took.append(time.perf_counter() - start)
    return median(took)


def run() -> list[dict[str, Any]]:
    with private_primary("enqueue") as server:
        connection = server.client()
        ours, raw = _latencies(connection)
        bulk_ours, bulk_raw = _bulk(connection)
        bulk_email_s = _bulk_email(connection)
    p50, p50_raw = percentile(ours, 0.5) * 1000, percentile(raw, 0.5) * 1000
    p99, p99_raw = percentile(ours, 0.99) * 1000, percentile(raw, 0.99) * 1000
    return [
        row("enqueue", "enqueue_email_p50_ms", p50, "ms", p50_raw, "lower"),
        row("enqueue", "enqueue_email_p99_ms", p99, "ms", p99_raw, "lower", 1.5),
        row(
            "enqueue",
            "enqueue_email_calls_per_s",
            len(ours) / sum(ours),
            "calls/s",
            len(raw) / sum(raw),
            "higher",
        ),
        row("enqueue", "bulk_enqueue_jobs_per_s", bulk_ours, "jobs/s", bulk_raw, "higher", 0.8, batch=BATCH),
        row("enqueue", "bulk_email_enqueue_s", bulk_email_s, "s", 0, "lower", recipients=BULK_RECIPIENTS),
    ]
