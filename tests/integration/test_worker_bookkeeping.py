"""A job's start and success, written in one Lua call each, leave Redis exactly as RQ's
own transactions do: same keys, types, TTLs, fields, members and results (marker `queues`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq.utils import now

from jobs import queues
from jobs.enqueue import enqueue
from jobs.queues import KryonixQueue
from workers import bookkeeping
from workers.job import KryonixJob
from workers.worker import KryonixWorker

pytestmark = pytest.mark.queues

# Fields holding a moment (or a duration): they differ between any two runs.
MOMENTS = {
    "last_heartbeat", "started_at", "ended_at", "created_at", "enqueued_at", "birth",
    "total_working_time", "execution_started_at", "execution_ended_at", "ip_address",
    "retry_intervals",  # drawn with jitter
}  # fmt: skip
HEX_ID = re.compile(rb"[0-9a-f]{32}")


def _text(value: bytes, names: dict[bytes, bytes]) -> bytes:
    for real, alias in names.items():
        value = value.replace(real, alias)
    return HEX_ID.sub(b"<execution>", value)


def snapshot(client: redis.Redis, names: dict[bytes, bytes]) -> dict[bytes, Any]:
    """Every key, with ids renamed, moments masked, TTLs and scores relative to now (to 5 s)."""
    state: dict[bytes, Any] = {}
    moment = now().timestamp()
    for key in client.keys("*"):
        kind, ttl = client.type(key), client.ttl(key)
        if kind == b"hash":
            value: Any = {
                f: b"<moment>" if f.decode() in MOMENTS else _text(v, names)
                for f, v in client.hgetall(key).items()
            }
        elif kind == b"zset":
            value = {
                _text(m, names): round((s - moment) / 5) if s < 1e12 else s
                for m, s in client.zrange(key, 0, -1, withscores=True)
            }
        elif kind == b"set":
            value = sorted(_text(m, names) for m in client.smembers(key))
        elif kind == b"list":
            value = [_text(m, names) for m in client.lrange(key, 0, -1)]
        elif kind == b"stream":
            value = [
                {f: b"<moment>" if f.decode() in MOMENTS else _text(v, names) for f, v in fields.items()}
                for _id, fields in client.xrange(key)
            ]
        else:
            value = client.dump(key)
        state[_text(key, names)] = (kind, -1 if ttl < 0 else round(ttl / 5), value)
    return state


def _run(client: redis.Redis, *, batched: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict[bytes, Any]]:
    client.flushdb()
    queues._registered_at.clear()  # each run registers its queue in `rq:queues` again
    if not batched:
        monkeypatch.setattr(bookkeeping, "recorder", lambda client: None)
    job_id = enqueue("email", "jobs.diagnostics.noop", client=client)
    queue = KryonixQueue("email", connection=client, job_class=KryonixJob)
    worker = KryonixWorker([queue], connection=client, name="bookkeeping-worker")
    worker.register_birth()
    names = {job_id.encode(): b"<job>"}
    taken = KryonixQueue.dequeue_any([queue], None, connection=client, job_class=KryonixJob)
    assert taken is not None and taken[0].id == job_id
    job = taken[0]
    states = [snapshot(client, names)]
    execution = worker.prepare_execution(job)
    states.append(snapshot(client, names))
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    states.append(snapshot(client, names))
    job.started_at = now()
    job.perform()
    worker.handle_execution_ended(job, queue, 60)
    worker.handle_job_success(job, queue, queue.started_job_registry, execution)
    states.append(snapshot(client, names))
    monkeypatch.undo()
    return states


@pytest.mark.parametrize("step", ["dequeued", "prepared", "job prepared", "finished"])
def test_a_batched_job_leaves_the_state_rqs_transactions_leave(
    primary: redis.Redis, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    index = ["dequeued", "prepared", "job prepared", "finished"].index(step)
    rq_states = _run(primary, batched=False, monkeypatch=monkeypatch)
    ours = _run(primary, batched=True, monkeypatch=monkeypatch)
    if step == "prepared":
        # RQ writes the job's start in prepare_job_execution; ours already in prepare_execution.
        assert ours[index] == rq_states[index + 1]
    else:
        assert ours[index] == rq_states[index]


def test_a_job_with_dependents_takes_rqs_path_and_enqueues_them(primary: redis.Redis) -> None:
    from rq import Queue
    from rq.job import JobStatus

    queue = KryonixQueue("email", connection=primary, job_class=KryonixJob)
    parent = queue.enqueue("jobs.diagnostics.noop")
    child = Queue("email", connection=primary).enqueue("jobs.diagnostics.noop", depends_on=parent)
    assert child.get_status() == JobStatus.DEFERRED
    worker = KryonixWorker([queue], connection=primary)
    worker.work(burst=True, max_jobs=1)
    assert parent.get_status() == JobStatus.FINISHED
    assert child.get_status() in (JobStatus.QUEUED, JobStatus.FINISHED)


def test_commands_of_a_batch_run_in_order(primary: redis.Redis) -> None:
    ran: Callable[..., bool] = bookkeeping.run_batch
    assert ran(primary, [("HSET", "k", ("a", 1)), ("EXPIRE", "k", (50,)), ("HSET", "k", ("b", 2))])
    assert primary.hgetall("k") == {b"a": b"1", b"b": b"2"} and 45 <= primary.ttl("k") <= 50
    assert not ran(primary, [("DEL", "k", ())], unless_exists=["k"])
    assert primary.exists("k")


def test_jobs_on_threads_of_one_worker_each_keep_their_own_records(primary: redis.Redis) -> None:
    import threading

    from rq.job import JobStatus

    queue = KryonixQueue("email", connection=primary, job_class=KryonixJob)
    worker = KryonixWorker([queue], connection=primary, name="threaded-worker")
    worker.register_birth()
    jobs = [
        KryonixJob.fetch(enqueue("email", "jobs.diagnostics.noop", client=primary), primary) for _ in range(8)
    ]
    started = threading.Barrier(len(jobs))

    def run(job: KryonixJob) -> None:
        execution = worker.prepare_execution(job)
        started.wait(10)  # every job is running before any finishes
        worker.prepare_job_execution(job)
        job.perform()
        worker.handle_execution_ended(job, queue, 60)
        worker.handle_job_success(job, queue, queue.started_job_registry, execution)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * len(jobs)
    assert queue.started_job_registry.count == 0 and queue.finished_job_registry.count == len(jobs)
    assert worker.executions == {} and not primary.exists(worker.executions_key)
    assert int(primary.hget(worker.key, "successful_job_count") or 0) == len(jobs)
    assert all(len(job.results()) == 1 and not primary.exists(job.execution_registry.key) for job in jobs)


def test_an_unreadable_id_arriving_during_registry_cleanup_does_not_stop_the_worker(
    primary: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker moves a non-UTF-8 id into the intermediate list after ours set entries aside.

    RQ's cleanup would raise UnicodeDecodeError and the worker would quit: the entries are
    set aside again and the cleanup runs once more.
    """
    queue = KryonixQueue("email", connection=primary)
    set_aside = KryonixQueue.set_aside_unreadable
    calls: list[int] = []

    def racing(self: KryonixQueue, now: float | None = None) -> list[str]:
        calls.append(1)
        if len(calls) == 1:  # our pass ran first; the bad entry lands right after it
            found = set_aside(self, now)
            primary.rpush(self.intermediate_queue.key, b"\xff\xfe\x00bad")
            return found
        return set_aside(self, now)

    monkeypatch.setattr(KryonixQueue, "set_aside_unreadable", racing)
    worker = KryonixWorker([queue], connection=primary)
    worker.clean_registries()
    assert len(calls) == 2
    assert primary.lrange(queue.intermediate_queue.key, 0, -1) == [], "set aside, not left for RQ"
