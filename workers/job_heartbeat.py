"""The heartbeat of a job that runs inside the worker process (email), on its own thread."""

from __future__ import annotations

import logging
import threading
import time

from rq.executions import Execution
from rq.job import Job
from rq.worker import Worker

log = logging.getLogger("kryonix.worker")


class InProcessHeartbeat:
    """One thread per worker keeping the running in-process job's heartbeat fresh.

    A forked horse is watched by RQ's own monitoring loop; an in-process job blocks the
    worker's only loop, so without this its heartbeat would lapse and the maintenance
    loop would retry a job that is still running.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._current: tuple[Job, Execution] | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="job-heartbeat", daemon=True).start()

    def watch(self, job: Job | None, execution: Execution | None) -> None:
        with self._lock:  # once this returns, no beat for the previous job is in flight
            self._current = (job, execution) if job is not None and execution is not None else None

    def _run(self) -> None:
        while True:
            time.sleep(self.worker.job_monitoring_interval)
            with self._lock:
                if self._current is None:
                    continue
                job, execution = self._current
                try:
                    self.worker.maintain_heartbeats(job, execution)
                except Exception:  # a missed beat is survivable; a dead heartbeat thread is not
                    log.exception("heartbeat for job %s failed", job.id)
