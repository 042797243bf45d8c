"""The enqueue API the web tier calls: validate first, then one atomic write, return the job id.

Nothing reaches Redis before the input is known good: the function is on the
allow-list, the arguments serialize, the schedule is sane.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import RedisCluster
from rq import Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job

from cache import keys
from cache.connections import Role, address_setting, primary, translate_errors
from cache.settings import get_settings
from jobs.allowlist import function_name
from jobs.errors import EnqueueNotDurable, EnqueueUnavailable, JobValidationError
from jobs.queues import KryonixQueue, QueueSpec, spec_for
from jobs.retry import RetryPolicy
from jobs.serialization import UnserializableArgument, dumps

MAX_IDEMPOTENCY_KEY_LENGTH = 256
MAX_BULK_JOBS = 10_000  # one pipeline; larger batches should be split by the caller


def idempotent_job_id(queue: str, idempotency_key: str) -> str:
    """The job id for an idempotency key: the same key on the same queue is the same job."""
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise JobValidationError("idempotency_key must be a non-empty string")
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise JobValidationError(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    digest = hashlib.sha256(f"{queue}\0{idempotency_key}".encode()).hexdigest()[:40]
    return f"{queue}-{digest}"


def retry_for(policy: RetryPolicy, rng: random.Random | None = None) -> Retry | None:
    """RQ's Retry with one full-jitter interval per attempt, drawn now (RQ has no backoff of its own)."""
    if policy.attempts == 0:
        return None
    return Retry(max=policy.attempts, interval=[policy.backoff(n, rng) for n in range(policy.attempts)])


def _schedule(at: dt.datetime | None, in_: dt.timedelta | float | None) -> dt.datetime | None:
    if at is not None and in_ is not None:
        raise JobValidationError("give either at= or in_=, not both")
    if at is not None:
        if not isinstance(at, dt.datetime) or at.tzinfo is None:
            raise JobValidationError("at= must be a timezone-aware datetime (e.g. datetime.now(UTC))")
        return at.astimezone(dt.UTC)
    if in_ is not None:
        seconds = in_.total_seconds() if isinstance(in_, dt.timedelta) else float(in_)
        if seconds < 0:
            raise JobValidationError(f"in_= must not be negative, got {seconds} s")
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return None


