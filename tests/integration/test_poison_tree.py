"""The headline poison test: the shipped supervisord tree against every poison kind (marker `security`).

Every kind of hostile entry is queued before 100 good jobs; the tree starts on top of
them. Every good job finishes, every poison is reported with a reason, no program
exits or leaves RUNNING, and maintenance never puts a poison back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cache.text import printable
from jobs.enqueue import enqueue_bulk
from jobs.quarantine import list_quarantined
from jobs.queues import KryonixQueue
from tests.integration.ops_fixtures import Tree
from tests.integration.poison import FAILED, POISONS, Context, Listener, Poison
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until
from workers.cli.failed import list_failed

pytestmark = pytest.mark.security

GOOD_EMAIL = 80
GOOD_REPORT = 20

Queued = tuple[list[tuple[str, Poison, bytes]], dict[str, list[str]]]


@pytest.fixture
def canaries(tmp_path: Path) -> Path:
    path = tmp_path / "canaries"
    path.mkdir()
    return path


@pytest.fixture
def queued(primary: redis.Redis, canaries: Path, webhook_listener: Listener) -> Iterator[Queued]:
    """The poisons, then the good jobs, all written before the tree starts."""
    ctx = Context(canaries, webhook_listener.url)
    # Both queues: the email worker runs jobs in its process, the report worker forks a horse.
    poisons = [
        (queue, poison, poison.write(primary, queue, ctx))
        for queue in ("email", "report")
        for poison in POISONS
    ]
    good = {
        "email": enqueue_bulk(
            "email", "jobs.diagnostics.record", [(("kx:ran", f"e{i}"), {}) for i in range(GOOD_EMAIL)]
        ),
        "report": enqueue_bulk(
            "report", "jobs.diagnostics.record", [(("kx:ran", f"r{i}"), {}) for i in range(GOOD_REPORT)]
        ),
    }
    yield poisons, good


def _reported(primary: redis.Redis) -> set[tuple[str, str]]:
    failed = {(row.queue, row.id) for row in list_failed(primary) if row.kind == "permanent"}
    return failed | {(entry.queue, entry.id) for entry in list_quarantined(primary)}


@pytest.mark.timeout(300)
def test_the_supervisord_tree_sets_every_poison_aside_and_runs_every_good_job(
    primary: redis.Redis,
    processes: Processes,
    canaries: Path,
    webhook_listener: Listener,
    queued: Queued,
    tree: Tree,
) -> None:
    poisons, good = queued
    assert len({poison.name for _, poison, _ in poisons}) >= 15
    wait_until(lambda: primary.llen("kx:ran") == GOOD_EMAIL + GOOD_REPORT, 180, "every good job ran")
    expected = {(queue, printable(job_id)) for queue, _, job_id in poisons}
    wait_until(lambda: expected <= _reported(primary), 60, "every poison reported")

    for queue, ids in good.items():
        finished = KryonixQueue(queue, connection=primary).finished_job_registry
        assert set(finished.get_job_ids()) >= set(ids), f"{queue}: a good job did not finish"
    failed = {(row.queue, row.id): row for row in list_failed(primary)}
    for queue, poison, job_id in poisons:
        key = (queue, printable(job_id))
        assert poison.reason in failed[key].reason, (poison.name, failed[key])
        assert failed[key].kind == ("permanent" if poison.expect == FAILED else "quarantined")
    assert list(canaries.iterdir()) == [], "a canary ran"
    assert webhook_listener.received == [], "a worker contacted a webhook URL"

    states = tree.states()
    assert states and all(state == "RUNNING" for state in states.values()), states
    assert "exited:" not in log_of(tree.process), "a program exited (supervisord restarted it)"

    listed = processes.cli("failed", "list")
    assert listed.returncode == 0, listed.stderr
    assert all(printable(job_id) in listed.stdout for _, _, job_id in poisons)
    status = processes.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    section = json.loads(status.stdout)["queues"]
    assert section["quarantined"] == sum(1 for _, p, _ in poisons if p.expect != FAILED)
    assert section["unsafe_workers"] == []

    reported = _reported(primary)
    for _ in range(2):  # maintenance twice: nothing is requeued, nothing reported again or lost
        maintain = processes.cli("maintain", "--once")
        assert maintain.returncode == 0, maintain.stderr
        assert "requeued" not in maintain.stdout, maintain.stdout
        for queue in ("email", "report"):
            key = KryonixQueue(queue, connection=primary).key
            assert primary.llen(key) == 0 and primary.llen(f"{key}:intermediate") == 0
        assert _reported(primary) == reported
