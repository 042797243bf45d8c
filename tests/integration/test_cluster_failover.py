"""A master SIGKILLed: its replica takes over and the same clients work again (marker `cluster`).

The clients are the settings-built ones, kept across the failover: the sync and async
command clients and a real-time subscriber. They are not expected to ride out the
failover itself: only to work again once the cluster has settled, without being rebuilt.

A worker does ride it out: one draining 1,000 jobs while the `{rq}` master is killed
finishes every job (at least once, duplicates counted), and its command channel follows
the new master; one started while that master is down comes up once it is replaced.
As in `test_cluster_rq`, RQ runs only in child processes (RQ reads its key prefix at
import), here through `run_child`/`spawn` (tests/integration/cluster_children.py).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from cache import connections
from cache.connections import Role
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from tests.integration import cluster_children as children
from tests.integration.realtime_fixtures import WAIT_S, Recorder
from tests.waiting import wait_until
from workers.dev.cluster import LocalCluster
from workers.dev.servers import PROJECT_ROOT, RedisServer

pytestmark = pytest.mark.cluster
CHILDREN = "tests.integration.test_cluster_failover"  # where a child process finds `_child_<name>`

KEY = "failover:key"


def _write_replicated(cluster: LocalCluster) -> None:
    """SET KEY on its master, and WAIT on that very connection until a replica has it."""
    owner = cluster.master_of_key(KEY).client()
    owner.set(KEY, "before")
    assert owner.wait(1, 10_000) == 1
    owner.close()


def _works(client: redis.Redis) -> bool:
    try:
        return client.get(KEY) == b"before"
    except connections.REDIS_ERRORS:
        return False


def test_the_clients_work_again_after_a_master_is_killed(
    cluster: LocalCluster, cluster_primary: redis.Redis
) -> None:
    background = connections.build_client(Role.PRIMARY)
    _write_replicated(cluster)
    assert cluster_primary.get(KEY) == b"before" and background.get(KEY) == b"before"
    old = cluster.master_of_key(KEY)
    cluster.kill(old)
    cluster.wait_settled()
    new = cluster.master_of_key(KEY)
    assert new.port != old.port, "the replica took over the slot"
    # The first call after the failover may meet the dead node and refresh the slot map;
    # both clients then serve from the new master, the acknowledged write intact.
    wait_until(lambda: _works(cluster_primary), 30, "the web client on the new master")
    wait_until(lambda: _works(background), 30, "the background client on the new master")
    cluster_primary.set(KEY, "after")
    assert new.client().get(KEY) == b"after"
    background.close()


def test_a_subscriber_follows_the_new_master(cluster: LocalCluster, cluster_env: dict[str, str]) -> None:
    service = RealtimeService()
    recorder = Recorder()
    with Subscriber(service=service, backoff=lambda attempt: 0.1) as subscriber:
        subscriber.subscribe_user("u1", recorder)
        assert subscriber.wait_ready(WAIT_S)
        first = service.publish_user_event("u1", "before", {})
        recorder.wait_for(1)
        cluster.kill(cluster.master_of_key("user:u1:events"))
        cluster.wait_settled()

        def delivered_after() -> bool:
            try:
                service.publish_user_event("u1", "after", {})
            except Exception:
                return False
            return len(recorder.ids()) >= 2

        wait_until(delivered_after, WAIT_S, "an event published after the failover to arrive")
        assert recorder.ids()[0] == first
        assert recorder.events[1].event == "after"


def test_the_async_client_works_again_after_a_master_is_killed(
    cluster: LocalCluster, cluster_env: dict[str, str]
) -> None:
    async def run() -> bytes | None:
        client = connections.build_async_client(Role.PRIMARY, decode_responses=False)
        try:
            _write_replicated(cluster)
            assert await client.get(KEY) == b"before"  # the client has its slot map
            cluster.kill(cluster.master_of_key(KEY))
            await asyncio.to_thread(cluster.wait_settled)
            for _ in range(100):
                try:
                    return await client.get(KEY)  # type: ignore[no-any-return]
                except connections.REDIS_ERRORS:
                    await asyncio.sleep(0.2)
            return None
        finally:
            await client.aclose()

    assert asyncio.run(run()) == b"before"


def _get(client: Any) -> Any:
    return client.get(KEY)


def _plain_pipeline(client: Any) -> Any:
    pipe = client.pipeline(transaction=False)  # redis-py's own retry loop: only the deadline bounds it
    pipe.set(KEY, "x")
    pipe.get(KEY)
    return pipe.execute()


def _transaction(client: Any) -> Any:
    with client.pipeline(transaction=True) as pipe:
        pipe.set(KEY, "x")
        pipe.get(KEY)
        return pipe.execute()


@pytest.mark.parametrize(
    ("through", "call"),
    [
        ("client", _get),
        ("client", _plain_pipeline),
        ("client", _transaction),
        ("rq view", _get),  # what RQ is handed: enqueue, the CLI and the dashboard call through it
        ("rq view", _plain_pipeline),
        ("rq view", _transaction),
    ],
)
def test_a_web_call_to_a_master_that_never_answers_ends_within_its_bound(
    cluster: LocalCluster, cluster_primary: redis.Redis, through: str, call: Any
) -> None:
    """SIGSTOP: the kernel accepts, nothing answers; REDIS_CALL_TIMEOUT (1 s) bounds the call."""
    import time

    from cache.errors import RedisUnavailable
    from cache.settings import DEFAULT_CALL_TIMEOUT_S
    from jobs.rq_cluster import rq_connection

    client = rq_connection(cluster_primary) if through == "rq view" else cluster_primary
    assert client.get(KEY) is None  # the slot map is read, the pool connected
    stalled = cluster.master_of_key(KEY)
    assert stalled.process is not None
    stalled.process.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(RedisUnavailable, match="REDIS_CLUSTER_NODES"):
            with connections.translate_errors(Role.PRIMARY):
                call(client)
        elapsed = time.monotonic() - start
    finally:
        stalled.process.send_signal(signal.SIGCONT)
    assert elapsed < 3 * DEFAULT_CALL_TIMEOUT_S  # generous: 7 s (redis-py's retries unbounded) fail


# --- Workers across a failover of the `{rq}` master. Child processes as in test_cluster_rq.

RQ_MASTER_KEY = "{rq}:queue:email"
JOBS = 1_000
WORKER_WAIT_S = 240  # generous: recovering a job lost with the old master waits out its heartbeat


def run_child(cluster: LocalCluster, name: str, *args: str) -> Any:
    return children.run_child(CHILDREN, cluster.addresses, name, *args)


@pytest.fixture
def spawn(cluster: LocalCluster, tmp_path: Path) -> Iterator[Any]:
    """`spawn(name, *args)`: `child(name, ...)` in the background, its output in `<log>`."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = tmp_path / f"{name}-{len(started)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                children.child_command(CHILDREN, name, *args),
                env=children.child_env(cluster.addresses),
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process, log_path

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _child_enqueue(queue: str, func: str, args: str, count: str) -> list[str]:
    """`count` jobs `func(*args, token)`, token the job's number, on `queue`."""
    from cache.connections import primary
    from jobs.enqueue import enqueue

    client = primary()
    return [enqueue(queue, func, *json.loads(args), str(n), client=client) for n in range(int(count))]


def _child_work(queues: str, with_scheduler: str = "") -> dict[str, Any]:
    """A worker until SIGTERM, building its own client; the scheduler beside it if asked
    (due retries, crash recovery), as `python -m workers scheduler` runs in production."""
    import threading

    from cache.connections import primary
    from workers.scheduler import SchedulerProcess
    from workers.worker import KryonixWorker

    worker = KryonixWorker(queues.split(","))
    if not with_scheduler:
        worker.work()
        return {}
    scheduler = SchedulerProcess(primary(), definitions=[], tick_s=0.2, maintenance_interval_s=1.0)
    runner = threading.Thread(target=scheduler.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    worker.work()
    scheduler.stop_event.set()
    runner.join()
    return {}


def _client(cluster: LocalCluster) -> RedisCluster:
    node = next(node for node in cluster.nodes if node.running)
    return RedisCluster(host="127.0.0.1", port=node.port)


def _log_key(cluster: LocalCluster) -> str:
    """A key for the runs' log on another master than `{rq}`'s: the kill loses none of it."""
    rq_port = cluster.master_of_key(RQ_MASTER_KEY).port
    return next(
        key for key in (f"runs:{n}" for n in range(100)) if cluster.master_of_key(key).port != rq_port
    )


def _replicated(cluster: LocalCluster) -> None:
    """Every write the `{rq}` master took so far is on its replica (one stream, in order)."""
    owner = cluster.master_of_key(RQ_MASTER_KEY).client()
    owner.set("{rq}:test:fence", 1)
    assert owner.wait(1, 10_000) == 1
    owner.close()


def _replica_of(cluster: LocalCluster, master: RedisServer) -> RedisServer:
    for node in cluster.nodes:
        role = node.client().execute_command("ROLE")
        if role[0] == b"slave" and int(role[2]) == master.port:
            return node
    raise AssertionError(f"no replica of {master.port}")


def _statuses(client: RedisCluster, ids: list[str]) -> collections.Counter[str]:
    with client.pipeline() as pipe:  # every key on the `{rq}` slot
        for job_id in ids:
            pipe.hget(f"{{rq}}:job:{job_id}", "status")
        return collections.Counter((s or b"missing").decode() for s in pipe.execute())


def _subscribed(cluster: LocalCluster, channel: str) -> bool:
    """Some live node has a subscriber on `channel` (classic PUBLISH reaches every node)."""
    return any(node.client().pubsub_numsub(channel)[0][1] > 0 for node in cluster.nodes if node.running)


def _drained(client: RedisCluster, log_key: str, ids: list[str]) -> bool:
    try:
        return set(t.decode() for t in client.lrange(log_key, 0, -1)) >= set(map(str, range(len(ids)))) and (
            _statuses(client, ids)["finished"] == len(ids)
        )
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return False


def test_a_worker_drains_every_job_across_a_failover_and_its_commands_follow(
    cluster: LocalCluster, spawn: Any
) -> None:
    log_key = _log_key(cluster)
    ids = run_child(
        cluster, "enqueue", "email", "jobs.diagnostics.sleep", json.dumps([0.02, log_key]), str(JOBS)
    )
    _replicated(cluster)
    worker, worker_log = spawn("work", "email,report", "with-scheduler")
    client = _client(cluster)
    wait_until(lambda: client.llen(log_key) >= 100, 120, "the worker ran 100 jobs")
    old = cluster.master_of_key(RQ_MASTER_KEY)
    cluster.kill(old)
    ran_at_kill = client.llen(log_key)
    assert ran_at_kill < JOBS, "the kill came mid-drain"
    cluster.wait_settled()
    assert cluster.master_of_key(RQ_MASTER_KEY).port != old.port
    wait_until(lambda: _drained(client, log_key, ids), WORKER_WAIT_S, "every job finished after the failover")

    runs = collections.Counter(t.decode() for t in client.lrange(log_key, 0, -1))
    duplicates = {token: count for token, count in runs.items() if count > 1}
    print(f"jobs {JOBS}, ran at the kill {ran_at_kill}, ran twice {len(duplicates)}: {sorted(duplicates)}")
    assert set(runs) == set(map(str, range(JOBS))), "no job lost"
    assert max(runs.values()) <= 2 and len(duplicates) <= JOBS // 10, "duplicates only at the failover"
    assert client.llen(RQ_MASTER_KEY) == 0 and client.llen(f"{RQ_MASTER_KEY}:intermediate") == 0
    assert client.zcard("{rq}:wip:email") == 0, "no job left started"
    assert worker.poll() is None, "the same worker rode out the failover"
    output = worker_log.read_text()
    settled = re.findall(r"Redis answers again after ([\d.]+) s", output)
    print(f"worker waited for the new master: {settled} s")

    # A stop-job command sent after the failover reaches the worker: its channel followed.
    (name,) = [m.decode().rsplit(":", 1)[-1] for m in client.smembers("{rq}:workers")]
    wait_until(
        lambda: _subscribed(cluster, f"{{rq}}:pubsub:{name}"), 60, "the command channel subscribed again"
    )
    (sleeper,) = run_child(
        cluster, "enqueue", "report", "jobs.diagnostics.sleep", json.dumps([120, log_key]), "1"
    )
    status = lambda: client.hget(f"{{rq}}:job:{sleeper}", "status")  # noqa: E731
    wait_until(lambda: status() == b"started", 60, "the report job started")
    client.publish(f"{{rq}}:pubsub:{name}", json.dumps({"command": "stop-job", "job_id": sleeper}))
    wait_until(lambda: status() == b"stopped", 60, "the stop-job command stopped it")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, f"the worker stopped warm:\n{output}"
    client.close()


def test_a_worker_started_while_the_rq_master_is_down_comes_up_after_the_failover(
    cluster: LocalCluster, spawn: Any
) -> None:
    log_key = _log_key(cluster)
    ids = run_child(cluster, "enqueue", "email", "jobs.diagnostics.record", json.dumps([log_key]), "20")
    _replicated(cluster)
    old = cluster.master_of_key(RQ_MASTER_KEY)
    replica = _replica_of(cluster, old).client()
    replica.config_set("cluster-replica-no-failover", "yes")  # no failover until the worker waits
    try:
        cluster.kill(old)
        worker, worker_log = spawn("work", "email")
        waiting = re.compile("Redis unreachable|waiting for Redis")
        wait_until(lambda: waiting.search(worker_log.read_text()), 120, f"the worker waiting: {worker_log}")
        assert worker.poll() is None, worker_log.read_text()
        replica.execute_command("CLUSTER", "FAILOVER", "FORCE")
        cluster.wait_settled()
    finally:
        replica.config_set("cluster-replica-no-failover", "no")
        replica.close()
    client = _client(cluster)
    wait_until(lambda: _drained(client, log_key, ids), WORKER_WAIT_S, "the late worker ran every job")
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker_log.read_text()
    client.close()
