"""`python -m workers scheduler`: periodic jobs (rq-scheduler), due retries, crash recovery.

Each tick:
1. rq-scheduler moves due periodic entries to their queues. We override its
   `enqueue_job` so a slot becomes one job whose id is derived from the slot and is
   enqueued with RQ's atomic unique enqueue: two schedulers (or a lock that expired
   mid-run) cannot run one slot twice. The next slot is computed from the slot, not
   from the clock, so every scheduler agrees on it.
2. RQ's own scheduled registries (retries with backoff, `at=`/`in_=` jobs) are moved
   to their queues when due.
3. Every `maintenance_interval_s`, `workers.maintenance.recover` requeues or fails jobs
   of dead workers.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import redis
from rq.scheduler import RQScheduler
from rq_scheduler import Scheduler

from cache.connections import REDIS_ERRORS, primary, set_process_role
from cache.errors import RedisUnavailable
from cache.health import check_eviction_policy
from cache.text import printable
from jobs.enqueue import enqueue
from jobs.periodic import Periodic, declared
from jobs.quarantine import quarantine, raw_ids
from jobs.queues import QUEUES, KryonixQueue
from jobs.rq_cluster import SCHEDULER_KEYS, keep_scheduler_connection, rq_connection
from jobs.serialization import JSONSerializer
from workers.job import KryonixJob
from workers.maintenance import recover

log = logging.getLogger("kryonix.scheduler")

PERIODIC_PREFIX = "periodic-"


_OUTAGES: tuple[type[Exception], ...] = (*REDIS_ERRORS, RedisUnavailable)


class PeriodicScheduler(Scheduler):  # type: ignore[misc]
    job_class = KryonixJob
    queue_class = KryonixQueue
    # rq-scheduler's keys under RQ_KEY_PREFIX (it hard-codes `rq:`): on one slot with RQ's on a cluster.
    redis_scheduler_namespace_prefix = SCHEDULER_KEYS["redis_scheduler_namespace_prefix"]
    scheduler_key = SCHEDULER_KEYS["scheduler_key"]
    scheduler_lock_key = SCHEDULER_KEYS["scheduler_lock_key"]
    scheduled_jobs_key = SCHEDULER_KEYS["scheduled_jobs_key"]

    def __init__(self, definitions: Iterable[Periodic], connection: redis.Redis, tick_s: float) -> None:
        super().__init__(
            connection=rq_connection(connection),
            interval=tick_s,
            job_class=KryonixJob,
            queue_class=KryonixQueue,
        )
        self.definitions = {d.job_id: d for d in definitions}

    def drop_undeclared(self) -> None:
        """Remove every slot entry that is no declared definition; others are quarantined.

        Only declared definitions ever fire; a hand-written entry (a malformed or binary
        id included, on which rq-scheduler raises) must not stop the ones behind it.
        """
        for raw_id in raw_ids(self.connection.zrange(self.scheduled_jobs_key, 0, -1)):
            job_id = printable(raw_id)
            if job_id in self.definitions:
                continue
            self.connection.zrem(self.scheduled_jobs_key, raw_id)
            if job_id.startswith(PERIODIC_PREFIX):
                log.info("periodic %s is no longer declared: removed", job_id)
            else:
                reason = "not a declared periodic job (written by hand?)"
                quarantine(self.connection, queue="periodic", raw_id=raw_id, reason=reason)

    def register(self, now: float) -> None:
        """Store every definition (keeping a pending slot) and drop entries no longer declared."""
        self.drop_undeclared()
        for definition in self.definitions.values():
            job = self._create_job(
                definition.func,
                args=list(definition.args),
                kwargs=dict(definition.kwargs),
                id=definition.job_id,
                queue_name=definition.queue,
                meta={"periodic": definition.name},
                commit=True,
            )
            # NX: a restart keeps the slot already pending instead of skipping it.
            self.connection.zadd(self.scheduled_jobs_key, {job.id: definition.next_slot(now)}, nx=True)

    def enqueue_job(self, job: Any) -> None:
        """Fire one due slot of `job` exactly once, then schedule its next slot."""
        definition = self.definitions.get(job.id)
        score = self.connection.zscore(self.scheduled_jobs_key, job.id)
        if definition is None or score is None:
            self.connection.zrem(self.scheduled_jobs_key, job.id)
            return
        slot = int(score)
        run_id = enqueue(
            definition.queue,
            definition.func,
            *definition.args,
            kwargs=definition.kwargs,
            idempotency_key=definition.run_id(slot),
            meta={"periodic": definition.name, "slot": slot},
            client=self.connection,
        )
        # Missed slots (scheduler down) collapse into this one run: skip to the next future slot.
        next_slot = definition.next_slot(max(slot, time.time()))
        self.connection.zadd(self.scheduled_jobs_key, {job.id: next_slot}, xx=True, gt=True)
        log.info("periodic %s slot %d -> job %s; next slot %d", definition.name, slot, run_id, next_slot)


class SchedulerProcess:
    """The loop behind `python -m workers scheduler`."""

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        definitions: Iterable[Periodic] | None = None,
        tick_s: float = 1.0,
        maintenance_interval_s: float = 5.0,
    ) -> None:
        self.client = rq_connection(client or primary())  # RQ's, maintenance's and ours alike
        self.tick_s = tick_s
        self.maintenance_interval_s = maintenance_interval_s
        self.periodic = PeriodicScheduler(
            declared() if definitions is None else definitions, self.client, tick_s
        )
        self.queues = [KryonixQueue(name, connection=self.client, job_class=KryonixJob) for name in QUEUES]
        self.rq_scheduler = RQScheduler(self.queues, connection=self.client, serializer=JSONSerializer)
        keep_scheduler_connection(self.rq_scheduler, self.client)
        self.stop_event = threading.Event()
        self._born = False
        self._registered = False

    def run(self, *, install_signals: bool = True) -> None:
        set_process_role("scheduler")
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        last_maintenance = 0.0
        try:
            while not self.stop_event.is_set():
                try:
                    self._start()
                    self.tick()
                    if time.monotonic() - last_maintenance >= self.maintenance_interval_s:
                        recover(self.client)
                        last_maintenance = time.monotonic()
                except _OUTAGES as exc:  # Redis away: keep trying, never exit
                    log.error("scheduler tick failed: %s", exc)
                except Exception:  # a bad entry RQ raises on must not stop retries and periodic jobs
                    log.exception("scheduler tick failed; next tick in %.1f s", self.tick_s)
                self.stop_event.wait(self.tick_s)
        finally:
            self._shutdown()

    def _start(self) -> None:
        """Register once, inside the loop: Redis may go away (a failover) right after start-up."""
        if not self._born:
            check_eviction_policy(self.client)
            self.periodic.register_birth()
            self._born = True
        if not self._registered:
            self.periodic.register(time.time())
            self._registered = True

    def tick(self) -> None:
        self.periodic.heartbeat()
        if self.periodic.acquire_lock():
            try:
                self.periodic.drop_undeclared()
                self.periodic.enqueue_jobs()
            finally:
                self.periodic.remove_lock()
        self.rq_scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if self.rq_scheduler.acquired_locks:
            # RQ's scheduler fetches with RQ's own Job class: one malformed id would raise.
            for queue in self.queues:
                queue.set_aside_unreadable_scheduled()
            self.rq_scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("scheduler: signal %d, stopping after this tick", signum)
        self.stop_event.set()

    def _shutdown(self) -> None:
        try:
            self.rq_scheduler.release_locks()  # type: ignore[no-untyped-call]
            self.periodic.remove_lock()
            if self._born:
                self.periodic.register_death()
        except REDIS_ERRORS as exc:
            log.warning("scheduler shutdown could not release its locks: %s", exc)
