"""A job's start and its success, each written by one Lua call instead of RQ's transactions.

RQ records a start in two MULTI/EXEC transactions (19 commands: the execution, the
registries, the worker's state and heartbeat, the job's status, PERSIST, LREM) and a
success after a WATCH and a read of the job's dependents (18 commands), writing some
hash fields and TTLs twice. Here RQ's own building blocks (`Execution.create`,
`job.prepare_for_execution`, `job._handle_success`, ...) fill a pipeline that is never
sent; its commands, less the writes a later command of the same batch overrides
(`squash`), run in one `job_batch.lua` call. Redis ends in the same state as after
RQ's code, key for key and field for field.

A success is written only while the job has no dependents (and no dependencies): the
script checks that atomically, as RQ's WATCH does, and writes nothing otherwise; the
caller then takes RQ's own path, which moves the dependents. Anything the batch cannot
express (a repeat, `result_ttl=0`, a Redis Cluster pipeline) also takes RQ's path.

Also here: the worker's heartbeat without its no-op EXPIRE (`worker_beat`), and a page
shared across the fork where a work horse leaves the status it ended with, so the
worker does not read it back from Redis (`final_status`). Everything is per job or per
call (no state shared between jobs but the script cache), so jobs may run on threads.
"""

from __future__ import annotations

import mmap
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.rate_limit import release_slot
from rq.utils import now, utcformat
from rq.worker import Worker, WorkerStatus

from cache.lua import LuaScript, script
from jobs.queues import QUEUES
from workers.job import count_run

# Commands whose only key is their first argument: the batch passes that key in KEYS.
SINGLE_KEY = frozenset(
    {"HSET", "EXPIRE", "ZADD", "ZREM", "SADD", "SREM", "DEL", "XADD", "HINCRBY", "HINCRBYFLOAT", "PERSIST"}
    | {"LREM"}
)
# Hash commands that change one field (the second argument) and leave the key's TTL alone.
_FIELD_COMMANDS = frozenset({"HINCRBY", "HINCRBYFLOAT"})
# Set on a job whose start `start` wrote in full: RQ's prepare_job_execution then has nothing to write.
_STARTED = "_kx_started_by_batch"
# Set on a job run by a work horse: a page shared across the fork, holding the status the horse ended with.
_OUTCOME = "_kx_horse_outcome"
_OUTCOME_BYTES = 32
# The job attributes RQ's prepare_job_execution sets.
_JOB_FIELDS = ("worker_name", "last_heartbeat", "started_at", "_status")

Command = tuple[str, Any, tuple[Any, ...]]  # (NAME, key, arguments after the key)

_scripts: weakref.WeakKeyDictionary[redis.Redis, LuaScript] = weakref.WeakKeyDictionary()
_scripts_lock = threading.Lock()


def recorder(client: redis.Redis) -> Pipeline | None:
    """A pipeline for RQ's code to fill and nobody to execute; None where a batch cannot run."""
    if not isinstance(client, redis.Redis):
        return None  # RedisCluster keeps RQ's own transactions
    pipe = client.pipeline(transaction=False)
    return pipe if isinstance(pipe, Pipeline) else None


def recorded(pipe: Pipeline) -> list[Command] | None:
    """The commands RQ's code put in `pipe`, or None if one of them is not a single-key write."""
    commands: list[Command] = []
    for args, _options in pipe.command_stack:
        name = str(args[0]).upper()
        if name not in SINGLE_KEY or len(args) < 2 or (name == "DEL" and len(args) != 2):
            return None
        commands.append((name, args[1], tuple(args[2:])))
    return commands


def _plain_expire(command: Command) -> bool:
    name, _key, args = command
    return name == "EXPIRE" and len(args) == 1 and int(args[0]) > 0


