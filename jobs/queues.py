"""The queues `email` and `report`: timeouts, TTLs, retry policy and how workers run them."""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.utils import as_text, backend_class, get_version

from cache.connections import primary
from cache.text import printable
from jobs.quarantine import UnreadableJob, missing_hash_reason, parse_id, quarantine, raw_ids
from jobs.retry import RetryPolicy
from jobs.rq_cluster import rq_connection
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


MAX_INTERVAL_S = 366 * DAY_S  # a retry or repeat interval longer than this is no job of ours


def _is_interval_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(type(item) is int and 0 <= item <= MAX_INTERVAL_S for item in value)
    )


def field_shape_problem(job: Job) -> str | None:
    """What is wrong with the JSON fields RQ loads without checking their shape, or None. Pure.

    RQ's restore accepts any JSON in `meta`, `dependency_ids`, `retry_intervals` and
    `repeat_intervals`, and any integer as `timeout`; a hand-written `5`, `"x"`, `["a"]`
    or `10**20` there raises later, inside the worker's job or failure handling.
    """
    if not isinstance(job.meta, dict):
        return f"meta is JSON {type(job.meta).__name__}, not an object"
    dependency_ids = job._dependency_ids
    if not isinstance(dependency_ids, list) or not all(isinstance(dep, str) for dep in dependency_ids):
        return "dependency_ids is not a list of job ids"
    timeout = job.timeout
    if timeout is not None and timeout != -1 and not 0 < timeout <= MAX_INTERVAL_S:
        # Past this, the worker's alarm overflows before any check of ours could refuse it.
        return f"timeout {timeout!r} is not whole seconds within 1..{MAX_INTERVAL_S} (or -1)"
    for name in ("retry_intervals", "repeat_intervals"):
        value = getattr(job, name, None)
        if value is not None and not _is_interval_list(value):
            return f"{name} is not a non-empty list of whole seconds within 0..{MAX_INTERVAL_S}"
    return None


class JsonJob(Job):
    """An RQ job that is always JSON on the wire.

    Assigned directly: RQ would otherwise check the serializer against its runtime
    Protocol for every job created, a third of the cost of a bulk enqueue.
    """

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:
        super().__init__(id, connection=rq_connection(connection))
        self.serializer = JSONSerializer

    @classmethod
    def fetch(cls, id: bytes | str, connection: Any = None, serializer: Any = None) -> Job:
        """RQ's fetch, raising only NoSuchJobError (or its UnreadableJob) for a bad entry.

        RQ raises ValueError on a malformed id and anything at all on a hash it cannot
        restore; every RQ path that meets such an entry (dequeue, registry cleanup,
        dependents) would raise out of the worker's loop. As NoSuchJobError they skip it.

        Raises:
            UnreadableJob: malformed id, hash without data, or a field RQ cannot parse.
            NoSuchJobError: no job hash.
        """
        job_id = parse_id(id)
        try:
            job = super().fetch(job_id, connection=connection, serializer=serializer)
        except UnreadableJob:
            raise
        except NoSuchJobError as exc:
            if "Unexpected job format" in str(exc):
                raise UnreadableJob(f"job hash rq:job:{job_id} is unreadable: it has no data field") from None
            raise
        except redis.RedisError:
            raise
        except Exception as exc:
            detail = str(exc) or "a field RQ cannot parse"  # RQ's asserts carry no message
            reason = f"job hash rq:job:{job_id} is unreadable: {type(exc).__name__}: {detail}"
            raise UnreadableJob(reason) from None
        problem = field_shape_problem(job)
        if problem is not None:
            raise UnreadableJob(f"job hash rq:job:{job_id} is unreadable: {problem}")
        return job

    @classmethod
    def fetch_many(cls, job_ids: Any, connection: Any, serializer: Any = None) -> list[Any]:
        """RQ's fetch_many with None (as for a missing job) in place of each unreadable one."""
        jobs: list[Any] = []
        for job_id in job_ids:
            try:
                jobs.append(cls.fetch(job_id, connection=connection, serializer=serializer))
            except NoSuchJobError:
                jobs.append(None)
        return jobs


QUEUE_REGISTRATION_REFRESH_S = 60.0  # how stale this process's "queue is in rq:queues" may get
# client -> queue key -> when this process last added the queue to `rq:queues`.
_registered_at: weakref.WeakKeyDictionary[redis.Redis, dict[str, float]] = weakref.WeakKeyDictionary()


