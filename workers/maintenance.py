"""Crash recovery: find jobs whose worker died and put them back to work.

Poison entries (malformed ids, missing or unreadable job hashes) are quarantined first
(`KryonixQueue.set_aside_unreadable`), so they are never requeued. Two places a crash
strands a job:
- the StartedJobRegistry, with a heartbeat that stopped: RQ's own cleanup retries it
  (per its retry policy) or fails it as abandoned;
- a queue's intermediate list, between BLMOVE and registration: the job never started,
  so it goes back to the front of its queue.

Our workers refresh heartbeats every 10 s with a 20 s grace, and this loop runs every
few seconds, so a dead worker's job runs again within about a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis
from rq.registry import StartedJobRegistry, clean_registries
from rq.worker_registration import clean_worker_registry

from cache import keys
from cache.connections import REDIS_ERRORS
from cache.text import printable
from jobs.quarantine import raw_ids
from jobs.queues import QUEUES, KryonixQueue
from jobs.serialization import JSONSerializer
from workers.job import KryonixJob

log = logging.getLogger("kryonix.maintenance")

STUCK_AFTER_S = 15  # a job in an intermediate list, unregistered this long, was orphaned by a crash
SEEN_KEY_TTL_S = 3600


@dataclass
class RecoveryReport:
    abandoned: dict[str, list[str]] = field(default_factory=dict)
    requeued_from_intermediate: dict[str, list[str]] = field(default_factory=dict)
    set_aside: dict[str, list[str]] = field(default_factory=dict)  # quarantined poison entries

    @property
    def total(self) -> int:
        return sum(map(len, self.abandoned.values())) + sum(
            map(len, self.requeued_from_intermediate.values())
        )


def recover(
    client: redis.Redis, *, queue_names: Iterable[str] = QUEUES, now: float | None = None
) -> RecoveryReport:
    """One maintenance pass over `queue_names`; safe to run from several processes at once."""
    report = RecoveryReport()
    moment = time.time() if now is None else now
    for name in queue_names:
        queue = KryonixQueue(name, connection=client, job_class=KryonixJob)
        report.set_aside[name] = queue.set_aside_unreadable(moment)  # before RQ's cleanup meets them
        report.abandoned[name] = _recover_abandoned(queue, moment)
        report.requeued_from_intermediate[name] = _recover_intermediate(queue, moment)
        clean_registries(queue)  # expire finished/failed/deferred entries past their TTL
        clean_worker_registry(queue)
    return report


def _recover_abandoned(queue: KryonixQueue, now: float) -> list[str]:
    registry = StartedJobRegistry(
        queue.name, connection=queue.connection, job_class=KryonixJob, serializer=JSONSerializer
    )
    expired = [job_id for job_id in registry.get_expired_job_ids(now)]
    if expired:
        registry.cleanup(timestamp=now)  # retries (with its backoff) or fails each one
        log.warning("queue %s: recovered %d abandoned job(s): %s", queue.name, len(expired), expired)
    return expired


def _recover_intermediate(queue: KryonixQueue, now: float) -> list[str]:
    connection = queue.connection
    intermediate = queue.intermediate_queue
    first_seen = _unregistered_since(queue, now)
    requeued = []
    # Newest first: each goes back to the front, so the queue keeps their order.
    for job_id in reversed(list(first_seen)):
        if now - first_seen[job_id] < STUCK_AFTER_S:
            continue
        # MULTI (explicitly: a Cluster client's default pipeline is not one): out of the list
        # and back in the queue together. Every key is on RQ's slot (`{rq}` on a Cluster).
        with connection.pipeline(transaction=True) as pipe:
            pipe.lrem(intermediate.key, 1, job_id)
            queue.push_job_id(job_id, pipeline=pipe, at_front=True)
            pipe.hdel(keys.intermediate_seen(intermediate.key), job_id)
            removed = pipe.execute()[0]
        if removed:
            requeued.append(job_id)
            log.warning(
                "queue %s: job %s was stranded between dequeue and start; requeued", queue.name, job_id
            )
    return requeued


def _unregistered_since(queue: KryonixQueue, now: float) -> dict[str, float]:
    """The jobs in the intermediate list but not started, in list order -> since when, as far as we know.

    A job counts as there since the first pass that saw it there unregistered, and only
    while every later pass sees it there too: a job that a pass does not find there
    loses its time. A job that passed through the list once (seen there on its way to
    a worker) and is dequeued again much later is a new arrival, not a stuck job.
    """
    connection = queue.connection
    intermediate = queue.intermediate_queue
    started = StartedJobRegistry(
        queue.name, connection=connection, job_class=KryonixJob, serializer=JSONSerializer
    )
    listed = [printable(raw) for raw in raw_ids(connection.lrange(intermediate.key, 0, -1))]
    unregistered = [job_id for job_id in listed if job_id not in started]
    seen_key = keys.intermediate_seen(intermediate.key)  # RQ's slot, as the list's
    known = {printable(raw) for raw in connection.hkeys(seen_key)}
    with connection.pipeline(transaction=True) as pipe:
        gone = known.difference(unregistered)
        if gone:
            pipe.hdel(seen_key, *gone)
        for job_id in unregistered:
            pipe.hsetnx(seen_key, job_id, now)
        pipe.expire(seen_key, SEEN_KEY_TTL_S)
        if unregistered:
            pipe.hmget(seen_key, unregistered)
        replies = pipe.execute()
    if not unregistered:
        return {}
    since = zip(unregistered, replies[-1], strict=True)
    return {job_id: float(first) for job_id, first in since if first is not None}


def clean_readable(queues: Iterable[object], clean: Callable[[], object]) -> None:
    """`clean` (RQ's registry cleanup) once the `queues`' entries it cannot read are set aside.

    RQ's cleanup decodes every intermediate-list entry and fetches each expired started
    job; one malformed entry would stop every worker at start. Another worker can move one
    into an intermediate list between the two steps: then the entries are set aside again,
    and a cleanup that still meets one waits for the next pass.
    """
    for attempt in range(2):
        for queue in queues:
            if isinstance(queue, KryonixQueue):
                queue.set_aside_unreadable()
        try:
            clean()
            return
        except UnicodeDecodeError as exc:  # an id that is not UTF-8 arrived meanwhile
            if attempt:
                log.warning("registry cleanup left for the next pass: %s", exc)


def run_forever(client: redis.Redis, *, interval_s: float = 5.0, stop: object = None) -> None:
    """Run `recover` every `interval_s` until `stop` (a threading.Event) is set."""
    import threading

    event = stop if isinstance(stop, threading.Event) else threading.Event()
    while not event.is_set():
        try:
            recover(client)
        except REDIS_ERRORS as exc:  # Redis away: wait and try again, never die
            log.error("maintenance pass failed: %s", exc)
        event.wait(interval_s)
