"""What a worker with slots changes in RQ's: stop commands per running job, one heartbeat
for all, shutdown with jobs in flight, and claiming while a horse runs.

RQ's worker runs one job at a time: its stop-job command compares the job id with
"the" current job and kills "the" horse, and its failure handler reads one
`_stopped_job_id`. A worker running several jobs at once on slot threads needs each
of these per job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from rq.command import parse_payload
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import Worker

from workers.loop import HORSE_POLL_S, WorkLoop
from workers.slots import Running, Slots, working_time_s

log = logging.getLogger("kryonix.worker")


class SlotCommands(Worker):
    """RQ's `Worker` with per-job stop commands and a heartbeat for every running job."""

    slots: Slots | None
    _stopped_ids: set[str]  # running jobs a stop-job command stopped
    _stop_lock: threading.Lock  # RQ keeps one `_stopped_job_id` per worker
    _loop: WorkLoop | None  # while `work` runs

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
        return horse[0].job_id if horse and self.horse_pid > 0 else None

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
