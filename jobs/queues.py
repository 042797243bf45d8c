"""The queues `email` and `report`: timeouts, TTLs, retry policy and how workers run them."""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.job import Job

from cache.connections import primary
from jobs.retry import RetryPolicy
from jobs.serialization import JSONSerializer

DAY_S = 24 * 3600
DEFAULT_FAILURE_TTL_S = 7 * DAY_S  # failures are kept a week for inspection and requeue


@dataclass(frozen=True, kw_only=True)
class QueueSpec:
    """Everything a queue's jobs get by default.

    `in_process` jobs run inside the worker process (connections are reused, no fork
    per job); the others run in a forked work horse, isolated from the worker.
    """

    name: str
    job_timeout_s: int
    result_ttl_s: int
    failure_ttl_s: int
    retry: RetryPolicy
    in_process: bool


EMAIL = QueueSpec(
    name="email",
    job_timeout_s=120,
    result_ttl_s=DAY_S,  # also the window in which a repeated idempotency key returns the same job
    failure_ttl_s=DEFAULT_FAILURE_TTL_S,
    # 8 retries: full jitter draws short waits too, and 5 would let a few emails exhaust
    # their budget inside a 30 s SMTP outage; 8 ride out outages of many minutes.
    retry=RetryPolicy(attempts=8, base_s=10, factor=2, cap_s=3600),
    in_process=True,
)
REPORT = QueueSpec(
    name="report",
    job_timeout_s=1800,
    result_ttl_s=7 * DAY_S,
    failure_ttl_s=DEFAULT_FAILURE_TTL_S,
    retry=RetryPolicy(attempts=3, base_s=30, factor=2, cap_s=1800),
    in_process=False,
)
QUEUES: dict[str, QueueSpec] = {spec.name: spec for spec in (EMAIL, REPORT)}


def spec_for(name: str) -> QueueSpec:
    try:
        return QUEUES[name]
    except KeyError:
        raise ValueError(f"unknown queue {name!r}; known: {', '.join(QUEUES)}") from None


class JsonJob(Job):
    """An RQ job that is always JSON on the wire.

    Assigned directly: RQ would otherwise check the serializer against its runtime
    Protocol for every job created, a third of the cost of a bulk enqueue.
    """

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection)
        self.serializer = JSONSerializer


QUEUE_REGISTRATION_REFRESH_S = 60.0  # how stale this process's "queue is in rq:queues" may get
# client -> queue key -> when this process last added the queue to `rq:queues`.
_registered_at: weakref.WeakKeyDictionary[redis.Redis, dict[str, float]] = weakref.WeakKeyDictionary()


class KryonixQueue(Queue):
    """An RQ queue that always uses the JSON serializer, whatever the caller passed.

    `rq worker` builds queues with `--serializer` (pickle by default); exporting
    `RQ_QUEUE_CLASS=jobs.queues.KryonixQueue` makes pickle impossible on our queues.
    """

    def __init__(self, name: str = "default", *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = JSONSerializer
        if kwargs.get("job_class") is None:
            kwargs["job_class"] = JsonJob
        spec = QUEUES.get(name)
        if spec is not None:
            kwargs.setdefault("default_timeout", spec.job_timeout_s)
        super().__init__(name, *args, **kwargs)

    def enqueue_job(
        self, job: Job, pipeline: Any = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        """RQ's enqueue, without re-adding the queue to `rq:queues` on every call.

        RQ sends that SADD as a round trip of its own before each job; here a process
        sends it at most once per QUEUE_REGISTRATION_REFRESH_S per client (so a deleted
        set heals within a minute). Jobs with dependencies or rate limits, or enqueued
        into a caller's pipeline, take RQ's own path unchanged.
        """
        registered = _registered_at.setdefault(self.connection, {})
        plain = pipeline is None and self._is_async and not job._dependency_ids and not job.has_rate_limit
        stale = time.monotonic() - registered.get(self.key, -math.inf) >= QUEUE_REGISTRATION_REFRESH_S
        if not plain or stale:
            enqueued = super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
            if pipeline is None:
                registered[self.key] = time.monotonic()
            return enqueued
        if unique and not job._id:
            raise ValueError("unique=True requires an explicit job_id")
        job.origin = self.name
        return self._enqueue_job(job, at_front=at_front, unique=unique)


def get_queue(name: str, connection: redis.Redis | None = None) -> KryonixQueue:
    spec_for(name)
    return KryonixQueue(name, connection=connection or primary())
