"""The RQ worker class: `RQ_WORKER_CLASS=workers.worker.KryonixWorker`.

One class serves both queues. Jobs of an `in_process` queue (email) run inside the
worker, up to `EMAIL_CONCURRENCY` at once on slot threads (`workers.slots`), so SMTP
connections and transactions are shared; the others (report) run in a forked work
horse, isolated, one at a time. The loop that claims them is `workers.loop`. Every
job's heartbeat is refreshed every `HEARTBEAT_INTERVAL_S`, so a dead worker's job is
noticed within about half a minute instead of RQ's 90 s to 10+ min.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from rq import defaults as rq_defaults
from rq.exceptions import DeserializationError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.utils import get_connection_from_queues, now
from rq.worker import DequeueStrategy, WorkerStatus

from cache.appcache.stats import flush_cache_stats
from cache.connections import Role, build_client, set_process_role
from cache.errors import RedisUnavailable
from cache.health import check_eviction_policy
from cache.ratelimit.service import flush_ratelimit_stats
from cache.settings import get_settings
from jobs.queues import KryonixQueue
from jobs.rq_cluster import cluster_mode, is_cluster, raise_socket_timeout, rq_connection
from jobs.serialization import JSONSerializer
from workers import bookkeeping
from workers.commands import SlotCommands
from workers.job import KryonixJob, not_a_json_job
from workers.job_stats import JobStats, log_started, logged_run
from workers.logs import configure_logging
from workers.loop import WorkLoop, in_process, redis_down, until_redis_answers
from workers.maintenance import clean_readable
from workers.process import die_with_parent, rss_bytes
from workers.slots import Slots, ThreadAwareDeathPenalty
from workers.startup import cluster_client_when_settled
from workers.worker_arguments import monitoring_interval, our_class, refuse_non_json

log = logging.getLogger("kryonix.worker")

HEARTBEAT_INTERVAL_S = 10  # how often a running job proves its worker is alive
HEARTBEAT_GRACE_S = 20  # a job whose heartbeat is this late is abandoned (RQ uses 60)
HEARTBEAT_COALESCE_S = 1.0  # a worker beat this recent makes the next one redundant
SUSPENSION_CHECK_INTERVAL_S = 1.0  # `rq suspend` takes effect within this
# Worker hash field naming the class; RQ 3 stores none, so `status` tells our workers
# from a plain `rq worker` (pickle, any function) by this marker.
CLASS_FIELD = "kx_worker_class"


class KryonixWorker(SlotCommands):
    job_class = KryonixJob  # class-level too: a subclass may name its own (of ours)
    queue_class = KryonixQueue
    death_penalty_class = ThreadAwareDeathPenalty

    def __init__(self, queues: Any, *args: Any, **kwargs: Any) -> None:
        """RQ's worker, on our job and queue classes, JSON, and our heartbeat interval.

        Raises:
            ConfigError: `job_class` or `queue_class` is not ours (nor a subclass of
                ours), `serializer` is not JSON, or `job_monitoring_interval` is one
                the crash-recovery bound cannot honour (see `workers.worker_arguments`).
        """
        kwargs["job_class"] = job_class = our_class(
            kwargs.get("job_class") or self.job_class, KryonixJob, argument="job_class"
        )
        kwargs["queue_class"] = queue_class = our_class(
            kwargs.get("queue_class") or self.queue_class, KryonixQueue, argument="queue_class"
        )
        refuse_non_json(kwargs.get("serializer"))
        kwargs["serializer"] = JSONSerializer
        kwargs["job_monitoring_interval"] = monitoring_interval(
            kwargs.get("job_monitoring_interval"), longest=HEARTBEAT_INTERVAL_S, grace=HEARTBEAT_GRACE_S
        )
        given = list(queues) if isinstance(queues, list | tuple) else [queues]
        # As RQ's Worker: without `connection=`, the one the given Queue objects carry.
        connection = kwargs.get("connection") or get_connection_from_queues(given)
        if get_settings().sentinel is not None or (cluster_mode() and not is_cluster(connection)):
            # `rq worker` only knows RQ_REDIS_URL; with Sentinel or a Cluster the worker needs a client
            # that follows the master. Its own pool: RQ raises the socket timeout of the one it is given.
            connection = cluster_client_when_settled() if cluster_mode() else build_client(Role.PRIMARY)
        if connection is not None:
            kwargs["connection"] = connection = rq_connection(connection)
        # Queues of our class on this connection are kept as given; others are rebuilt by name.
        queues = [
            q
            if isinstance(q, queue_class) and q.connection is connection
            else queue_class(q if isinstance(q, str) else q.name, connection=connection, job_class=job_class)
            for q in given
        ]
        super().__init__(queues, *args, **kwargs)
        self.job_stats = JobStats(self.connection)
        self.slots: Slots | None = None  # made when the first in-process job starts
        self._loop: WorkLoop | None = None  # while `work` runs
        self._stopped_ids = set()
        self._stop_lock = threading.Lock()
        self._last_beat: tuple[float, int] = (-math.inf, 0)  # (monotonic time, TTL) of the last beat sent
        self._monotonic: Callable[[], float] = time.monotonic  # injected by tests
        self._written_state: str | None = None  # the `state` field as this process last wrote it
        self._suspension_checked_at = -math.inf
        max_rss_mb = get_settings().worker_max_rss_mb
        self.max_rss_bytes = max_rss_mb * 1024 * 1024 if max_rss_mb else None

    def _set_connection(self, connection: Any) -> Any:
        """RQ's socket timeout above the blocking dequeue, on every node of a cluster too."""
        if is_cluster(connection):
            raise_socket_timeout(connection, self.connection_timeout)
            return connection
        return super()._set_connection(connection)

    def serialize(self) -> dict[str, Any]:
        """RQ's worker hash plus CLASS_FIELD, written at registration."""
        return {**super().serialize(), CLASS_FIELD: f"{type(self).__module__}.{type(self).__qualname__}"}

    def clean_registries(self) -> None:
        """RQ's registry cleanup, after setting aside what it cannot read (`maintenance.clean_readable`)."""
        clean_readable(self.queues, super().clean_registries)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        set_process_role("worker-" + "-".join(self.queue_names()))
        # Before RQ's own set-up, which then keeps our handler (one format for its lines too).
        level = kwargs.get("logging_level") or (args[0] if args else None) or "INFO"
        configure_logging(logging.getLevelName(str(level).upper()), force=True)
        super().bootstrap(*args, **kwargs)
        try:
            check_eviction_policy(self.connection)
        except RedisUnavailable as exc:  # a warning only: a failover now must not stop the worker
            log.warning("worker %s: could not check the eviction policy: %s", self.name, exc)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat (`bookkeeping.worker_beat`) in one round trip instead of two or three.

        RQ beats several times around each job. A beat within HEARTBEAT_COALESCE_S of the
        last one (pipelined beats included), asking for no longer a TTL, is skipped: the
        key's TTL falls short by at most that. Without Redis, it waits instead of raising.
        """
        ttl = timeout or self.worker_ttl + 60
        now_s = self._monotonic()
        if pipeline is not None:
            bookkeeping.worker_beat(self, ttl, pipeline)
            # Recorded too: a job's beat may set a shorter TTL (the job's timeout plus a
            # grace), and the next beat asking for more must then be sent, not skipped.
            self._last_beat = (now_s, ttl)
            return
        sent_at, sent_ttl = self._last_beat
        if now_s - sent_at < HEARTBEAT_COALESCE_S and ttl <= sent_ttl:
            # RQ beats after a job, at the top of its dequeue loop and after the dequeue:
            # back to back when the queue is busy. The TTL set a moment ago covers this one.
            return

        def beat() -> None:
            with self.connection.pipeline(transaction=False) as pipe:
                bookkeeping.worker_beat(self, ttl, pipe)
                pipe.execute()

        self._until_redis_answers(beat)
        self._last_beat = (now_s, ttl)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's state write, skipped when it would write the state already written.

        RQ marks the worker idle after each job and again before each dequeue: on a busy
        queue the second HSET is a round trip that changes nothing.
        """
        if pipeline is None and state == self._written_state:
            self._state = state
            return
        super().set_state(state, pipeline=pipeline)
        self._written_state = state

    # RQ's work loop quits on any Redis error outside its dequeue call; these steps
    # wait for Redis instead, so a worker rides over a Redis restart without a restart.
    def check_for_suspension(self, burst: bool) -> None:
        """RQ's `rq suspend` check, at most once per SUSPENSION_CHECK_INTERVAL_S.

        RQ checks before every job (a round trip); on a busy queue once a second is
        enough: a suspension takes effect within a second instead of at the next job.
        """
        now_s = self._monotonic()
        if now_s - self._suspension_checked_at < SUSPENSION_CHECK_INTERVAL_S:
            return
        self._until_redis_answers(lambda: super(KryonixWorker, self).check_for_suspension(burst))
        self._suspension_checked_at = now_s

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """RQ's, without its own round trip when no callback will run.

        RQ stamps the job's `last_heartbeat` here so that a long success or failure
        callback looks alive; with no callback, the stamp rides in the job's next save.
        """
        # By name: resolving a refused callback here would raise out of the worker loop.
        if job._success_callback_name or job._failure_callback_name:
            super().handle_execution_ended(job, queue, heartbeat_ttl)
            return
        job.ended_at = now()
        job.last_heartbeat = job.ended_at

    def run_maintenance_tasks(self) -> None:
        self._until_redis_answers(super().run_maintenance_tasks)

    def teardown(self) -> None:
        try:
            self.job_stats.flush()
            super().teardown()  # type: ignore[no-untyped-call]
        except Exception as exc:
            if not redis_down(exc):
                raise
            log.warning(
                "worker %s exits without Redis (%s); its registration expires by itself", self.name, exc
            )

    def _ping(self) -> None:
        """PING; on a cluster the `{rq}` slot's master (the one this worker needs), not every node."""
        _ = self.connection.exists(self.key) if is_cluster(self.connection) else self.connection.ping()

    def register_birth(self) -> None:
        """RQ's, waiting for Redis: a worker started during a failover comes up once it settled."""
        self._until_redis_answers(super().register_birth)

    def _until_redis_answers(self, step: Callable[[], None]) -> None:
        until_redis_answers(self, step)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.timeout and job.timeout > 0:
            remaining = max(1.0, job.timeout - working_time)
            return int(min(remaining, self.job_monitoring_interval)) + HEARTBEAT_GRACE_S
        return int(self.job_monitoring_interval) + HEARTBEAT_GRACE_S

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = rq_defaults.DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = rq_defaults.DEFAULT_LOGGING_FORMAT,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT,
    ) -> bool:
        """RQ's `work`, on our loop (`workers.loop`): claims for every free slot, then drains."""
        self.bootstrap(logging_level, date_format, log_format)
        self._dequeue_strategy = dequeue_strategy
        if with_scheduler:
            self._start_scheduler(burst, logging_level, date_format, log_format)
        self._install_signal_handlers()  # type: ignore[no-untyped-call]
        self._loop = WorkLoop(self)
        try:
            started = self._loop.run(burst=burst, max_jobs=max_jobs, max_idle_time=max_idle_time)
        finally:
            self._loop = None
            self.teardown()
        return bool(started)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """An in-process job on a slot thread (this call waits for it); the others in a horse."""
        if in_process(queue):
            self.start_in_slot(job, queue)
            if self._loop is None and self.slots is not None:  # called directly, not from the loop
                self.slots.drain()
                self._set_idle()
            return
        if self.slots is not None and self.slots.busy:
            # A fork copies the locks other threads hold (the import lock, a connection's)
            # without those threads: the horse would hang on the first one. Let the
            # running jobs end first; new ones start again while the horse runs.
            self.slots.drain()
        try:
            with logged_run(self.job_stats, job, queue, in_process=False):
                super().execute_job(job, queue)
                if self.slots is not None and self.slots.busy:
                    self.set_state(WorkerStatus.BUSY)  # RQ marked the worker idle after the horse
        except Exception as exc:
            if not redis_down(exc):
                raise
            self._lost_redis(job, exc)
        self._recycle_if_bloated()

    def start_in_slot(self, job: Job, queue: Queue) -> None:
        """Register the job's execution (started registry, worker index), then run it on a slot."""
        if self.slots is None:
            self.slots = Slots(
                get_settings().email_concurrency,
                perform=self._perform_in_slot,
                beat=self._beat_running,
                beat_interval_s=self.job_monitoring_interval,
                on_idle=self._idle_after_slots,
            )
        self.slots.start(job, queue, lambda: self.prepare_execution(job))

    def _perform_in_slot(self, job: Job, queue: Queue, execution: Execution) -> None:
        try:
            with logged_run(self.job_stats, job, queue, in_process=True):
                self.perform_job(job, queue, execution)
        except Exception as exc:
            if not redis_down(exc):
                raise
            self._lost_redis(job, exc)
        finally:
            with self._stop_lock:
                self._stopped_ids.discard(job.id)
        self._recycle_if_bloated()

    def _idle_after_slots(self) -> None:
        """The last slot job ended: idle (unless a horse runs), and the worker key's long TTL back."""
        if self._loop is not None and self.horse_pid <= 0:
            self._set_idle()

    def _set_idle(self) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            self.heartbeat(pipeline=pipe)
            pipe.execute()

    def _lost_redis(self, job: Job, exc: Exception) -> None:
        # The job's end could not be recorded; it stays in the started registry and the
        # maintenance loop retries it once its heartbeat lapses. Wait for Redis here.
        log.error("worker %s: lost Redis during job %s (%s); it will be recovered", self.name, job.id, exc)
        self._forget_executions(job.id)
        self._until_redis_answers(self._ping)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """RQ's, but only with a horse: for a job run in this process, RQ's `killpg(getpgid(0))`
        would kill this worker's own process group (a stop-job command, a cold shutdown)."""
        if self.horse_pid > 0:
            super().kill_horse(sig)

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's prepare_execution and prepare_job_execution, in one Lua call (workers.bookkeeping)."""
        execution = bookkeeping.start(self, job) or super().prepare_execution(job)
        log_started(job)
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's, with undecodable job data refused as a permanent failure with its reason.

        Nothing is written when `prepare_execution` already did it. RQ decodes the data
        first for the process title, so the refusal in the job's `perform` never sees a
        pickle or garbage payload.
        """
        try:
            if bookkeeping.take_started(job):
                self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[no-untyped-call]
                return
            # Always out of the intermediate list: our loop claims through it for several
            # queues too (RQ's BLPOP for several queues has none).
            super().prepare_job_execution(job, remove_from_intermediate_queue=True)
        except DeserializationError as exc:
            refusal = not_a_json_job(exc)
            if isinstance(job, KryonixJob):
                job.fail_permanently(refusal)
            raise refusal from None

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        """RQ's, in one Lua call while the job has no dependents (workers.bookkeeping)."""
        if not bookkeeping.finish_success(self, job, queue, execution):
            super().handle_job_success(job, queue, started_job_registry, execution)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent()
        super().main_work_horse(job, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        try:
            return bool(super().perform_job(job, queue, execution))
        finally:
            if self._is_horse:
                bookkeeping.record_outcome(job)
                # A work horse exits with os._exit: counters its job kept in memory
                # (cache hits, rate-limit decisions) are pushed now or never.
                flush_cache_stats()
                flush_ratelimit_stats()

    def _recycle_if_bloated(self) -> None:
        """Stop after this job when resident memory passed WORKER_MAX_RSS_MB; the supervisor restarts us."""
        if self.max_rss_bytes is None:
            return
        rss = rss_bytes()
        if rss is not None and rss > self.max_rss_bytes:
            log.warning("worker %s uses %d MiB > WORKER_MAX_RSS_MB MiB: recycling", self.name, rss >> 20)
            self._stop_requested = True
