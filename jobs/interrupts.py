"""The deadline and stop request of the job running on this thread.

A job in a forked work horse is bounded by SIGALRM and stopped by killing the horse.
Jobs that run side by side on threads of one worker process (email) can be neither:
a signal reaches only the main thread, and killing would take every job down. So the
worker gives each such job an `Interrupts` for its thread, and the job's waits (an SMTP
transaction on the process's event loop) go through `wait`, which gives up at the
job's deadline or when a stop was requested, cancelling what it waited for.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import TypeVar

from rq.timeouts import JobTimeoutException

from jobs.errors import JobError

T = TypeVar("T")

_local = threading.local()


class JobStopped(JobError):
    """RQ's stop-job command stopped this job; it ends as `stopped`, with no retry."""


@dataclass
class Interrupts:
    """What may end the wait of one job: its deadline (monotonic) and a stop request."""

    timeout_s: float | None = None
    deadline: float | None = None
    stop_requested: bool = False
    wake: threading.Event = field(default_factory=threading.Event)

    def arm(self, timeout_s: float) -> None:
        """Start the job's clock; `timeout_s <= 0` (RQ's "no timeout") arms nothing."""
        self.timeout_s = timeout_s if timeout_s > 0 else None
        self.deadline = time.monotonic() + timeout_s if timeout_s > 0 else None

    def disarm(self) -> None:
        self.timeout_s = self.deadline = None

    def request_stop(self) -> None:
        """Called from another thread (the worker's command listener)."""
        self.stop_requested = True
        self.wake.set()


def install(interrupts: Interrupts | None) -> None:
    """Make `interrupts` those of the job on this thread (None: a thread without one)."""
    _local.interrupts = interrupts


def current() -> Interrupts | None:
    interrupts: Interrupts | None = getattr(_local, "interrupts", None)
    return interrupts


def wait(future: concurrent.futures.Future[T]) -> T:
    """`future.result()`, given up (and `future` cancelled) at this job's deadline or stop.

    Raises:
        JobTimeoutException: the job's timeout passed first (RQ's own exception and text).
        JobStopped: a stop was requested first.
    """
    interrupts = current()
    if interrupts is None:
        return future.result()
    wake = interrupts.wake
    future.add_done_callback(lambda _: wake.set())
    while not future.done():
        if interrupts.stop_requested:
            future.cancel()
            raise JobStopped("stopped by a stop-job command")
        remaining = None if interrupts.deadline is None else interrupts.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            future.cancel()
            raise JobTimeoutException(
                f"Task exceeded maximum timeout value ({interrupts.timeout_s:g} seconds)"
            )
        wake.wait(remaining)
        wake.clear()  # the loop re-checks everything that may have set it
    return future.result()
