"""conftest.py for RQ's test suite: our classes in, the private server only.

Copied next to RQ's `tests/` by the runner, so it loads before RQ's test modules
import `Queue`, `Worker` and `Job`; they bind our classes. RQ's own modules get theirs
back once collection is done, so RQ's internals run as shipped.

- Every Redis connection to port 6379 (RQ's tests assume a server there) goes to the
  runner's private server, KX_RQ_REDIS_PORT: the machine's Redis is never touched.
- The allow-list admits RQ's `tests.` package instead of `jobs.`: RQ's fixtures are
  the functions its tests run. What the allow-list still refuses (builtins, methods,
  lambdas) is listed in expected.py.
- Tests named in KX_RQ_EXPECTED (expected.py as JSON) are strict xfails, or deselected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis.connection
import rq
import rq.job
import rq.queue
import rq.worker

import jobs.allowlist
from jobs.queues import KryonixQueue
from workers.job import KryonixJob
from workers.worker import KryonixWorker

RQ_DEFAULT_PORT = 6379
PRIVATE_PORT = int(os.environ["KX_RQ_REDIS_PORT"])
EXPECTED: dict[str, dict[str, str]] = json.loads(Path(os.environ["KX_RQ_EXPECTED"]).read_text())

_connection_init = redis.connection.Connection.__init__


def _private_server(self: Any, *args: Any, **kwargs: Any) -> None:
    if int(kwargs.get("port", RQ_DEFAULT_PORT)) == RQ_DEFAULT_PORT:
        kwargs["port"] = PRIVATE_PORT
    _connection_init(self, *args, **kwargs)


redis.connection.Connection.__init__ = _private_server  # type: ignore[method-assign]
jobs.allowlist.ALLOWED_PACKAGE = "tests"

_SUBSTITUTES = [
    (rq, "Queue", KryonixQueue),
    (rq.queue, "Queue", KryonixQueue),
    (rq, "Worker", KryonixWorker),
    (rq.worker, "Worker", KryonixWorker),
    (rq.job, "Job", KryonixJob),
]
_ORIGINALS = [(module, name, getattr(module, name)) for module, name, _ in _SUBSTITUTES]
for _module, _name, _ours in _SUBSTITUTES:
    setattr(_module, _name, _ours)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = set(EXPECTED["failures"]) | set(EXPECTED["deselected"])
    missing = listed - {item.nodeid for item in items}
    if missing and not config.option.keyword:
        raise pytest.UsageError(f"expected.py names tests RQ's suite does not have: {sorted(missing)}")
    kept, deselected = [], []
    for item in items:
        if item.nodeid in EXPECTED["deselected"]:
            deselected.append(item)
            continue
        reason = EXPECTED["failures"].get(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    for module, name, original in _ORIGINALS:
        setattr(module, name, original)
