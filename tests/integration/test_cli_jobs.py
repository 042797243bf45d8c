"""`failed list/show/requeue` and `job ID` tell an operator the truth about runs (marker `queues`).

A requeued permanent failure showed `attempts=9` after two runs (RQ's retry budget,
zeroed by the failure, counted as used up), a waiting retry said `scheduled (attempt 2)`
with neither its reason nor its next run, and `failed show` printed raw JSON for any job.
"""

from __future__ import annotations

import json
import re

import pytest
import redis

from jobs.enqueue import enqueue
from jobs.retry import RetryPolicy
from tests.integration.processes import Processes, log_of

pytestmark = pytest.mark.queues

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _run_burst(processes: Processes) -> str:
    worker = processes.worker("email", burst=True)
    assert worker.wait(60) == 0, log_of(worker)
    return log_of(worker)


def _json(processes: Processes, *args: str) -> object:
    shown = processes.cli(*args, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.mark.timeout(180)
def test_a_requeued_permanent_failure_counts_its_runs_everywhere(
    primary: redis.Redis, processes: Processes
) -> None:
    job_id = enqueue("email", "jobs.diagnostics.fail_permanently", "no such mailbox")
    first = _run_burst(processes)
    assert processes.cli("failed", "requeue", job_id).returncode == 0
    second = _run_burst(processes)

    assert f"job {job_id} queue=email func=jobs.diagnostics.fail_permanently attempt=1 " in first
    assert f"job {job_id} queue=email func=jobs.diagnostics.fail_permanently attempt=2 " in second
    [row] = _json(processes, "failed", "list")  # type: ignore[misc]
    assert (row["id"], row["attempts"]) == (job_id, 2)
    shown = _json(processes, "failed", "show", job_id)
    assert shown["attempts"] == 2  # type: ignore[index]
    assert shown["meta"]["runs"] == 2 and shown["meta"]["failure"]["attempt"] == 2  # type: ignore[index]
    assert _json(processes, "job", job_id)["attempts"] == 2  # type: ignore[index]
    listed = processes.cli("failed", "list").stdout
    assert "attempts=2" in listed and "attempts=9" not in listed
    assert f"{job_id} on email: failed (attempt 2)" in processes.cli("job", job_id).stdout


@pytest.mark.timeout(120)
def test_a_waiting_retry_shows_its_last_failure_and_its_next_run(
    primary: redis.Redis, processes: Processes
) -> None:
    slow = RetryPolicy(attempts=2, base_s=3600, factor=1, cap_s=3600)
    job_id = enqueue("email", "jobs.diagnostics.crash", "smtp down", retry=slow)
    log = _run_burst(processes)

    assert f"job {job_id} queue=email func=jobs.diagnostics.crash attempt=1 status=scheduled" in log
    text = processes.cli("job", job_id).stdout
    assert f"job {job_id} on email: scheduled (attempt 1)" in text
    assert "last failure (transient): RuntimeError: smtp down" in text
    [next_run] = re.findall(r"next run: (\S+) \(retry 1 of 2\)", text)
    assert ISO_UTC.fullmatch(next_run), text
    info = _json(processes, "job", job_id)
    assert info["next_run_at"] == next_run and (info["retry"], info["retries"]) == (1, 2)  # type: ignore[index]


@pytest.mark.timeout(120)
def test_failed_show_is_text_for_people_and_plain_json_for_machines(
    primary: redis.Redis, processes: Processes
) -> None:
    job_id = enqueue("email", "jobs.diagnostics.fail_permanently", "no such mailbox")
    _run_burst(processes)

    text = processes.cli("failed", "show", job_id)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"job {job_id} on email: failed (permanent)"
    assert "  reason: no such mailbox" in lines and "  attempts: 1" in lines
    assert "  traceback:" in lines
    assert "    jobs.errors.PermanentJobError: no such mailbox" in lines, "the traceback is text"
    assert "\\n" not in text.stdout
    shown = _json(processes, "failed", "show", job_id)
    assert shown["status"] == "failed"  # type: ignore[index]
    assert ISO_UTC.fullmatch(shown["failed_at"])  # type: ignore[index]
    for key in ("enqueued_at", "started_at", "ended_at"):
        assert ISO_UTC.fullmatch(_json(processes, "job", job_id)[key])  # type: ignore[index]


def test_failed_show_of_a_job_that_has_not_failed_says_what_it_is(
    primary: redis.Redis, processes: Processes
) -> None:
    job_id = enqueue("email", "jobs.diagnostics.noop")

    for args in (("failed", "show", job_id), ("failed", "show", job_id, "--json")):
        shown = processes.cli(*args)
        assert shown.returncode == 1
        assert f"job '{job_id}' has not failed: it is queued" in shown.stderr
        assert shown.stdout == ""
    missing = processes.cli("failed", "show", "no-such-job")
    assert missing.returncode == 1 and "no job 'no-such-job'" in missing.stderr


def test_job_refuses_watch_with_json(processes: Processes) -> None:
    shown = processes.cli("job", "some-id", "--watch", "--json")
    assert shown.returncode == 2
    assert "--watch follows the job for a person" in shown.stderr
