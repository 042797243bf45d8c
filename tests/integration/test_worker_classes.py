"""Workers run the safe classes whatever the environment says (marker `security`).

`python -m workers worker` sets the worker, job and queue classes and RQ_REDIS_URL
itself, refuses another class, and `status` names any worker of another class serving
our queues.
"""

from __future__ import annotations

import json
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.enqueue import enqueue, fetch_job
from tests.integration.poison import Listener, PickleCanary, job_hash, push
from tests.integration.processes import Processes, log_of, rq_bin
from tests.waiting import wait_until
from workers.cli.failed import list_failed

pytestmark = pytest.mark.security


@pytest.fixture
def bare(redis_env: dict[str, str], processes: Processes, tmp_path: Path) -> Iterator[Processes]:
    """Processes started with REDIS_URL only: no RQ_* variable at all."""
    env = {k: v for k, v in processes.env.items() if not k.startswith("RQ_")}
    procs = Processes(env, tmp_path)
    yield procs
    procs.stop_all()


def _python_worker(procs: Processes, *args: str, **env: str) -> object:
    return procs.start(sys.executable, "-m", "workers", "worker", *args, name="worker", **env)


@pytest.mark.timeout(120)
def test_python_worker_without_rq_environment_never_unpickles_and_uses_redis_url(
    primary: redis.Redis, bare: Processes, tmp_path: Path
) -> None:
    canary = tmp_path / "unpickled"
    job_id = f"pickle-{uuid.uuid4().hex}"
    payload = pickle.dumps(("jobs.diagnostics.noop", None, [PickleCanary(canary)], {}))
    job_hash(primary, job_id, "email", data=payload)
    push(primary, "email", job_id.encode())
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")

    worker = _python_worker(bare, "email", "--burst")
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined, arg-type]

    assert not canary.exists(), "the worker unpickled a job"
    # Both jobs were taken from REDIS_URL's server: RQ_REDIS_URL fell back to it.
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]
    [row] = list_failed(primary, queue="email")
    assert (row.id, row.kind) == (job_id, "permanent")
    assert "not a JSON job" in row.reason


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), {"RQ_WORKER_CLASS": "rq.worker.SimpleWorker"}, "RQ_WORKER_CLASS"),
        ((), {"RQ_JOB_CLASS": "rq.job.Job"}, "RQ_JOB_CLASS"),
        ((), {"RQ_QUEUE_CLASS": "rq.Queue"}, "RQ_QUEUE_CLASS"),
        (("-w", "rq.worker.SimpleWorker"), {}, "-w"),
        (("--worker-class=rq.Worker",), {}, "--worker-class"),
        (("-wrq.Worker",), {}, "-w"),
        (("--job-class", "rq.job.Job"), {}, "--job-class"),
        (("--queue-class", "rq.Queue"), {}, "--queue-class"),
        (("-S", "pickle"), {}, "--serializer"),
        (("--serializer", "rq.serializers.DefaultSerializer"), {}, "--serializer"),
        ((), {"WORKER_MAX_RSS_MB": "abc"}, "WORKER_MAX_RSS_MB"),
        ((), {"WORKER_MAX_RSS_MB": "-5"}, "WORKER_MAX_RSS_MB"),
    ],
)
def test_python_worker_refuses_another_class_or_a_bad_setting_clearly(
    primary: redis.Redis, bare: Processes, args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    worker = _python_worker(bare, "email", "--burst", *args, **env)
    assert worker.wait(60) != 0  # type: ignore[attr-defined]
    output = log_of(worker)  # type: ignore[arg-type]
    assert named in output, output
    assert "Traceback" not in output, output
    assert primary.smembers("rq:workers") == set(), "a worker registered anyway"


@pytest.mark.timeout(120)
def test_status_names_a_worker_of_another_class_on_our_queues(
    primary: redis.Redis, processes: Processes
) -> None:
    ours = processes.start(sys.executable, "-m", "workers", "worker", "email", name="ours")
    plain = processes.start(rq_bin(), "worker", "report", name="plain", RQ_WORKER_CLASS="rq.Worker")

    def registered() -> bool:
        return len(primary.smembers("rq:workers")) == 2

    wait_until(registered, 60, "both workers registered")
    result = processes.cli("status", "--json")
    assert result.returncode == 1, "an unsafe worker makes status unhealthy"
    section = json.loads(result.stdout)["queues"]
    [unsafe] = section["unsafe_workers"]
    by_name = {w["name"]: w for w in section["workers"]}
    assert by_name[unsafe]["queues"] == ["report"] and by_name[unsafe]["pid"] == plain.pid
    [safe] = [w for w in section["workers"] if w["name"] != unsafe]
    assert safe["class"] == "workers.worker.KryonixWorker" and safe["pid"] == ours.pid
    text = processes.cli("status").stdout
    assert f"WARNING: worker {unsafe} is not a KryonixWorker" in text


@pytest.mark.timeout(120)
def test_webhooks_run_only_when_allowed(
    primary: redis.Redis, processes: Processes, webhook_listener: Listener
) -> None:
    """ALLOW_JOB_WEBHOOKS=true restores RQ's webhooks; the default (off) is tested with the poisons."""
    job_id = f"hook-{uuid.uuid4().hex}"
    hook = [{"url": webhook_listener.url, "job_status": "finished", "method": "POST"}]
    job_hash(primary, job_id, "email", webhooks=json.dumps(hook))
    push(primary, "email", job_id.encode())
    worker = _python_worker(processes, "email", "--burst", ALLOW_JOB_WEBHOOKS="true")
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined, arg-type]
    assert fetch_job(job_id=job_id).get_status().value == "finished"  # type: ignore[union-attr]
    assert webhook_listener.received == ["POST /hook"]
