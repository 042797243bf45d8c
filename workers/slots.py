"""Up to N in-process jobs at once in one worker process, each on its own thread.

Email jobs wait on SMTP servers for most of their run; the worker starts each claimed
job on a thread of its own (a slot) and the job hands its SMTP transaction to the
process's event loop (`jobs.email.runtime.SmtpRuntime`), so one process keeps many
transactions in flight. Every running job is an ordinary started RQ job: its own
execution record, its entry in the started registry and in the worker's execution
index, all beaten together by one heartbeat thread in one round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import UnixSignalDeathPenalty
from rq.utils import now

from jobs import interrupts
from jobs.interrupts import Interrupts
from workers.loop import redis_down

log = logging.getLogger("kryonix.worker")


class ThreadAwareDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM timeout in the main thread (a work horse, the horse monitor); on a
    slot thread, the job's deadline, which its waits honour (`jobs.interrupts.wait`)."""

    def setup_death_penalty(self) -> None:
        slot = interrupts.current()
        if slot is None:
            super().setup_death_penalty()  # type: ignore[no-untyped-call]
        else:
            slot.arm(float(self._timeout))

    def cancel_death_penalty(self) -> None:
        slot = interrupts.current()
        if slot is None:
            super().cancel_death_penalty()  # type: ignore[no-untyped-call]
        else:
            slot.disarm()


@dataclass(eq=False)
class Running:
    job: Job
    queue: Queue
    execution: Execution
    interrupts: Interrupts = field(default_factory=Interrupts)


Perform = Callable[[Job, Queue, Execution], None]
Beat = Callable[[list[Running]], None]


class Slots:
    """The jobs running on slot threads; `start` never blocks, `wait_for_free` does."""

    def __init__(
        self,
        size: int,
        *,
        perform: Perform,
        beat: Beat,
        beat_interval_s: float,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.size = size
        self._perform = perform
        self._beat = beat
        self._on_idle = on_idle
        self._beat_interval_s = beat_interval_s
        self._running: dict[str, Running] = {}  # job id -> its run
        self._changed = threading.Condition()
        threading.Thread(target=self._beat_forever, name="job-heartbeats", daemon=True).start()

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def free(self) -> int:
        return max(0, self.size - len(self._running))

    def running(self) -> list[Running]:
        with self._changed:
            return list(self._running.values())

    def start(self, job: Job, queue: Queue, prepare: Callable[[], Execution]) -> None:
        """Run `job` on a slot; `prepare` registers its execution (the worker turns busy).

        `prepare` and the last job's `on_idle` run under one lock, so the worker's state
        written last is the true one.
        """
        with self._changed:
            run = Running(job, queue, prepare())
            self._running[job.id] = run
        threading.Thread(target=self._run, args=(run,), name=f"job-{job.id}", daemon=True).start()

    def _run(self, run: Running) -> None:
        interrupts.install(run.interrupts)
        try:
            self._perform(run.job, run.queue, run.execution)
        except BaseException:  # perform_job handles the job's own errors; this is ours
            log.exception("slot for job %s ended with an error", run.job.id)
        finally:
            interrupts.install(None)
            with self._changed:
                self._running.pop(run.job.id, None)
                if not self._running:
                    self._idle_quietly()
                self._changed.notify_all()

    def _idle_quietly(self) -> None:
        try:
            self._on_idle()
        except Exception as exc:  # e.g. Redis away: the next job's start writes the state again
            log.warning("could not mark the worker idle: %s", exc)

    def wait_for_free(self, timeout_s: float) -> bool:
        """Wait until a slot is free (True) or `timeout_s` passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._running) < self.size, timeout_s)

    def wait_for_change(self, timeout_s: float) -> None:
        """Wait until a running job ends, at most `timeout_s`."""
        with self._changed:
            if self._running:
                self._changed.wait(timeout_s)

    def drain(self) -> None:
        """Wait for every running job to end (each is bounded by its own timeout)."""
        with self._changed:
            while self._running:
                self._changed.wait(1.0)

    def stop(self, job_id: str | None = None, *, execution_id: str | None = None) -> Running | None:
        """Ask the running job (by job or execution id) to stop at its next wait."""
        with self._changed:
            run = self._running.get(job_id or "")
            if run is None and execution_id is not None:
                run = next((r for r in self._running.values() if r.execution.id == execution_id), None)
        if run is not None:
            run.interrupts.request_stop()
        return run

    def _beat_forever(self) -> None:
        while True:
            time.sleep(self._beat_interval_s)
            running = self.running()
            if not running:
                continue
            try:
                self._beat(running)
            except Exception as exc:  # a missed beat is survivable; a dead heartbeat thread is not
                if not redis_down(exc):
                    log.exception("heartbeat for %d running job(s) failed", len(running))
                else:  # a failover: the job keys' TTL (a beat interval plus a grace) outlasts it
                    log.warning("heartbeat for %d running job(s) missed: Redis away (%s)", len(running), exc)


def working_time_s(job: Job) -> float:
    return (now() - job.started_at).total_seconds() if job.started_at else 0.0
