"""The worker's heartbeat: coalesced when RQ repeats it, never a shorter TTL (marker `queues`)."""

from __future__ import annotations

import pytest
import redis
from rq.exceptions import StopRequested

from workers.worker import HEARTBEAT_COALESCE_S, SUSPENSION_CHECK_INTERVAL_S, KryonixWorker

pytestmark = pytest.mark.queues


def test_back_to_back_heartbeats_are_coalesced_but_a_longer_ttl_is_always_sent(primary: redis.Redis) -> None:
    worker = KryonixWorker(["email"], connection=primary)
    clock = [1_000.0]
    worker._monotonic = lambda: clock[0]
    default_ttl = worker.worker_ttl + 60

    worker.heartbeat()
    assert default_ttl - 2 <= primary.ttl(worker.key) <= default_ttl
    primary.expire(worker.key, 5)  # as if time had passed on the server

    worker.heartbeat()  # RQ's second beat, a moment later: redundant
    assert primary.ttl(worker.key) <= 5, "skipped: nothing was sent"

    worker.heartbeat(default_ttl + 500)  # asks for more than the last beat gave: sent
    assert primary.ttl(worker.key) > default_ttl

    primary.expire(worker.key, 5)
    clock[0] += HEARTBEAT_COALESCE_S + 0.01
    worker.heartbeat()  # the last beat is too old to stand in for this one
    assert primary.ttl(worker.key) > 5


def test_a_direct_beat_after_a_jobs_shorter_pipelined_beat_is_sent(primary: redis.Redis) -> None:
    """RQ's job beat sets the job's (shorter) TTL; the next worker beat must restore the long one."""
    worker = KryonixWorker(["email"], connection=primary)
    worker._monotonic = lambda: 1_000.0  # all within one coalescing interval
    worker.heartbeat()
    with primary.pipeline() as pipe:
        worker.heartbeat(30, pipeline=pipe)
        pipe.execute()
    assert primary.ttl(worker.key) <= 30
    worker.heartbeat()  # after the job: asks for more than the job's beat gave
    assert primary.ttl(worker.key) > 30, "the worker key must not expire while the worker idles"


def test_a_state_already_written_is_not_written_again(primary: redis.Redis) -> None:
    worker = KryonixWorker(["email"], connection=primary)
    worker.set_state("idle")
    assert primary.hget(worker.key, "state") == b"idle"
    primary.hset(worker.key, "state", "marker")  # shows whether the next call writes
    worker.set_state("idle")
    assert primary.hget(worker.key, "state") == b"marker", "the same state: no round trip"
    assert worker.get_state() == "idle"
    worker.set_state("busy")
    assert primary.hget(worker.key, "state") == b"busy"
    with primary.pipeline() as pipe:
        worker.set_state("idle", pipeline=pipe)
        pipe.execute()
    primary.hset(worker.key, "state", "marker")
    worker.set_state("idle")
    assert primary.hget(worker.key, "state") == b"marker", "a pipelined write counts as written"


def test_suspension_is_checked_at_most_once_per_interval(primary: redis.Redis) -> None:
    from rq.suspension import resume, suspend

    worker = KryonixWorker(["email"], connection=primary)
    clock = [1_000.0]
    worker._monotonic = lambda: clock[0]
    worker.check_for_suspension(burst=True)  # not suspended: returns
    suspend(primary)
    try:
        worker.check_for_suspension(burst=True)  # within the interval: not asked again
        clock[0] += SUSPENSION_CHECK_INTERVAL_S
        with pytest.raises(StopRequested):  # a burst worker stops when suspended
            worker.check_for_suspension(burst=True)
    finally:
        resume(primary)


def test_a_finished_job_keeps_its_end_and_last_heartbeat_stamps(primary: redis.Redis) -> None:
    """Without a callback the end-of-job stamp is saved with the job, not in its own round trip."""
    from jobs.enqueue import enqueue, fetch_job

    job_id = enqueue("email", "jobs.diagnostics.noop")
    worker = KryonixWorker(["email"], connection=primary)
    assert worker.work(burst=True, logging_level="ERROR")
    job = fetch_job(job_id=job_id)
    assert job is not None and job.get_status().value == "finished"
    assert job.started_at is not None and job.ended_at is not None and job.last_heartbeat is not None
    assert job.started_at <= job.ended_at
    assert job.last_heartbeat == job.ended_at
