"""JSON fields of the right syntax but the wrong shape stop no worker (marker `security`).

RQ's restore loads `meta`, `dependency_ids`, `retry_intervals` and `repeat_intervals`
with `json.loads` and never checks what it got; a hand-written `5`, `"x"` or `["a"]`
raised later, inside the worker's failure, retry or success handling, and the worker
process exited. Each is now quarantined when read, and the good job behind it runs.
"""

from __future__ import annotations

import json
import sys

import pytest
import redis

from jobs.enqueue import enqueue, fetch_job
from jobs.quarantine import list_quarantined
from tests.integration.poison import job_hash, push
from tests.integration.processes import Processes, log_of

pytestmark = pytest.mark.security

CRASH = json.dumps(["jobs.diagnostics.crash", None, ["boom"], {}])  # transient: retried
RETRIED = {"data": CRASH, "retries_left": "2"}

SHAPES = [
    ("retry_intervals a number", "retry_intervals", {"retry_intervals": "5", "retries_left": "2"}),
    ("retry_intervals of strings", "retry_intervals", {**RETRIED, "retry_intervals": '["a", "b"]'}),
    ("retry_intervals of null", "retry_intervals", {**RETRIED, "retry_intervals": "[null]"}),
    ("retry_intervals too long", "retry_intervals", {**RETRIED, "retry_intervals": "[1e300]"}),
    ("retry_intervals empty", "retry_intervals", {**RETRIED, "retry_intervals": "[]"}),
    ("retry_intervals negative", "retry_intervals", {**RETRIED, "retry_intervals": "[-5]"}),
    ("meta a string", "meta is JSON str", {"data": CRASH, "meta": '"x"'}),
    ("meta a list", "meta is JSON list", {"data": CRASH, "meta": "[1, 2]"}),
    ("dependency_ids a number", "dependency_ids", {"dependency_ids": "5"}),
    ("dependency_ids an object", "dependency_ids", {"dependency_ids": '{"a": 1}'}),
    ("dependency_ids of numbers", "dependency_ids", {"dependency_ids": "[5]"}),
    ("repeat_intervals of strings", "repeat_intervals", {"repeats_left": "3", "repeat_intervals": '["x"]'}),
]


def burst_worker(processes: Processes) -> object:
    return processes.start(sys.executable, "-m", "workers", "worker", "email", "--burst", name="worker")


def hand_written(primary: redis.Redis, job_id: str, **fields: object) -> None:
    job_hash(primary, job_id, "email", **{k: v for k, v in fields.items() if v is not None})
    push(primary, "email", job_id.encode())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("field", "reason", "fields"), SHAPES, ids=[s[0] for s in SHAPES])
def test_a_field_of_the_wrong_shape_is_quarantined_and_the_job_behind_it_runs(
    primary: redis.Redis, processes: Processes, field: str, reason: str, fields: dict[str, object]
) -> None:
    hand_written(primary, "poison-shape", **fields)
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")

    worker = burst_worker(processes)
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]

    assert primary.lrange("kx:ran", 0, -1) == [b"good"], log_of(worker)  # type: ignore[attr-defined]
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]
    entries = {entry.id: entry for entry in list_quarantined(primary)}
    assert "poison-shape" in entries, (field, entries)
    assert reason in entries["poison-shape"].reason


@pytest.mark.timeout(120)
@pytest.mark.parametrize("failure", [{"kind": "permanent", "attempt": "abc"}, {"kind": "permanent"}])
def test_a_forged_failure_record_in_meta_does_not_stop_the_worker(
    primary: redis.Redis, processes: Processes, failure: dict[str, object]
) -> None:
    hand_written(primary, "forged-failure", meta=json.dumps({"failure": failure}))
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")

    worker = burst_worker(processes)
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]

    assert primary.lrange("kx:ran", 0, -1) == [b"good"], log_of(worker)  # type: ignore[attr-defined]
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("origin", ["report", "other", ""])
def test_a_job_whose_origin_names_another_queue_is_quarantined(
    primary: redis.Redis, processes: Processes, origin: str
) -> None:
    sleep = json.dumps(["jobs.diagnostics.sleep", None, [600], {}])  # within report's timeout, not email's
    job_hash(primary, "foreign-origin", "email", origin=origin or None, timeout=1800, data=sleep)
    push(primary, "email", b"foreign-origin")
    good = enqueue("email", "jobs.diagnostics.record", "kx:ran", "good")

    worker = burst_worker(processes)
    assert worker.wait(60) == 0, log_of(worker)  # type: ignore[attr-defined]

    assert primary.lrange("kx:ran", 0, -1) == [b"good"], log_of(worker)  # type: ignore[attr-defined]
    assert fetch_job(job_id=good).get_status().value == "finished"  # type: ignore[union-attr]
    entries = {entry.id: entry for entry in list_quarantined(primary)}
    assert "is not the queue 'email'" in entries["foreign-origin"].reason
