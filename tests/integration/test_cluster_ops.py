"""Operating the workers on a real 6-node Redis Cluster: status, failed, job, metrics, the
dashboard and `up --cluster` (marker `cluster`).

RQ reads its key prefix once per process, and this test process imported it with the
single-server one; so everything that uses RQ on the cluster runs in a child process
whose environment names the cluster and nothing else (the project sets `{rq}` there):
the CLI as an operator runs it, the dashboard as `python -m workers dashboard`, and the
few RQ steps of a test through `child(...)`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from tests.integration import cluster_children as children
from tests.integration.local_stack import check_caught_and_served, listening, running_stack, stack_script
from tests.waiting import wait_until
from workers.dev.cluster import LocalCluster
from workers.dev.servers import PROJECT_ROOT, free_port, wait_for_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
CHILDREN = "tests.integration.test_cluster_ops"  # where a child process finds `_child_<name>`

WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}


def cli(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m workers ARGS` against the cluster, to its end."""
    done = subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=children.child_env(cluster.addresses),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not check or done.returncode == 0, (
        f"workers {args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done


def run_child(nodes: str, name: str, *args: str) -> Any:
    """Run `_child_<name>(*args)` in a process on the cluster `nodes`; returns the JSON it printed last."""
    return children.run_child(CHILDREN, nodes, name, *args)


def _child_enqueue_email() -> str:
    from jobs.email import enqueue_email

    return enqueue_email("ana@example.com", "welcome", WELCOME)


def _child_fail_one() -> str:
    """A job that fails for good (no retries), run by a burst worker on the cluster."""
    from cache.connections import primary
    from jobs.enqueue import enqueue
    from jobs.retry import RetryPolicy
    from workers.worker import KryonixWorker

    job_id = enqueue(
        "email", "jobs.diagnostics.fail_permanently", "no such mailbox", retry=RetryPolicy(attempts=0)
    )
    KryonixWorker(["email"], connection=primary()).work(burst=True)
    return job_id


def _child_scrape() -> dict[str, float]:
    """One Prometheus scrape of the collector on the cluster: each sample -> value."""
    from prometheus_client import CollectorRegistry, generate_latest

    from workers.cli.metrics import KryonixCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(KryonixCollector())
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("kryonix_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


# --- status


def test_status_reports_every_node_and_which_master_owns_the_rq_slot(cluster: LocalCluster) -> None:
    report = json.loads(cli(cluster, "status", "--json").stdout)
    section = report["cluster"]
    assert section["state"] == "ok"
    rq_master = cluster.master_of_slot(key_slot(b"{rq}"))
    assert section["rq_slot"] == key_slot(b"{rq}")
    assert section["rq_slot_master"] == f"127.0.0.1:{rq_master.port}"
    nodes = {node["address"]: node for node in section["nodes"]}
    assert set(nodes) == {f"127.0.0.1:{node.port}" for node in cluster.nodes}
    masters = [n for n in nodes.values() if n["role"] == "master"]
    replicas = [n for n in nodes.values() if n["role"] == "slave"]
    assert len(masters) == 3 and len(replicas) == 3
    assert sum(n["slots"] for n in masters) == 16384
    assert [n["address"] for n in nodes.values() if n["owns_rq_slot"]] == [section["rq_slot_master"]]
    assert {n["master"] for n in replicas} == {n["address"] for n in masters}
    for node in nodes.values():
        assert node["reachable"] and node["used_memory"] > 0 and node["maxmemory_policy"] == "noeviction"
        assert node["rdb_last_bgsave_status"] == "ok" and isinstance(node["aof_enabled"], bool)
    assert all(n["master_link_status"] == "up" for n in replicas)

    text = cli(cluster, "status").stdout
    assert f"127.0.0.1:{rq_master.port} redis" in text and "owns the {rq} slot (all queues)" in text
    assert text.count("replica of 127.0.0.1:") == 3
    assert text.strip().endswith("status: OK")


def test_status_lists_a_dead_replica_the_cluster_has_flagged_failing(cluster: LocalCluster) -> None:
    # CLUSTER SLOTS leaves a failing replica out; the operator must still see it.
    masters = {node.port for node in cluster.master_nodes()}
    replica = next(node for node in cluster.nodes if node.port not in masters)
    cluster.kill(replica)
    address = f"127.0.0.1:{replica.port}"
    witness = cluster.master_nodes()[0].client(decode_responses=True)
    try:
        wait_until(
            lambda: "fail" in witness.cluster("NODES")[address]["flags"].split(","),
            30,
            "the cluster flags the killed replica as failed",
        )
    finally:
        witness.close()

    report = json.loads(cli(cluster, "status", "--json").stdout)
    nodes = {node["address"]: node for node in report["cluster"]["nodes"]}
    assert set(nodes) == {f"127.0.0.1:{node.port}" for node in cluster.nodes}
    dead = nodes[address]
    assert not dead["reachable"] and dead["role"] == "slave" and "fail" in dead["flags"]
    assert dead["master"] in {f"127.0.0.1:{port}" for port in masters}
    text = cli(cluster, "status").stdout
    assert f"{address} UNREACHABLE (replica of {dead['master']}; cluster flags slave,fail)" in text


def test_status_with_a_stopped_replica_names_it_unreachable_within_a_node_timeout(
    cluster: LocalCluster,
) -> None:
    import time

    from workers.cli.cluster_status import NODE_TIMEOUT_S

    masters = {node.port for node in cluster.master_nodes()}
    replica = next(node for node in cluster.nodes if node.port not in masters)
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # the kernel accepts, nothing answers
    try:
        start = time.monotonic()
        report = json.loads(cli(cluster, "status", "--json").stdout)
        elapsed = time.monotonic() - start
    finally:
        replica.process.send_signal(signal.SIGCONT)
    stopped = {node["address"]: node for node in report["cluster"]["nodes"]}[f"127.0.0.1:{replica.port}"]
    assert not stopped["reachable"] and "Timeout" in stopped["error"], stopped
    # One read of NODE_TIMEOUT_S for that node, plus the command's start: redis-py's default
    # retry (10 attempts) made it 22 s.
    assert elapsed < 4 * NODE_TIMEOUT_S, elapsed


def test_status_lists_the_queued_job_on_the_cluster(cluster: LocalCluster) -> None:
    run_child(cluster.addresses, "enqueue_email")
    report = json.loads(cli(cluster, "status", "--json").stdout)
    assert report["queues"]["queues"]["email"]["queued"] == 1, report["queues"]


# --- failed, job, metrics


def test_failed_list_show_requeue_and_job_work_on_the_cluster(cluster: LocalCluster) -> None:
    job_id = run_child(cluster.addresses, "fail_one")
    rows = json.loads(cli(cluster, "failed", "list", "--json").stdout)
    assert [row["id"] for row in rows] == [job_id]
    shown = json.loads(cli(cluster, "failed", "show", job_id, "--json").stdout)
    assert shown["id"] == job_id and "no such mailbox" in json.dumps(shown)
    assert json.loads(cli(cluster, "job", job_id, "--json").stdout)["status"] == "failed"

    assert f"requeued {job_id} on email" in cli(cluster, "failed", "requeue", job_id).stdout
    assert json.loads(cli(cluster, "failed", "list", "--json").stdout) == []
    assert json.loads(cli(cluster, "job", job_id, "--json").stdout)["status"] == "queued"


def test_metrics_scrape_every_section_on_the_cluster(cluster: LocalCluster) -> None:
    run_child(cluster.addresses, "enqueue_email")
    samples = run_child(cluster.addresses, "scrape")
    errors = {name: value for name, value in samples.items() if name.startswith("kryonix_scrape_error")}
    assert errors and set(errors.values()) == {0.0}, errors
    assert samples['kryonix_queue_depth{queue="email"}'] == 1.0


# --- backup


def _key_on(cluster: LocalCluster, node: Any) -> str:
    """A hash tag whose slot `node` serves."""
    return next(f"{{t{i}}}" for i in range(100_000) if cluster.master_of_key(f"{{t{i}}}").port == node.port)


def test_backup_snapshots_every_master(cluster: LocalCluster) -> None:
    masters = cluster.master_nodes()
    before = {node.port: int(node.client().lastsave().timestamp()) for node in masters}
    report = json.loads(cli(cluster, "backup", "--json").stdout)
    saved = {int(master["node"].rsplit(":", 1)[1]): master for master in report["masters"]}
    assert set(saved) == set(before)  # every master, no replica
    for node in masters:
        master = saved[node.port]
        assert master["lastsave"] > before[node.port] == master["previous_lastsave"]
        assert master["lastsave"] == int(node.client().lastsave().timestamp())
        assert Path(master["rdb_path"]).stat().st_size == master["size_bytes"] > 0
    text = cli(cluster, "backup").stdout
    assert text.startswith(f"backup of {len(masters)} masters done in ")
    assert all(f"master 127.0.0.1:{node.port}:" in text for node in masters)


def test_a_master_whose_save_does_not_finish_is_named_with_what_was_saved(cluster: LocalCluster) -> None:
    masters = sorted(cluster.master_nodes(), key=lambda node: f"127.0.0.1:{node.port}")
    slow = masters[-1]  # backed up last: the others are saved first
    client = slow.client()
    tag = _key_on(cluster, slow)
    client.mset({f"{tag}{i}": "v" for i in range(2000)})
    client.config_set("rdb-key-save-delay", 30_000)  # 2000 keys x 30 ms: a 60 s save
    try:
        done = cli(cluster, "backup", "--timeout", "20", check=False)
    finally:
        client.config_set("rdb-key-save-delay", 0)  # the running save keeps its own delay
    assert done.returncode == 1, done.stdout
    assert f"master 127.0.0.1:{slow.port}: backup did not finish within" in done.stderr
    assert f"({len(masters) - 1} of {len(masters)} saved)" in done.stderr


# --- the dashboard


@pytest.fixture
def dashboard_port(cluster: LocalCluster, tmp_path: Path) -> Iterator[int]:
    """`python -m workers dashboard` on the cluster, on a free port, ready."""
    port = free_port()
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers", "dashboard"],
            env=children.child_env(cluster.addresses, DASHBOARD_PORT=str(port)),
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, 60)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def _json(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": f"127.0.0.1:{port}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_dashboard_lists_the_clusters_queues_jobs_and_failed_jobs(
    cluster: LocalCluster, dashboard_port: int
) -> None:
    failed = run_child(cluster.addresses, "fail_one")  # its burst worker would take a queued email too
    queued = run_child(cluster.addresses, "enqueue_email")
    queues = {q["name"]: q for q in _json(dashboard_port, "/0/data/queues.json")["queues"]}
    assert queues["email"]["count"] == 1 and queues["email"]["failed_job_registry_count"] == 1
    listed = _json(dashboard_port, "/0/data/jobs/email/queued/8/asc/1.json")["jobs"]
    assert [job["id"] for job in listed] == [queued]
    listed = _json(dashboard_port, "/0/data/jobs/email/failed/8/asc/1.json")["jobs"]
    assert [job["id"] for job in listed] == [failed]
    assert _json(dashboard_port, f"/0/data/job/{queued}.json")["id"] == queued
    assert _json(dashboard_port, "/0/data/workers.json") == {"workers": []}


# --- up --cluster


def _cluster_ports() -> tuple[int, ...]:
    return tuple(free_port(with_bus_port=True) for _ in range(6))


@pytest.mark.timeout(360)
def test_up_cluster_runs_the_stack_on_the_cluster_and_delivers_an_email(tmp_path: Path) -> None:
    var, log = tmp_path / "var", tmp_path / "stack.log"
    ports = f"LocalPorts(smtp={free_port()}, dashboard={free_port()}, cluster={_cluster_ports()!r})"
    with running_stack(stack_script(var, ports, cluster=True), log) as stack:
        local = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (var / "local.env").read_text().splitlines()
        )
        assert "REDIS_URL" not in local and "CACHE_REDIS_URL" not in local
        nodes = local["REDIS_CLUSTER_NODES"]
        assert len(nodes.split(",")) == 6
        run_child(nodes, "enqueue_email")
        check_caught_and_served(var, int(local["DASHBOARD_PORT"]), timeout_s=120)
    stack.check_stopped_cleanly()
    node_ports = [int(address.rsplit(":", 1)[1]) for address in nodes.split(",")]
    wait_until(lambda: not any(listening(port) for port in node_ports), 30, "every node stopped")
