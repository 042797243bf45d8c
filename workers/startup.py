"""Long-running processes wait for the PRIMARY Redis at start-up instead of exiting.

`rq worker` exits at once when Redis does not answer, and supervisord marks a program
FATAL after `startretries` quick exits (about a minute): a Redis outage during a
deploy or a host reboot would leave the workers down for good. `python -m workers
worker ...` waits here, then becomes `rq worker ...` (exec: same pid, signals go to RQ).
A refused password is a configuration error and is not waited out.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cache.connections import Role, ping
from cache.errors import RedisUnavailable

log = logging.getLogger("kryonix.startup")

FIRST_WAIT_S = 1.0
MAX_WAIT_S = 30.0


def wait_for_primary(
    check: Callable[[], object] = lambda: ping(Role.PRIMARY),
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Block until `check` (PING the PRIMARY) succeeds; returns how many attempts failed.

    Raises:
        RedisUnavailable: the server refused our credentials (REDIS_PASSWORD); waiting cannot help.
    """
    failures = 0
    wait_s = FIRST_WAIT_S
    while True:
        try:
            check()
        except RedisUnavailable as exc:
            if exc.setting == "REDIS_PASSWORD":
                raise
            failures += 1
            log.error("waiting for Redis before starting (%s); next try in %.0f s", exc, wait_s)
            sleep(wait_s)
            wait_s = min(wait_s * 2, MAX_WAIT_S)
            continue
        if failures:
            log.info("Redis answers after %d failed attempt(s); starting", failures)
        return failures


def rq_executable() -> str:
    """The `rq` script of this installation (next to the interpreter in a virtualenv)."""
    beside = Path(sys.executable).parent / "rq"
    found = str(beside) if beside.exists() else shutil.which("rq")
    if found is None:
        raise FileNotFoundError("the `rq` command is not installed next to this Python or on PATH")
    return found


def exec_rq_worker(arguments: Sequence[str]) -> None:
    """Replace this process with `rq worker <arguments>`; never returns."""
    executable = rq_executable()
    os.execv(executable, [executable, "worker", *arguments])  # noqa: S606 - a fixed argv, no shell
