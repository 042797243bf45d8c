"""The dashboard as production runs it (`python -m workers dashboard`, waitress), and hostile jobs.

Hostile jobs are written with RQ's own API but a pickle serializer of the test's own,
as someone with Redis write access would: nothing here goes through our enqueue
validation. Each pickle is a canary whose `__reduce__` creates a marker directory,
so "the dashboard unpickled it" is a file on disk, not a guess.
"""

from __future__ import annotations

import http.client
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.worker import Worker

from tests.integration.processes import Processes
from workers.dev.servers import free_port, wait_for_port

QUEUE = "email"
REGISTRIES = ("queued", "failed", "deferred", "started", "finished", "scheduled", "canceled")
XSS = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">"


class Canary:
    """Unpickling this creates `marker`: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


class PickleSerializer:
    """RQ's pickle default, spelled out so nothing in this process depends on RQ's globals."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class Dashboard:
    """HTTP to the dashboard process; every POST is same-origin unless told otherwise."""

    port: int
    process: Any = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            for name, value in sent.items():
                conn.putheader(name, value)
            if method == "POST":
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if method == "POST" else None)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, headers)

    def post(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        """A POST as the dashboard's own page sends it (jQuery `$.post`)."""
        sent = {
            "Origin": self.origin,
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            **(headers or {}),
        }
        # An empty value leaves that header out (an empty Host is sent as such).
        return self.request("POST", path, {k: v for k, v in sent.items() if v or k == "Host"})


@pytest.fixture
def start_dashboard(processes: Processes) -> Callable[..., Dashboard]:
    """`start_dashboard(**env)`: `python -m workers dashboard` on a free port, ready."""

    def start(**env: str) -> Dashboard:
        port = free_port()
        process = processes.start(
            sys.executable, "-m", "workers", "dashboard", name="dashboard", DASHBOARD_PORT=str(port), **env
        )
        wait_for_port(port, 30)
        return Dashboard(port, process)

    return start


@pytest.fixture
def dashboard(start_dashboard: Callable[..., Dashboard]) -> Dashboard:
    return start_dashboard()


@dataclass
class HostileJobs:
    """Jobs whose meta, data and result are pickle canaries, in every place the dashboard reads."""

    markers: list[Path] = field(default_factory=list)
    queued: str = ""
    failed: str = ""
    failed_too: str = ""
    finished: str = ""
    started: str = ""
    deferred: str = ""

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.queued, self.failed, self.failed_too, self.finished, self.started, self.deferred)

    def unpickled(self) -> list[str]:
        return [marker.name for marker in self.markers if marker.exists()]


def _canary(jobs: HostileJobs, tmp_path: Path, name: str) -> Canary:
    marker = tmp_path / f"unpickled-{name}"
    jobs.markers.append(marker)
    return Canary(marker)


def _job(client: redis.Redis, jobs: HostileJobs, tmp_path: Path, name: str, **extra: Any) -> Job:
    job = Job.create(
        "jobs.diagnostics.noop",
        args=(_canary(jobs, tmp_path, f"{name}-data"),),
        meta={"canary": _canary(jobs, tmp_path, f"{name}-meta")},
        connection=client,
        serializer=PickleSerializer,
        origin=QUEUE,
        id=f"hostile-{name}",
        description=f"hostile {name}",
        **extra,
    )
    job.save()
    # The legacy `result` field of the hash, read by rq 3's Job.restore with the serializer.
    client.hset(job.key, "result", pickle.dumps(_canary(jobs, tmp_path, f"{name}-legacy-result")))
    return job


@pytest.fixture
def hostile_jobs(primary: redis.Redis, tmp_path: Path) -> Iterator[HostileJobs]:
    """One pickle-laden job per place: queued, failed, finished, started (on a worker), deferred."""
    jobs = HostileJobs()
    queue = Queue(QUEUE, connection=primary, serializer=PickleSerializer)

    queued = _job(primary, jobs, tmp_path, "queued")
    queue.enqueue_job(queued)
    jobs.queued = queued.id

    for name in ("failed", "failed_too"):
        failed = _job(primary, jobs, tmp_path, name)
        FailedJobRegistry(QUEUE, connection=primary, serializer=PickleSerializer).add(failed, ttl=3600)
        Result.create_failure(failed, ttl=3600, exc_string="Traceback: boom")
        failed.set_status("failed")
        setattr(jobs, name, failed.id)

    finished = _job(primary, jobs, tmp_path, "finished")
    Result.create(
        finished, Result.Type.SUCCESSFUL, ttl=3600, return_value=_canary(jobs, tmp_path, "finished-result")
    )
    FinishedJobRegistry(QUEUE, connection=primary, serializer=PickleSerializer).add(finished, ttl=3600)
    finished.set_status("finished")
    jobs.finished = finished.id

    started = _job(primary, jobs, tmp_path, "started")
    worker = Worker([queue], connection=primary, name="hostile-worker", serializer=PickleSerializer)
    worker.register_birth()
    worker.prepare_execution(started)
    started.set_status("started")
    jobs.started = started.id

    deferred = _job(primary, jobs, tmp_path, "deferred", depends_on=[queued.id])
    queue.enqueue_job(deferred)  # registers the dependency and parks it as deferred
    jobs.deferred = deferred.id

    # Our canaries work: setting up (RQ fetching the deferred job's parent here, with our
    # pickle serializer) fired some. Clear them: from now on only the dashboard could.
    assert jobs.unpickled(), "the canaries never fire: the test would prove nothing"
    for marker in jobs.markers:
        if marker.exists():
            marker.rmdir()
    yield jobs