def _job_data(
    spec: QueueSpec,
    func: str | Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    idempotency_key: str | None,
    meta: Mapping[str, Any] | None,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    name = function_name(func)
    kwargs = dict(kwargs or {})
    job_meta = dict(meta or {})
    job_meta.setdefault("queue", spec.name)
    try:
        dumps(job_meta)
    except UnserializableArgument as exc:
        raise JobValidationError(f"job meta: {exc}") from None
    return {
        "func": name,
        "args": list(args),
        "kwargs": kwargs,
        "timeout": spec.job_timeout_s,
        "result_ttl": spec.result_ttl_s,
        "failure_ttl": spec.failure_ttl_s,
        "job_id": idempotent_job_id(spec.name, idempotency_key) if idempotency_key is not None else None,
        "meta": job_meta,
        "retry": retry_for(retry if retry is not None else spec.retry),
    }


def enqueue(
    queue_name: str,
    func: str | Callable[..., Any],
    *args: Any,
    kwargs: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    at: dt.datetime | None = None,
    in_: dt.timedelta | float | None = None,
    meta: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    durable: bool = False,
    client: redis.Redis | None = None,
) -> str:
    """Validate and enqueue one job; return its id.

    Args:
        queue_name: `email` or `report`.
        func: a function under `jobs.` (or its dotted name).
        args: positional arguments (JSON types, datetime, date, UUID, Decimal).
        kwargs: keyword arguments, same types.
        idempotency_key: the same key on the same queue gives the same job, once.
        at: run at this aware datetime; in_: run after this delay.
        meta: extra job meta (JSON types).
        retry: overrides the queue's retry policy for this job.
        durable: return only once a replica has the job too (WAIT 1), so a failover
            right after enqueue cannot lose it; raises `EnqueueNotDurable` otherwise
            (the job may exist on the old master: retry with an idempotency key).
        client: defaults to the PRIMARY client.

    Raises:
        JobValidationError: bad input; nothing was written.
        EnqueueUnavailable: the PRIMARY Redis is down or refuses writes (full).
    """
    try:
        spec = spec_for(queue_name)
    except ValueError as exc:
        raise JobValidationError(str(exc)) from None
    when = _schedule(at, in_)
    data = _job_data(spec, func, args, kwargs, idempotency_key, meta, retry)
    try:  # RQ registers the queue before it encodes the job: check first, write nothing
        dumps([data["func"], None, data["args"], data["kwargs"]])
    except UnserializableArgument as exc:
        raise JobValidationError(f"arguments of {data['func']}: {exc}") from None
    queue = KryonixQueue(spec.name, connection=client or primary())
    unique = data["job_id"] is not None
    with _write_errors(), _argument_errors(data["func"]):
        try:
            if when is not None:
                job = queue.enqueue_at(when, data.pop("func"), unique=unique, **_call(data))
            else:
                job = queue.enqueue_call(data.pop("func"), args=data.pop("args"), unique=unique, **data)
        except DuplicateJobError:
            return str(data["job_id"])
        if durable:
            _wait_for_replica(queue.connection, job.key, str(job.id))
    return str(job.id)


DURABLE_WAIT_MS = 2000  # how long a durable enqueue waits for a replica's acknowledgement


def _wait_for_replica(client: redis.Redis | RedisCluster, job_key: str, job_id: str) -> None:
    """WAIT 1 on the server that owns the job, after a write of the WAIT's own connection.

    WAIT counts the replicas that have every write of the connection it is sent on, and
    RQ wrote the job on whichever pooled connection it was handed (a script, a MULTI).
    So one connection, held for both, writes a probe key next to the job (same server,
    same slot; a write after the job's) and then WAITs: acknowledged means the job is on
    a replica too. On a Cluster that is a connection to the node owning the job's slot,
    not the client's default node, whose replicas never see the job.
    """
    if isinstance(client, RedisCluster):
        owner: redis.Redis | None = client.get_node_from_key(job_key).redis_connection  # type: ignore[no-untyped-call]
    else:
        owner = client
    acknowledged = 0
    if owner is not None:  # None: the cluster client has not connected to that node
        with owner.client() as held:  # type: ignore[no-untyped-call]  # one pooled connection, held
            held.call_timeout_s = getattr(owner, "call_timeout_s", None)  # the owner's time bound
            held.set(keys.durable_probe(job_key), "1", px=DURABLE_WAIT_MS)
            acknowledged = int(held.wait(1, DURABLE_WAIT_MS))
    if acknowledged < 1:
        raise EnqueueNotDurable(
            f"job {job_id} was enqueued on the primary but no replica acknowledged it within "
            f"{DURABLE_WAIT_MS} ms; a failover now could lose it (retry with the same idempotency key)",
            role=Role.PRIMARY.value,
            setting=address_setting(Role.PRIMARY, get_settings()),
        )


def _call(data: dict[str, Any]) -> dict[str, Any]:
    """Keyword form of enqueue_call's options for enqueue_at (job arguments as `args`/`kwargs`)."""
    return {
        "args": data["args"],
        "kwargs": data["kwargs"],
        "job_timeout": data["timeout"],
        "result_ttl": data["result_ttl"],
        "failure_ttl": data["failure_ttl"],
        "job_id": data["job_id"],
        "meta": data["meta"],
        "retry": data["retry"],
    }


def enqueue_bulk(
    queue_name: str,
    func: str | Callable[..., Any],
    calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    *,
    meta: Mapping[str, Any] | None = None,
    client: redis.Redis | None = None,
) -> list[str]:
    """Validate every call, then enqueue them all in one pipeline (all or nothing).

    Raises:
        JobValidationError: any call is bad; nothing was written.
        EnqueueUnavailable: the PRIMARY Redis is down or full.
    """
    try:
        spec = spec_for(queue_name)
    except ValueError as exc:
        raise JobValidationError(str(exc)) from None
    template = _job_data(spec, func, (), None, None, meta)  # name, meta and TTLs checked once
    name = template.pop("func")
    del template["job_id"], template["args"], template["kwargs"]
    policy = spec.retry
    prepared = []
    for index, (args, kwargs) in enumerate(calls):
        if index >= MAX_BULK_JOBS:
            raise JobValidationError(f"more than {MAX_BULK_JOBS} jobs in one bulk enqueue; split the batch")
        options = {**template, "meta": dict(template["meta"]), "retry": retry_for(policy)}
        prepared.append(KryonixQueue.prepare_data(name, args=list(args), kwargs=dict(kwargs), **options))
    if not prepared:
        return []
    queue = KryonixQueue(spec.name, connection=client or primary())
    # Bulk: RQ encodes each job while filling the pipeline; one bad argument raises before
    # `execute`, so nothing of the batch is sent (see _argument_errors). One MULTI, explicitly:
    # a Cluster client's `pipeline()` is not transactional by default. Every key it writes is
    # RQ's, so on RQ's one slot.
    with _write_errors(), _argument_errors(name), queue.connection.pipeline(transaction=True) as pipe:
        jobs = queue.enqueue_many(prepared, pipeline=pipe)
        pipe.execute()
    return [job.id for job in jobs]


@contextmanager
def _argument_errors(func_name: str) -> Iterator[None]:
    """An argument without a JSON form, found while RQ encodes the job (before anything was
    sent), is `JobValidationError`."""
    try:
        yield
    except UnserializableArgument as exc:
        raise JobValidationError(f"arguments of {func_name}: {exc}") from None


def _write_errors() -> translate_errors:
    """Redis down, refusing us or full (noeviction) is `EnqueueUnavailable`, naming the setting."""
    return translate_errors(Role.PRIMARY, error_class=EnqueueUnavailable, full=True)


def fetch_job(client: redis.Redis | None = None, *, job_id: str) -> Job | None:
    """The job, or None when it does not exist (never enqueued, or expired)."""
    from rq.exceptions import NoSuchJobError

    from jobs.serialization import JSONSerializer

    try:
        return Job.fetch(job_id, connection=client or primary(), serializer=JSONSerializer)
    except NoSuchJobError:
        return None