def squash(commands: Sequence[Command], *, absent: Sequence[Any] = ()) -> list[Command]:
    """`commands` less those whose effect a later one of the batch overrides. Pure.

    The batch runs atomically and every command writes one key, so only each key's own
    order matters. Dropped: an EXPIRE followed by another EXPIRE of the same key (the
    last TTL wins whatever happens in between), an EXPIRE of a key in `absent` that the
    batch has not written (a no-op). Merged: an HSET into the key's earlier HSET when
    only positive EXPIREs or increments of other fields come between.
    """
    kept: list[Command | None] = list(commands)
    absent_keys = set(absent)
    for i, command in enumerate(commands):
        name, key, _args = command
        overridden = _plain_expire(command) and any(
            c[1] == key and _plain_expire(c) for c in commands[i + 1 :]
        )
        if overridden or (name == "EXPIRE" and key in absent_keys):
            kept[i] = None
        elif name == "HSET":
            kept[i] = _merge_hset(kept, i)
        if name != "EXPIRE":
            absent_keys.discard(key)
    return [c for c in kept if c is not None]


def _merge_hset(kept: list[Command | None], i: int) -> Command | None:
    """Fold the HSET at `i` into an earlier HSET of its key (updating `kept`); None if folded."""
    name, key, args = kept[i]  # type: ignore[misc]
    fields = dict(zip(args[::2], args[1::2], strict=True))
    for j in range(i - 1, -1, -1):
        earlier = kept[j]
        if earlier is None or earlier[1] != key:
            continue
        if earlier[0] == "HSET":
            merged = dict(zip(earlier[2][::2], earlier[2][1::2], strict=True)) | fields
            kept[j] = ("HSET", key, tuple(x for pair in merged.items() for x in pair))
            return None
        if _plain_expire(earlier) or (earlier[0] in _FIELD_COMMANDS and earlier[2][0] not in fields):
            continue
        break
    return (name, key, args)


def run_batch(client: redis.Redis, commands: Sequence[Command], *, unless_exists: Sequence[Any] = ()) -> bool:
    """Run `commands` in one script call: atomic; False, nothing written, if a guard key exists."""
    keys = [*unless_exists, *(key for _name, key, _args in commands)]
    argv: list[Any] = [len(unless_exists)]
    for name, _key, args in commands:
        argv += [name, len(args), *args]
    batch = _scripts.get(client)
    if batch is None:
        with _scripts_lock:
            batch = _scripts.setdefault(client, script(client, "job_batch"))
    return bool(batch(keys, argv))


def worker_beat(worker: Worker, ttl: int, pipe: Any) -> None:
    """RQ's worker heartbeat (HSET, EXPIRE, EXPIRE) into `pipe`, with up to two commands less.

    The `last_heartbeat` field joins an HSET of the worker's hash staged just before (RQ
    writes the state, then beats). The executions set's EXPIRE is sent only while an
    execution runs: with none, its last SREM emptied the set and Redis deleted it.
    """
    worker.last_heartbeat = now()
    stamp = ("last_heartbeat", utcformat(worker.last_heartbeat))
    staged = pipe.command_stack[-1][0] if isinstance(pipe, Pipeline) and pipe.command_stack else ()
    if staged[:2] == ("HSET", worker.key):
        # The field joins the HSET of the worker's hash staged just before (its state).
        pipe.command_stack[-1] = ((*staged, *stamp), pipe.command_stack[-1][1])
    else:
        pipe.hset(worker.key, *stamp)
    pipe.expire(worker.key, ttl)
    if worker.executions:
        pipe.expire(worker.executions_key, ttl)


def start(worker: Worker, job: Job) -> Execution | None:
    """RQ's prepare_execution and prepare_job_execution in one batch; None where RQ's must run.

    After this the job is in the started registry, has its execution records, is
    `started` and out of the intermediate list, as after RQ's two transactions, and its
    meta holds one more run (`workers.job.runs_of`); where RQ's must run, only that is written.
    """
    spec = QUEUES.get(str(job.origin))
    if spec is None or not spec.in_process:
        share_outcome(job)  # forked: the horse's final status, for `final_status`
    # Counted before the fork: the worker's copy of the job (its log line) and the horse's agree.
    count_run(job)
    pipe = recorder(worker.connection)
    if pipe is None:
        job.save_meta()  # type: ignore[no-untyped-call]
        return None
    ttl = worker.get_heartbeat_ttl(job)
    execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
    worker.executions[execution.id] = execution
    worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
    # What RQ's prepare_job_execution writes (it runs in the horse, after the fork). The
    # job's own fields change only there, as in RQ: `take_started` sets them.
    worker.heartbeat(ttl, pipeline=pipe)
    before = {name: getattr(job, name) for name in _JOB_FIELDS}
    job.heartbeat(now(), ttl, pipeline=pipe)
    job.prepare_for_execution(worker.name, pipeline=pipe)
    written = {name: getattr(job, name) for name in _JOB_FIELDS}
    for name, value in before.items():
        setattr(job, name, value)
    pipe.persist(job.key)
    pipe.hset(job.key, "meta", job._serialize_meta())
    # Our loop claims into the intermediate list for any number of queues (`workers.loop`).
    pipe.lrem(Queue(job.origin, connection=worker.connection).intermediate_queue_key, 1, job.id)
    commands = recorded(pipe)
    if commands is None:
        pipe.execute()
    else:
        run_batch(worker.connection, squash(commands))
    pipe.reset()
    setattr(job, _STARTED, written)
    return execution


