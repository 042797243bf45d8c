"""What a worker with slots changes in RQ's: stop commands per running job, one heartbeat
for all, shutdown with jobs in flight, and claiming while a horse runs.

RQ's worker runs one job at a time: its stop-job command compares the job id with
"the" current job and kills "the" horse, and its failure handler reads one
`_stopped_job_id`. A worker running several jobs at once on slot threads needs each
of these per job.

On a Redis Cluster the command channel is ours too (`CommandChannel`): RQ's pub/sub
thread reconnects to the node it first subscribed on, which after a failover is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from rq.command import parse_payload
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import Worker

from jobs.rq_cluster import is_cluster
from workers.loop import HORSE_POLL_S, WorkLoop, redis_down
from workers.slots import Running, Slots, working_time_s

log = logging.getLogger("kryonix.worker")

CHANNEL_POLL_S = 1.0  # how soon the command thread notices a stop request
CHANNEL_RETRY_MAX_S = 10.0  # the longest pause between two subscription attempts


class CommandChannel:
    """A worker's command channel on a Redis Cluster, subscribed again after its node is lost.

    redis-py's PubSub reconnects to the node it chose first; after a failover that node
    is gone, so RQ's thread would retry it forever while commands are published to the
    live nodes (classic PUBLISH reaches every node of a cluster). This thread reads a
    fresh slot map and subscribes anew, on the channel's slot owner, each time its
    connection fails. Commands published while it had no subscription are lost, as
    with RQ on one server: pub/sub keeps nothing.
    """

    def __init__(
        self, client: Any, channel: str, handler: Callable[[Any], None], *, worker_name: str
    ) -> None:
        self._client = client
        self._channel = channel
        self._handler = handler
        self._worker_name = worker_name
        self._stop = threading.Event()
        self.subscriptions = 0  # how often it subscribed: more than once after a lost node
        self._thread = threading.Thread(target=self._run, name="command-channel", daemon=True)

    def start(self) -> CommandChannel:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2 * CHANNEL_POLL_S) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        wait_s = 1.0
        while not self._stop.is_set():
            pubsub = None
            try:
                self._client.nodes_manager.initialize()  # thread-safe in redis-py 8.1
                pubsub = self._client.pubsub()
                pubsub.subscribe(**{self._channel: self._handle})
                pubsub.get_message(timeout=CHANNEL_POLL_S)  # the confirmation: subscribed now
                self.subscriptions += 1
                if self.subscriptions > 1:
                    log.info("worker %s: command channel subscribed again", self._worker_name)
                wait_s = 1.0
                while not self._stop.is_set():
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=CHANNEL_POLL_S)
            except Exception as exc:  # the channel must outlive any error; Redis away is the usual one
                level = logging.WARNING if redis_down(exc) else logging.ERROR
                log.log(
                    level,
                    "worker %s: command channel lost (%s); again in %.0f s",
                    self._worker_name,
                    exc,
                    wait_s,
                )
                self._stop.wait(wait_s)
                wait_s = min(wait_s * 2, CHANNEL_RETRY_MAX_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # its socket may be gone already
                        pubsub.close()

    def _handle(self, message: Any) -> None:
        try:
            self._handler(message)
        except Exception:  # a bad command must not cost the subscription
            log.exception("worker %s: command %r failed", self._worker_name, message.get("data"))


class SlotCommands(Worker):
    """RQ's `Worker` with per-job stop commands and a heartbeat for every running job."""

    slots: Slots | None
    _stopped_ids: set[str]  # running jobs a stop-job command stopped
    _stop_lock: threading.Lock  # RQ keeps one `_stopped_job_id` per worker
    _loop: WorkLoop | None  # while `work` runs
    _command_channel: CommandChannel | None = None  # on a cluster, from `subscribe`

    def subscribe(self) -> None:
        """RQ's command channel; on a cluster ours, which follows a failover (`CommandChannel`)."""
        if not is_cluster(self.connection):
            super().subscribe()  # type: ignore[no-untyped-call]
            return
        log.info("worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self._command_channel = CommandChannel(
            self.connection, self.pubsub_channel_name, self.handle_payload, worker_name=self.name
        ).start()

    def unsubscribe(self) -> None:
        channel, self._command_channel = self._command_channel, None
        if channel is None:
            super().unsubscribe()  # type: ignore[no-untyped-call]
        else:
            channel.stop()

    def _beat_running(self, runs: list[Running]) -> None:
        """RQ's `maintain_heartbeats` for every running job at once, in one round trip."""
        worker_ttl = int(self.job_monitoring_interval) + 60
        with self.connection.pipeline(transaction=False) as pipe:
            self.heartbeat(worker_ttl, pipeline=pipe)
            job_beats = []
            for run in runs:
                ttl = self.get_heartbeat_ttl(run.job, working_time_s(run.job))
                run.execution.heartbeat(run.job.started_job_registry, ttl, pipeline=pipe)
                job_beats.append((run.job, len(pipe)))
                run.job.heartbeat(now(), ttl, pipeline=pipe, xx=True)
            results = pipe.execute()
            for job, index in job_beats:
                if results[index] == 1:  # the job was deleted meanwhile (result_ttl=0): RQ's rq#1450
                    pipe.delete(job.key)
            if results[0] == 1:  # the worker hash had expired: write it whole again
                pipe.hset(self.key, mapping=self.serialize())
                pipe.expire(self.key, worker_ttl)
            if len(pipe):
                pipe.execute()

    def handle_payload(self, message: Any) -> None:
        """RQ's commands; a stop-job for a job on a slot stops that job alone."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job" and self._stop_slot(payload.get("job_id")):
            return
        if payload.get("command") == "stop-job" and payload.get("job_id") == self._horse_job_id():
            self._stopped_job_id = payload["job_id"]
            self.kill_horse()
            return
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    def request_stop_execution(self, execution_id: str) -> None:
        run = self.slots.stop(execution_id=execution_id) if self.slots is not None else None
        if run is None:
            super().request_stop_execution(execution_id)
        else:
            with self._stop_lock:
                self._stopped_ids.add(run.job.id)

    def _stop_slot(self, job_id: Any) -> bool:
        if self.slots is None or not isinstance(job_id, str):
            return False
        with self._stop_lock:
            run = self.slots.stop(job_id)
            if run is not None:
                self._stopped_ids.add(job_id)
        if run is not None:
            log.info("worker %s: stopping job %s on request", self.name, job_id)
        return run is not None

    def _horse_job_id(self) -> str | None:
        running = {run.execution.id for run in self.slots.running()} if self.slots is not None else set()
        horse = [e for e in list(self.executions.values()) if e.id not in running]
        # The newest: an older entry is one whose end a lost Redis kept from being recorded.
        return max(horse, key=lambda e: e.created_at).job_id if horse and self.horse_pid > 0 else None

    def _forget_executions(self, job_id: str) -> None:
        """Drop `job_id`'s executions kept in memory when its end could not be recorded."""
        for key, execution in list(self.executions.items()):
            if execution.job_id == job_id:
                self.executions.pop(key, None)

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """RQ's, telling a stopped slot job (STOPPED, no retry) from a failed one."""
        if job.id not in self._stopped_ids:
            super().handle_job_failure(job, queue, *args, **kwargs)
            return
        with self._stop_lock:  # RQ reads and clears the one `_stopped_job_id`
            self._stopped_job_id = job.id
            try:
                super().handle_job_failure(job, queue, *args, **kwargs)
            finally:
                self._stopped_job_id = None
                self._stopped_ids.discard(job.id)

    def _shutdown(self) -> None:
        """First SIGTERM/SIGINT: claim nothing more, let every running job end, then exit."""
        if self._loop is None:
            super()._shutdown()  # type: ignore[no-untyped-call]
            return
        self._stop_requested = True
        self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]
        if self._loop.blocking:  # idle in BLMOVE: a claimed id would stay in the intermediate list
            raise StopRequested()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Second signal: exit now; maintenance recovers the jobs left running."""
        if self.slots is not None and self.slots.busy:
            log.warning(
                "worker %s: cold shutdown with %d job(s) running; crash recovery runs them again",
                self.name,
                self.slots.busy,
            )
        super().request_force_stop(signum, frame)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """RQ's wait, but a worker with slots keeps claiming in-process jobs meanwhile."""
        if self.slots is None or self._loop is None:
            return super().wait_for_horse()
        while True:
            try:
                pid, status, rusage = os.wait4(self.horse_pid, os.WNOHANG)
            except ChildProcessError:
                return None, None, None
            if pid:
                return pid, status, rusage
            self._loop.feed_slots_while_waiting()
            time.sleep(HORSE_POLL_S)
