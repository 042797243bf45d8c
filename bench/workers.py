"""Worker overhead: no-op jobs/s of one worker process, ours against plain RQ.

`python -m bench workers`. Same redis-server, same queue name, same job
(`jobs.diagnostics.noop`), burst mode, interleaved rounds, median reported:
- ours: `KryonixWorker` on the `email` queue (in-process execution, JSON, allow-list,
  heartbeat thread, job counters);
- baseline 1: RQ's `SimpleWorker` (in-process, pickle);
- baseline 2: RQ's `Worker` (fork per job, pickle).
Targets (issue 11): >= 0.9x SimpleWorker, >= 5x Worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker

from bench.common import median, private_primary, row
from jobs.enqueue import enqueue_bulk
from workers.worker import KryonixWorker

JOBS = 1500
FORK_JOBS = 300  # the forking worker is slow; fewer jobs keep the run short
ROUNDS = 3


def _time_burst(worker: Any) -> float:
    start = time.perf_counter()
    worker.work(burst=True, logging_level="ERROR")
    return time.perf_counter() - start


def _ours(connection: redis.Redis, jobs: int) -> float:
    enqueue_bulk("email", "jobs.diagnostics.noop", [((), {}) for _ in range(jobs)], client=connection)
    worker = KryonixWorker(["email"], connection=connection)
    return jobs / _time_burst(worker)


def _plain(connection: redis.Redis, worker_class: type[Worker] | type[SimpleWorker], jobs: int) -> float:
    queue = Queue("email", connection=connection)
    with connection.pipeline() as pipe:
        queue.enqueue_many([Queue.prepare_data("jobs.diagnostics.noop") for _ in range(jobs)], pipeline=pipe)
        pipe.execute()
    worker = worker_class([queue], connection=connection)
    return jobs / _time_burst(worker)


def run() -> list[dict[str, Any]]:
    logging.getLogger("kryonix").setLevel(logging.ERROR)
    ours, simple, forking = [], [], []
    with private_primary("workers") as server:
        connection = server.client()
        for _ in range(ROUNDS):
            connection.flushall()
            ours.append(_ours(connection, JOBS))
            connection.flushall()
            simple.append(_plain(connection, SimpleWorker, JOBS))
            connection.flushall()
            forking.append(_plain(connection, Worker, FORK_JOBS))
    mine = median(ours)
    return [
        row("workers", "noop_jobs_per_s_vs_simpleworker", mine, "jobs/s", median(simple), "higher", 0.9),
        row("workers", "noop_jobs_per_s_vs_forking_worker", mine, "jobs/s", median(forking), "higher", 5.0),
    ]
