"""KryonixWorker takes RQ's constructor arguments as RQ's Worker does, or refuses them.

The connection comes from the given Queue objects when `connection=` is absent; a job
class, queue class, serializer or heartbeat interval we cannot run with raises,
naming the argument, instead of being replaced without a word.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL, DEFAULT_SERIALIZER_CLASS
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer as RQJSONSerializer
from rq.serializers import PickleSerializer

from cache.errors import ConfigError
from jobs.queues import KryonixQueue, get_queue
from jobs.serialization import JSONSerializer
from workers.job import KryonixJob
from workers.worker import HEARTBEAT_INTERVAL_S, KryonixWorker


class _OurJob(KryonixJob):
    pass


class _OurQueue(KryonixQueue):
    pass


def test_worker_without_connection_uses_the_connection_of_its_queues(primary: redis.Redis) -> None:
    queue = get_queue(primary, name="email")

    worker = KryonixWorker([queue])

    assert worker.connection is primary
    assert worker.queues == [queue] and worker.queues[0].connection is primary
    assert KryonixWorker(queue).connection is primary  # a single queue, not in a list


def test_worker_rebuilds_a_queue_of_another_class_on_that_connection(primary: redis.Redis) -> None:
    worker = KryonixWorker([Queue("email", connection=primary)])

    [queue] = worker.queues
    assert type(queue) is KryonixQueue and queue.connection is primary
    assert queue.serializer is JSONSerializer


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("job_class", Job),
        ("job_class", "rq.job.Job"),
        ("queue_class", Queue),
        ("queue_class", "rq.Queue"),
        ("serializer", PickleSerializer),
        ("serializer", "pickle"),
        ("serializer", "rq.serializers.PickleSerializer"),
        ("job_monitoring_interval", HEARTBEAT_INTERVAL_S + 1),
        ("job_monitoring_interval", 0),
        ("job_monitoring_interval", "5"),
    ],
)
def test_an_argument_we_cannot_honour_is_refused_by_name(
    primary: redis.Redis, argument: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=rf"KryonixWorker\({argument}=.*refused"):
        KryonixWorker(["email"], connection=primary, **{argument: value})


@pytest.mark.parametrize(
    "serializer", [None, JSONSerializer, "jobs.serialization.JSONSerializer", "json", RQJSONSerializer, json]
)
def test_a_json_serializer_is_accepted_and_ours_is_used(primary: redis.Redis, serializer: Any) -> None:
    worker = KryonixWorker(["email"], connection=primary, serializer=serializer)

    assert worker.serializer is JSONSerializer
    assert worker.queues[0].serializer is JSONSerializer


def test_our_classes_and_their_subclasses_are_kept(primary: redis.Redis) -> None:
    worker = KryonixWorker(["email"], connection=primary, job_class=_OurJob, queue_class=_OurQueue)

    assert worker.job_class is _OurJob and worker.queue_class is _OurQueue
    assert type(worker.queues[0]) is _OurQueue and worker.queues[0].job_class is _OurJob
    by_name = KryonixWorker(
        ["email"],
        connection=primary,
        job_class="workers.job.KryonixJob",
        queue_class="jobs.queues.KryonixQueue",
    )
    assert by_name.job_class is KryonixJob and by_name.queue_class is KryonixQueue


def test_a_shorter_heartbeat_interval_is_honoured(primary: redis.Redis) -> None:
    assert (
        KryonixWorker(["email"], connection=primary, job_monitoring_interval=1).job_monitoring_interval == 1
    )
    assert KryonixWorker(["email"], connection=primary).job_monitoring_interval == HEARTBEAT_INTERVAL_S


def test_the_arguments_rq_worker_passes_by_default_are_accepted(primary: redis.Redis) -> None:
    """`rq worker` (README environment, no -S) passes RQ's defaults: they mean no choice."""
    queues = [
        KryonixQueue("email", connection=primary, job_class=KryonixJob, serializer=DEFAULT_SERIALIZER_CLASS)
    ]

    worker = KryonixWorker(
        queues,
        connection=primary,
        job_class=KryonixJob,
        queue_class=KryonixQueue,
        serializer=DEFAULT_SERIALIZER_CLASS,
        job_monitoring_interval=DEFAULT_JOB_MONITORING_INTERVAL,
    )

    assert worker.serializer is JSONSerializer
    assert worker.job_monitoring_interval == HEARTBEAT_INTERVAL_S


def test_a_worker_subclass_names_its_classes_as_class_attributes(primary: redis.Redis) -> None:
    class OurWorker(KryonixWorker):
        job_class = _OurJob
        queue_class = _OurQueue

    class PickleWorker(KryonixWorker):
        job_class = Job

    worker = OurWorker(["email"], connection=primary)

    assert worker.job_class is _OurJob and worker.queue_class is _OurQueue
    assert KryonixWorker.job_class is KryonixJob and KryonixWorker.queue_class is KryonixQueue
    with pytest.raises(ConfigError, match=r"KryonixWorker\(job_class='rq.job.Job'\) refused"):
        PickleWorker(["email"], connection=primary)


def test_kill_horse_without_a_horse_leaves_the_worker_and_its_process_group_alive(
    redis_env: dict[str, str],
) -> None:
    """An in-process (email) job has no horse: RQ's `killpg(getpgid(0))` would SIGKILL the worker's group."""
    import subprocess
    import sys

    code = (
        "import signal, redis\n"
        "from workers.worker import KryonixWorker\n"
        f"worker = KryonixWorker(['email'], connection=redis.Redis.from_url({redis_env['REDIS_URL']!r}))\n"
        "assert worker.horse_pid == 0\n"
        "worker.kill_horse()\n"
        "worker.kill_horse(signal.SIGTERM)\n"
        "print('alive')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, **redis_env},
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # its own group: the old behaviour kills only this child
    )
    assert (done.returncode, done.stdout.strip()) == (0, "alive"), done.stderr[-2000:]


@pytest.mark.security
@pytest.mark.parametrize("queue_name", ["email", "other"])  # claimed for a slot / for a horse
def test_jobs_of_a_given_queue_object_run_as_our_job_class_whatever_the_queue_carries(
    primary: redis.Redis, queue_name: str
) -> None:
    queue = KryonixQueue(queue_name, connection=primary)  # carries the enqueue side's JsonJob
    job = queue.enqueue("jobs.email.jobs.send_email", {})
    primary.hset(job.key, "data", json.dumps(["os.system", None, ["touch /tmp/kx-pwned"], {}]))
    KryonixWorker([queue]).work(burst=True)
    failed = Job.fetch(job.id, connection=primary, serializer=JSONSerializer)
    assert failed.get_status(refresh=True).value == "failed"
    result = failed.latest_result()
    assert result is not None and "JobNotAllowed" in str(result.exc_string), "refused by the allow-list"