class KryonixQueue(Queue):
    """An RQ queue that always uses the JSON serializer, whatever the caller passed.

    `rq worker` builds queues with `--serializer` (pickle by default); exporting
    `RQ_QUEUE_CLASS=jobs.queues.KryonixQueue` makes pickle impossible on our queues.
    A Redis Cluster client is given to RQ as `jobs.rq_cluster.rq_connection` adapts it.
    """

    def __init__(self, name: str = "default", *args: Any, **kwargs: Any) -> None:
        if args:
            args = (rq_connection(args[0]), *args[1:])
        else:
            kwargs["connection"] = rq_connection(kwargs.get("connection"))
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

    @classmethod
    def dequeue_any(
        cls,
        queues: Any,
        timeout: int | None,
        connection: Any,
        job_class: Any = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        """RQ's dequeue, setting aside every entry that is not a readable job instead of raising.

        RQ decodes the id before looking at it and lets a malformed one raise out of the
        worker's loop, leaving it in the intermediate list for the next worker.
        """
        queue_keys = [queue.key for queue in queues]
        while True:
            if len(queue_keys) == 1 and get_version(connection) >= (6, 2, 0):
                popped = cls.lmove(connection, queue_keys[0], timeout)
            else:
                popped = cls.lpop(queue_keys, timeout, connection=connection)
            if popped is None:
                return None
            queue_key, raw_id = popped
            queue: KryonixQueue = cls.from_queue_key(  # type: ignore[assignment]
                as_text(queue_key),
                connection=connection,
                job_class=backend_class(cls, "job_class", override=job_class),
                serializer=serializer,
                death_penalty_class=death_penalty_class,
            )
            job = queue.take(raw_id)
            if job is not None:
                return job, queue

    def take(self, raw_id: bytes | str, *, job_class: type[Job] | None = None) -> Job | None:
        """The job `raw_id` names, just dequeued, as `job_class` (the worker's; default the
        queue's); None after setting an unreadable entry aside."""
        try:
            job_id = parse_id(raw_id)
            job: Job = (job_class or self.job_class).fetch(
                job_id, connection=self.connection, serializer=self.serializer
            )
        except UnreadableJob as exc:
            reason = exc.reason
        except NoSuchJobError:
            reason = missing_hash_reason(job_id)
        else:
            if job.origin == self.name:
                return job
            # The job's bounds come from its origin: a `report` job on `email` would hold an
            # in-process email worker for the report timeout (30 min) instead of 120 s.
            reason = f"job origin {job.origin!r} is not the queue {self.name!r} it was queued on"
        quarantine(
            self.connection, queue=self.name, raw_id=raw_id, reason=reason, source=self.intermediate_queue_key
        )
        return None

    def set_aside_unreadable(self, now: float | None = None) -> list[str]:
        """Quarantine what RQ's cleanup would choke on; returns the ids set aside.

        Entries of the intermediate list that are not a readable job (RQ decodes and
        fetches each), and due entries of the started and scheduled registries that
        cannot be read (RQ fetches each to retry, fail or enqueue it). Readable jobs
        are left alone.
        """
        set_aside = []
        for raw_id in raw_ids(self.connection.lrange(self.intermediate_queue_key, 0, -1)):
            reason = self._unreadable(raw_id, missing_is_poison=True)
            if reason is not None:
                source = self.intermediate_queue_key
                quarantine(self.connection, queue=self.name, raw_id=raw_id, reason=reason, source=source)
                set_aside.append(printable(raw_id))
        set_aside += self._set_aside_due(self.started_job_registry.key, now)
        set_aside += self.set_aside_unreadable_scheduled(now)
        return set_aside

    def set_aside_unreadable_scheduled(self, now: float | None = None) -> list[str]:
        """Quarantine due scheduled entries RQ's scheduler could not read (it would raise)."""
        return self._set_aside_due(self.scheduled_job_registry.key, now)

    def _set_aside_due(self, registry_key: str, now: float | None) -> list[str]:
        set_aside = []
        moment = time.time() if now is None else now
        for raw_entry in raw_ids(self.connection.zrangebyscore(registry_key, 0, moment)):
            reason = self._unreadable(raw_entry, missing_is_poison=False)
            if reason is not None:
                with self.connection.pipeline(transaction=True) as pipe:  # one MULTI, on RQ's slot
                    quarantine(
                        self.connection, queue=self.name, raw_id=raw_entry, reason=reason, pipeline=pipe
                    )
                    pipe.zrem(registry_key, raw_entry)
                    pipe.execute()
                set_aside.append(printable(raw_entry))
        return set_aside

    def _unreadable(self, raw_id: bytes | str, *, missing_is_poison: bool) -> str | None:
        """Why `raw_id` is no readable job, or None when it is one."""
        try:
            job_id = parse_id(raw_id)
            self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except UnreadableJob as exc:
            return exc.reason
        except NoSuchJobError:
            return missing_hash_reason(job_id) if missing_is_poison else None
        return None


def get_queue(client: redis.Redis | None = None, *, name: str) -> KryonixQueue:
    """Our queue `name` (one of `QUEUES`) on `client`, by default the PRIMARY."""
    spec_for(name)
    return KryonixQueue(name, connection=client or primary())