def take_started(job: Job) -> bool:
    """True once per job whose start `start` wrote: its fields are set as written, nothing is sent."""
    written = job.__dict__.pop(_STARTED, None)
    if written is None:
        return False
    for name, value in written.items():
        setattr(job, name, value)
    return True


def finish_success(worker: Worker, job: Job, queue: Queue, execution: Execution) -> bool:
    """RQ's handle_job_success in one batch; False (nothing written) where RQ's must run.

    RQ's path runs instead for a job with dependents or dependencies (it moves them), a
    repeat, a result kept 0 s (RQ deletes the job and its keys), or a Cluster client.
    """
    result_ttl = job.get_result_ttl(worker.default_result_ttl)
    pipe = recorder(worker.connection)
    if pipe is None or result_ttl == 0 or (job.repeats_left is not None and job.repeats_left > 0):
        return False
    assert job.started_at is not None and job.ended_at is not None
    worker.increment_successful_job_count(pipeline=pipe)
    worker.increment_total_working_time(job.ended_at - job.started_at, pipe)
    job._handle_success(
        result_ttl,
        pipeline=pipe,
        worker_name=worker.name,
        execution_id=execution.id,
        execution_started_at=execution.created_at,
        execution_ended_at=job.ended_at,
    )
    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
    execution.delete(job=job, pipeline=pipe)
    commands = recorded(pipe)
    pipe.reset()
    guards = (job.dependents_key, job.dependencies_key)
    if commands is None or not run_batch(
        worker.connection, squash(commands, absent=guards), unless_exists=guards
    ):
        return False
    job._status = JobStatus.FINISHED
    worker.executions.pop(execution.id, None)
    release_slot(job)
    took = job.ended_at - job.started_at
    what = f"{job.description} job" if worker.log_job_description else f"job {job.id}"
    worker.log.info("Successfully completed %s in %ss on worker %s", what, took, worker.name)
    return True


def share_outcome(job: Job) -> None:
    """Before the fork: give `job` a page the work horse writes its final status into."""
    setattr(job, _OUTCOME, mmap.mmap(-1, _OUTCOME_BYTES))


def record_outcome(job: Job) -> None:
    """In the work horse, after the job: its status as the horse wrote it to Redis."""
    page = job.__dict__.get(_OUTCOME)
    status = job.get_status(refresh=False)
    if page is not None and status is not None:
        page[:] = str(status.value).encode()[:_OUTCOME_BYTES].ljust(_OUTCOME_BYTES, b"\0")


def final_status(job: Job, *, in_process: bool) -> JobStatus:
    """The status `job` ended with, read from Redis only when its horse did not record it.

    In-process, RQ holds the final status; a forked horse recorded it (`record_outcome`),
    or was killed before it could, and then the worker wrote it to Redis.
    """
    status = None if in_process else horse_outcome(job)
    return status if status is not None else job.get_status(refresh=not in_process)


def horse_outcome(job: Job) -> JobStatus | None:
    """In the worker, after the horse exited: the status it recorded, None if it recorded none.

    Saves reading the status back from Redis (an HGET per job); a horse that died
    before recording leaves the page empty, and the caller reads Redis.
    """
    page = job.__dict__.pop(_OUTCOME, None)
    if page is None:
        return None
    try:
        raw = page[:].rstrip(b"\0").decode()
    finally:
        page.close()
    try:
        return JobStatus(raw) if raw else None
    except ValueError:
        return None
