"""This process's SMTP runtime: one event loop on its own thread and its connection pool.

Every email job of a worker process hands its SMTP transactions to this loop, so
concurrent jobs share one pool and its bound (`jobs.email.smtp` talks SMTP; this module
only owns the loop's lifetime: rebuilt after fork or a settings change, closed at exit).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from jobs import interrupts
from jobs.email.smtp import SmtpPool, SmtpSettings

T = TypeVar("T")


class SmtpRuntime:
    """One event loop per process, on its own thread, and its pool of SMTP connections.

    Every job of the process hands its SMTP transactions to this loop, from whichever
    thread it runs on, so concurrent jobs share the pool and its bound. `run` waits
    through `jobs.interrupts.wait`: a job's timeout or stop cancels its transaction.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.pool = SmtpPool(settings, max_idle=settings.max_connections, max_open=settings.max_connections)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smtp-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return interrupts.wait(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def close(self, timeout_s: float = 2.0) -> None:
        """QUIT the idle connections and stop the loop; never waits longer than `timeout_s`."""
        if self._loop.is_closed():
            return
        closing = asyncio.run_coroutine_threadsafe(self.pool.close(), self._loop)
        with contextlib.suppress(Exception):
            closing.result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()


_runtime: SmtpRuntime | None = None
_runtime_pid = 0


def process_runtime(settings: SmtpSettings | None = None) -> SmtpRuntime:
    """This process's runtime; rebuilt after fork or when the settings changed."""
    global _runtime, _runtime_pid
    if _runtime is not None and _runtime.settings is settings and _runtime_pid == os.getpid():
        return _runtime
    wanted = settings or SmtpSettings.from_settings()
    if _runtime is not None and (_runtime_pid != os.getpid() or _runtime.settings != wanted):
        if _runtime_pid == os.getpid():
            _runtime.close()
        _runtime = None
    if _runtime is None:
        _runtime = SmtpRuntime(wanted)
        _runtime_pid = os.getpid()
    return _runtime


def reset_process_runtime() -> None:
    """Close this process's SMTP connections and loop (tests; clean exit)."""
    global _runtime
    if _runtime is not None and _runtime_pid == os.getpid():
        _runtime.close()
    _runtime = None


atexit.register(reset_process_runtime)
