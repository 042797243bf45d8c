"""The worker's heartbeat: coalesced when RQ repeats it, never a shorter TTL (marker `queues`)."""

from __future__ import annotations

import pytest
import redis

from workers.worker import HEARTBEAT_COALESCE_S, KryonixWorker

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
