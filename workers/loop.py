"""The worker's main loop: claim as many jobs as there are free slots, start them, repeat.

RQ's loop pops one job, runs it, and only then pops the next; a worker serving several
queues pops with BLPOP, so a crash between the pop and the job's registration loses
the job. Here every claim (`cache/lua/queue_claim.lua`, or BLMOVE while idle) moves
ids into their queue's intermediate list, where crash recovery finds them, and one
claim takes up to the free slots of each queue:
- in-process queues (email): up to `EMAIL_CONCURRENCY` jobs at once on slot threads;
- the others (report): one forked work horse at a time, as RQ runs it. While a horse
  runs, the worker keeps claiming in-process jobs from inside its wait for the horse.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

import redis
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue

from cache.cluster import is_cluster, is_cluster_outage
from cache.lua import script
from jobs.queues import QUEUES, KryonixQueue

if TYPE_CHECKING:
    from workers.worker import KryonixWorker

log = logging.getLogger("kryonix.worker")

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
MULTI_QUEUE_WAIT_S = 1  # BLMOVE watches one list: an idle worker polls its other queues this often
BUSY_WAIT_S = 1  # with jobs running, the longest a blocking wait may delay a stop request
HORSE_POLL_S = 0.05  # how often a worker waiting for its horse looks for the horse's exit
REDIS_WAIT_MAX_S = 30.0  # the longest pause between two tries while Redis is away
# On a Redis Cluster: a failover takes seconds, so tries are closer, and the longest a
# worker waits for RQ's `{rq}` slot to be served again before it exits with a message
# (its supervisor restarts it). One server or Sentinel: it waits as long as it takes.
CLUSTER_WAIT_MAX_S = 5.0
CLUSTER_SETTLE_LIMIT_S = 300.0


def redis_down(exc: BaseException) -> bool:
    """Redis unreachable, or a cluster failing over (no master for a slot yet): worth waiting out.

    A cluster raises some of these outside `redis.RedisError` (`cache.cluster.is_cluster_outage`).
    """
    return isinstance(exc, REDIS_DOWN) or is_cluster_outage(exc)


def until_redis_answers(worker: KryonixWorker, step: Callable[[], None]) -> None:
    """Run `step`, waiting with backoff while Redis is unreachable; give up on a stop request.

    Raises:
        StopRequested: the worker was asked to stop meanwhile.
        SystemExit: on a cluster, no answer for CLUSTER_SETTLE_LIMIT_S (the message says so).
    """
    on_cluster = is_cluster(worker.connection)
    wait_s, since, failures = 1.0, time.monotonic(), 0
    while True:
        try:
            step()
            break
        except Exception as exc:
            if not redis_down(exc):
                raise
            if worker._stop_requested:
                raise StopRequested() from exc
            failures += 1
            waited_s = time.monotonic() - since
            if on_cluster and waited_s >= CLUSTER_SETTLE_LIMIT_S:
                raise SystemExit(
                    f"worker {worker.name}: the Redis Cluster has not served RQ's slot for {waited_s:.0f} s "
                    f"(CLUSTER_SETTLE_LIMIT_S; check REDIS_CLUSTER_NODES and the cluster's state); exiting "
                    f"for the supervisor to restart the worker. Last error: {exc}"
                ) from exc
            log.error("worker %s: Redis unreachable (%s); retrying in %.0f s", worker.name, exc, wait_s)
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, CLUSTER_WAIT_MAX_S if on_cluster else REDIS_WAIT_MAX_S)
    if failures:
        log.info("worker %s: Redis answers again after %.1f s", worker.name, time.monotonic() - since)


def in_process(queue: Queue) -> bool:
    spec = QUEUES.get(queue.name)
    return spec is not None and spec.in_process


class Claimer:
    """Moves job ids from queues into their intermediate lists, then reads the jobs."""

    def __init__(self, connection: redis.Redis, *, job_class: type[Job]) -> None:
        self.connection = connection
        self.job_class = job_class  # the worker's: the queue objects it was given may carry another
        self._claim = script(connection, "queue_claim")
        self.set_aside = 0  # entries of the last claim that were no readable job (quarantined)

    def claim(self, limits: Sequence[tuple[Queue, int]]) -> list[tuple[Job, Queue]]:
        """Up to `limit` jobs from each queue, in order, in one round trip (plus the reads)."""
        wanted = [(queue, limit) for queue, limit in limits if limit > 0]
        if not wanted:
            return []
        keys = [key for queue, _ in wanted for key in (queue.key, queue.intermediate_queue_key)]
        flat = self._claim(keys=keys, args=[limit for _, limit in wanted])
        pairs = zip(flat[::2], flat[1::2], strict=True)
        return self._read([(wanted[int(index) - 1][0], raw_id) for index, raw_id in pairs])

    def wait_for_one(self, queue: Queue, timeout_s: int) -> list[tuple[Job, Queue]]:
        """Block on `queue` (BLMOVE into its intermediate list) for at most `timeout_s`."""
        raw_id = self.connection.blmove(queue.key, queue.intermediate_queue_key, timeout_s)
        return [] if raw_id is None else self._read([(queue, raw_id)])

    def put_back(self, claimed: Sequence[tuple[Job, Queue]]) -> None:
        """Return claimed jobs, unstarted, to the front of their queues, in their order."""
        with self.connection.pipeline(transaction=True) as pipe:  # MULTI: out of the list, back in the queue
            for job, queue in reversed(claimed):
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.lpush(queue.key, job.id)
            pipe.execute()

    def _read(self, popped: list[tuple[Queue, bytes | str]]) -> list[tuple[Job, Queue]]:
        jobs = []
        for queue, raw_id in popped:
            job = cast(KryonixQueue, queue).take(raw_id, job_class=self.job_class)
            if job is not None:
                jobs.append((job, queue))
        self.set_aside = len(popped) - len(jobs)
        return jobs


class WorkLoop:
    def __init__(self, worker: KryonixWorker) -> None:
        self.worker = worker
        self.claimer = Claimer(worker.connection, job_class=worker.job_class)
        self.started = 0
        self.blocking = False  # in a blocking wait for jobs: a stop request may interrupt it

    def run(self, *, burst: bool, max_jobs: int | None, max_idle_time: int | None) -> int:
        """Claim and run jobs until stopped, idle (burst, max_idle_time) or max_jobs; then drain."""
        worker = self.worker
        idle_since = time.monotonic()
        try:
            while True:
                try:
                    worker.check_for_suspension(burst)
                    if worker.should_run_maintenance_tasks:
                        worker.run_maintenance_tasks()
                    if worker._stop_requested or (max_jobs is not None and self.started >= max_jobs):
                        break
                    if self.step(
                        burst=burst, max_jobs=max_jobs, max_idle_time=max_idle_time, idle_since=idle_since
                    ):
                        idle_since = time.monotonic()
                    elif self._should_quit(burst, max_idle_time, idle_since):
                        break
                except StopRequested:
                    break
                except Exception as exc:
                    if not redis_down(exc):  # as RQ's loop: log, stop claiming, let the running jobs end
                        log.exception(
                            "worker %s: unhandled exception in the work loop, quitting", worker.name
                        )
                        break
                    if worker._stop_requested:
                        break
                    log.error("worker %s: Redis unreachable (%s); waiting for it", worker.name, exc)
                    worker._until_redis_answers(worker._ping)
        finally:
            self.drain()
        return self.started

    def step(
        self, *, burst: bool, max_jobs: int | None, max_idle_time: int | None, idle_since: float
    ) -> bool:
        """One claim and the starts it allows; False when nothing was claimed."""
        worker = self.worker
        worker.heartbeat()
        limits = self._limits(max_jobs)
        if not any(limit for _, limit in limits):
            if worker.slots is not None:
                worker.slots.wait_for_free(BUSY_WAIT_S)
            return True
        claimed = self.claimer.claim(limits)
        if not claimed and self.claimer.set_aside:
            return True  # only poison at the head of a queue: look again
        if not claimed and not burst:
            claimed = self._wait(limits, max_idle_time, idle_since)
        if not claimed:
            if worker.slots is not None and worker.slots.busy:
                worker.slots.wait_for_change(BUSY_WAIT_S)  # a running job may enqueue more
                return True
            return False
        if worker._stop_requested:
            self.claimer.put_back(claimed)
            return True
        self._start(claimed)
        return True

    def _limits(self, max_jobs: int | None) -> list[tuple[Queue, int]]:
        worker = self.worker
        left = None if max_jobs is None else max_jobs - self.started
        limits = []
        for queue in worker._ordered_queues:
            room = worker.slots.free if in_process(queue) and worker.slots is not None else 1
            limits.append((queue, room if left is None else min(room, left)))
        return limits

    def _wait(
        self, limits: list[tuple[Queue, int]], max_idle_time: int | None, idle_since: float
    ) -> list[tuple[Job, Queue]]:
        worker = self.worker
        queues = [queue for queue, limit in limits if limit > 0]
        busy = worker.slots is not None and worker.slots.busy > 0
        timeout = worker.dequeue_timeout if len(queues) == 1 and not busy else MULTI_QUEUE_WAIT_S
        if max_idle_time is not None:
            timeout = max(1, min(timeout, int(max_idle_time - (time.monotonic() - idle_since)) + 1))
        self.blocking = True
        try:
            return self.claimer.wait_for_one(queues[0], timeout)
        finally:
            self.blocking = False

    def _start(self, claimed: list[tuple[Job, Queue]]) -> None:
        worker = self.worker
        horse_jobs = []
        for job, queue in claimed:
            self.started += 1
            job.redis_server_version = worker.get_redis_server_version()  # type: ignore[no-untyped-call]
            if in_process(queue) and worker.slots is not None:
                worker.start_in_slot(job, queue)
            else:
                horse_jobs.append((job, queue))
        worker.reorder_queues(reference_queue=claimed[-1][1])
        for job, queue in horse_jobs:  # at most one: the limit of a forking queue is 1
            worker.execute_job(job, queue)

    def feed_slots_while_waiting(self) -> None:
        """Called while a horse runs: claim in-process jobs into free slots (SIGALRM held)."""
        worker = self.worker
        if worker.slots is None or not worker.slots.free or worker._stop_requested:
            return
        limits = [(q, worker.slots.free if in_process(q) else 0) for q in worker._ordered_queues]
        with _signal_held(signal.SIGALRM):  # RQ's horse-monitor alarm must not cut a claim in half
            claimed = self.claimer.claim(limits)
            for job, queue in claimed:
                self.started += 1
                worker.start_in_slot(job, queue)

    def _should_quit(self, burst: bool, max_idle_time: int | None, idle_since: float) -> bool:
        if burst:
            log.info("Worker %s: done, quitting", self.worker.name)
            return True
        if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
            log.info("Worker %s: idle for %d seconds, quitting", self.worker.name, max_idle_time)
            return True
        return False

    def drain(self) -> None:
        slots = self.worker.slots
        if slots is not None and slots.busy:
            log.info("worker %s: waiting for %d running job(s) to end", self.worker.name, slots.busy)
            slots.drain()


@contextlib.contextmanager
def _signal_held(signum: int) -> Iterator[None]:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
