"""Enqueue adds the queue to `rq:queues` once a minute per process, not per job (marker `queues`)."""

from __future__ import annotations

import math

import pytest
import redis
from rq.exceptions import DuplicateJobError

from jobs import queues
from jobs.enqueue import enqueue
from jobs.queues import KryonixQueue

pytestmark = pytest.mark.queues

QUEUES_SET = "rq:queues"


def test_the_queue_set_is_written_once_then_refreshed_when_stale(primary: redis.Redis) -> None:
    queue = KryonixQueue("email", connection=primary)
    first = enqueue("email", "jobs.diagnostics.noop", client=primary)
    assert primary.sismember(QUEUES_SET, queue.key)

    primary.srem(QUEUES_SET, queue.key)  # shows whether the next enqueue writes it
    second = enqueue("email", "jobs.diagnostics.noop", client=primary)
    assert not primary.sismember(QUEUES_SET, queue.key), "registered moments ago: no round trip"
    assert queue.job_ids == [first, second], "the job itself is queued as usual"

    queues._registered_at[primary][queue.key] = -math.inf  # as if a minute had passed
    enqueue("email", "jobs.diagnostics.noop", client=primary)
    assert primary.sismember(QUEUES_SET, queue.key), "a stale registration is refreshed"


def test_the_fast_path_keeps_unique_enqueue_atomic(primary: redis.Redis) -> None:
    enqueue("email", "jobs.diagnostics.noop", client=primary)  # registers the queue
    queue = KryonixQueue("email", connection=primary)
    job = queue.create_job("jobs.diagnostics.noop", job_id="only-once")
    queue.enqueue_job(job, unique=True)
    again = queue.create_job("jobs.diagnostics.noop", job_id="only-once")
    with pytest.raises(DuplicateJobError):
        queue.enqueue_job(again, unique=True)
    assert queue.job_ids.count("only-once") == 1
    with pytest.raises(ValueError, match="explicit job_id"):
        queue.enqueue_job(queue.create_job("jobs.diagnostics.noop"), unique=True)
