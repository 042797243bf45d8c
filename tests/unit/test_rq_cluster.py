"""RQ's key prefix per deployment and the versions the cluster adaptations were written for (no Redis)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cache.errors import ConfigError
from jobs import CLUSTER_KEY_PREFIX, rq_key_prefix
from jobs.rq_cluster import SCHEDULER_KEYS, WRITTEN_FOR, version_mismatches
from workers.dev.servers import PROJECT_ROOT
from workers.startup import worker_environment


@pytest.mark.parametrize(
    ("environ", "prefix"),
    [
        ({}, None),  # one server or Sentinel: RQ's own default, `rq`
        ({"RQ_KEY_PREFIX": "myapp"}, "myapp"),  # RQ's own setting, honoured
        ({"REDIS_CLUSTER_NODES": "10.0.0.1:7000"}, CLUSTER_KEY_PREFIX),
        ({"REDIS_CLUSTER_NODES": "10.0.0.1:7000", "RQ_KEY_PREFIX": "{myapp}:rq"}, "{myapp}:rq"),
    ],
)
def test_the_prefix_is_rqs_default_on_one_server_and_hash_tagged_on_a_cluster(
    environ: dict[str, str], prefix: str | None
) -> None:
    assert rq_key_prefix(environ) == prefix
    if prefix is not None:
        assert environ["RQ_KEY_PREFIX"] == prefix, "set for the rest of the process (and its children)"


@pytest.mark.parametrize("given", ["rq", "myapp:", "{}rq", "rq{"])
def test_a_cluster_refuses_a_prefix_without_a_hash_tag(given: str) -> None:
    with pytest.raises(ConfigError, match="RQ_KEY_PREFIX"):
        rq_key_prefix({"REDIS_CLUSTER_NODES": "10.0.0.1:7000", "RQ_KEY_PREFIX": given})


def test_rq_worker_is_started_with_the_clusters_prefix() -> None:
    env = worker_environment({"REDIS_CLUSTER_NODES": "10.0.0.1:7000", "REDIS_URL": "redis://x"}, ["email"])
    assert env["RQ_KEY_PREFIX"] == CLUSTER_KEY_PREFIX
    assert "RQ_KEY_PREFIX" not in worker_environment({"REDIS_URL": "redis://x"}, ["email"])


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )


def test_rq_imported_first_with_another_prefix_fails_loudly() -> None:
    """As a hand-run `rq worker -w workers.worker.KryonixWorker` on a cluster without the export."""
    done = _python("import rq, jobs", REDIS_CLUSTER_NODES="10.0.0.1:7000")
    assert done.returncode == 1
    assert "export RQ_KEY_PREFIX={rq}" in done.stderr
    assert (
        _python("import jobs, rq.defaults as d; print(d.RQ_KEY_PREFIX)", REDIS_CLUSTER_NODES="h:1").stdout
        == "{rq}\n"
    )


def test_rq_scheduler_keys_follow_the_prefix() -> None:
    assert SCHEDULER_KEYS["scheduled_jobs_key"] == "rq:scheduler:scheduled_jobs", "unchanged on one server"


def test_the_cluster_adaptations_were_written_for_the_installed_versions() -> None:
    """Fails after an upgrade of RQ, rq-scheduler or redis-py: rerun the `cluster` tests,
    then drop what upstream fixed from jobs/rq_cluster.py and update WRITTEN_FOR."""
    assert version_mismatches() == {}, f"jobs/rq_cluster.py was written for {WRITTEN_FOR}"
