"""Fault injection: kill Redis, starve it of memory, fail it over, and check what survives.

Marker `reliability`. Every scenario is bounded in time; waits are bounded polls, never
timing assertions.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rq.worker import Worker
from sqlalchemy import Engine, insert

from cache import connections
from cache.appcache.cached_db import CachedDatabase
from cache.appcache.platform import companies, create_schema, make_engine, users
from cache.appcache.service import CacheService
from cache.sessions.service import SessionService, SessionStoreUnavailable
from cache.settings import reset_settings
from jobs.enqueue import enqueue, fetch_job
from jobs.errors import EnqueueUnavailable
from jobs.queues import KryonixQueue
from tests.integration.processes import Processes, log_of, process_env
from tests.integration.sentinel import SentinelCluster
from tests.waiting import wait_until
from workers.dev.servers import CACHE_CONF, PRIMARY_CONF, RedisServer

pytestmark = pytest.mark.reliability

Factory = Callable[..., RedisServer]


@pytest.fixture
def private_env(
    redis_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, object]]:
    """Private PRIMARY and CACHE servers this test may kill, with the settings pointed at them."""
    primary_server = redis_factory(PRIMARY_CONF, name="primary")
    cache_server = redis_factory(CACHE_CONF, name="cache")
    env = {
        "REDIS_URL": primary_server.url,
        "CACHE_REDIS_URL": cache_server.url,
        "REDIS_RETRY_ATTEMPTS": "2",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'kryonix.db'}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    connections.reset_clients()
    yield {"primary": primary_server, "cache": cache_server, "env": env}
    reset_settings()
    connections.reset_clients()


@pytest.fixture
def private_processes(private_env: dict[str, object], tmp_path: Path) -> Iterator[Processes]:
    env = dict(private_env["env"])  # type: ignore[call-overload]
    procs = Processes(process_env(env), tmp_path)
    yield procs
    procs.stop_all()


def _status(job_id: str) -> str | None:
    job = fetch_job(job_id=job_id)
    return None if job is None else job.get_status(refresh=True).value


# --- 2. Redis crash under enqueue load ---------------------------------------------------------

AOF_LOSS_WINDOW_S = 2.0  # Redis's worst case for `appendfsync everysec` on a crash
LRU_CLOCK_RESOLUTION_S = 1.1  # Redis's LRU clock resolution is 1 s


@pytest.mark.timeout(240)
def test_redis_sigkill_under_enqueue_load_keeps_acknowledged_jobs(
    private_env: dict[str, object], private_processes: Processes
) -> None:
    server: RedisServer = private_env["primary"]  # type: ignore[assignment]
    acknowledged: list[tuple[str, float]] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            try:
                job_id = enqueue("email", "jobs.diagnostics.record", "kx:ran", str(n))
                acknowledged.append((job_id, time.monotonic()))
                n += 1
            except EnqueueUnavailable:
                time.sleep(0.05)

    private_processes.worker("email", name="w1")
    private_processes.scheduler()
    producer = threading.Thread(target=load, daemon=True)
    producer.start()
    wait_until(lambda: len(acknowledged) > 300, 60, "enqueue load running")
    time.sleep(2)
    killed_at = time.monotonic()
    server.kill()
    time.sleep(1)
    server.start()  # same port, same dir: what the AOF had on disk
    time.sleep(1)
    stop.set()
    producer.join(30)

    # everysec writes the AOF each second, and postpones a write up to 2 s while an fsync is slow.
    safe = [job_id for job_id, at in acknowledged if at < killed_at - AOF_LOSS_WINDOW_S]
    assert len(safe) > 300
    missing = [job_id for job_id in safe if fetch_job(job_id=job_id) is None]
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {missing[:3]}"
    # The same worker (not restarted) reconnects and drains everything that survived; a
    # job that was running at the kill is recovered by the scheduler's maintenance.
    pending = list(safe)

    def drained() -> bool:
        pending[:] = [job_id for job_id in pending if _status(job_id) != "finished"]
        return not pending

    wait_until(drained, 150, "every surviving job finished, without restarting the worker", interval_s=1)


# --- 3. Redis away for 10 s ----------------------------------------------------------------------


def _seed_user(engine: Engine) -> int:
    create_schema(engine)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(companies).values(id=1, name="Acme", plan="pro", created_at=now))
        conn.execute(
            insert(users).values(id=7, company_id=1, email="ada@example.com", name="Ada", created_at=now)
        )
    return 7


@pytest.mark.timeout(240)
def test_redis_away_for_ten_seconds(private_env: dict[str, object], private_processes: Processes) -> None:
    primary_server: RedisServer = private_env["primary"]  # type: ignore[assignment]
    cache_server: RedisServer = private_env["cache"]  # type: ignore[assignment]
    # What survives a SIGKILL under `appendfsync everysec` (up to 2 s of writes lost) is the
    # crash test's subject; here every acknowledged write is on disk, so the check is recovery.
    connections.primary().config_set("appendfsync", "always")
    engine = make_engine()
    user_id = _seed_user(engine)
    db = CachedDatabase(engine=engine, cache=CacheService(namespace="db"))
    sessions = SessionService()
    session_id = sessions.create("7", {"role": "admin"})
    before = [enqueue("email", "jobs.diagnostics.record", "kx:ran", f"before-{i}") for i in range(20)]
    assert db.get_user_by_id(user_id) is not None  # cached now
    worker = private_processes.worker("email", name="waiting")
    private_processes.scheduler()  # recovers the job that was running when Redis went away
    wait_until(lambda: _status(before[-1]) == "finished", 60, "worker running before the outage")
    before += [enqueue("email", "jobs.diagnostics.sleep", 3, "kx:ran", "in-flight")]
    wait_until(lambda: _status(before[-1]) == "started", 30, "a job runs when Redis goes away")

    primary_server.kill()
    cache_server.kill()
    outage_ends = time.monotonic() + 10
    while time.monotonic() < outage_ends:
        user = db.get_user_by_id(user_id)  # served from the database: the cache fails open
        assert user is not None and user.email == "ada@example.com"
        with pytest.raises(SessionStoreUnavailable):
            sessions.get(session_id)  # fails closed: never "logged in" unverified
        with pytest.raises(EnqueueUnavailable, match="REDIS_URL"):
            enqueue("email", "jobs.diagnostics.noop")
        time.sleep(1)
    assert worker.poll() is None, "a worker waits for Redis, it does not exit"

    primary_server.start()
    cache_server.start()
    after = enqueue("email", "jobs.diagnostics.record", "kx:ran", "after")
    assert sessions.get(session_id) is not None, "the session survived in the AOF"

    def cache_round_trip() -> bool:
        db.cache.set("probe", 1)  # a no-op while the breaker is open; it probes for the server's return
        return bool(db.cache.get("probe") == 1)

    wait_until(cache_round_trip, 60, "caching resumes without restarting the caller", interval_s=0.5)
    pending = [*before, after]

    def all_finished() -> bool:
        pending[:] = [job_id for job_id in pending if _status(job_id) != "finished"]
        return not pending

    wait_until(all_finished, 120, "no job lost", interval_s=1)


# --- 4. Memory pressure --------------------------------------------------------------------------


def test_full_primary_refuses_enqueues_and_loses_nothing(private_env: dict[str, object]) -> None:
    client = connections.primary()
    queued = [enqueue("email", "jobs.diagnostics.record", "k", f"queued-{i}") for i in range(50)]
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 64 * 1024)
    refused = 0
    for i in range(500):
        try:
            enqueue("email", "jobs.diagnostics.record", "k", "x" * 2048, kwargs={"token": str(i)})
        except EnqueueUnavailable as exc:
            assert "full" in str(exc) and "noeviction" in str(exc)
            refused += 1
    assert refused > 0
    client.config_set("maxmemory", 0)
    assert all(fetch_job(job_id=job_id) is not None for job_id in queued)
    assert set(queued) <= set(KryonixQueue("email", connection=client).job_ids)


def test_full_cache_evicts_cache_keys_only(private_env: dict[str, object]) -> None:
    cache_client = connections.cache_redis()
    primary_client = connections.primary()
    sessions = SessionService()
    session_ids = [sessions.create(str(i), {"n": i}) for i in range(50)]
    job_ids = [enqueue("email", "jobs.diagnostics.noop") for _ in range(50)]
    cache_client.config_set("maxmemory", 4 * 1024 * 1024)
    cache = CacheService(namespace="bulk")
    for i in range(3000):
        if i == 2990:
            # Redis's LRU clock ticks once a second: keys written within one second are equally
            # recent to it, and eviction picks among them at random. Let the clock tick, so the
            # last writes are more recent than the bulk (and so is the namespace's generation).
            time.sleep(LRU_CLOCK_RESOLUTION_S)
        cache.set(f"item:{i}", "v" * 2048)  # never raises: the cache evicts instead
    info = cache_client.info()
    assert int(info["evicted_keys"]) > 0
    assert cache.get("item:2999") == "v" * 2048, "recent keys stay"
    assert all(sessions.get(sid) is not None for sid in session_ids), "no session evicted"
    assert all(fetch_job(job_id=job_id) is not None for job_id in job_ids), "no job evicted"
    assert int(primary_client.info()["evicted_keys"]) == 0


# --- 5. Sentinel failover while workers process jobs ----------------------------------------------


@pytest.mark.timeout(300)
def test_sentinel_failover_while_workers_run(
    sentinel_cluster: SentinelCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {
        "REDIS_SENTINELS": sentinel_cluster.addresses,
        "REDIS_URL": sentinel_cluster.master.url,
        "CACHE_REDIS_URL": sentinel_cluster.master.url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    connections.reset_clients()
    procs = Processes(process_env(env), tmp_path)
    try:
        procs.worker("email", name="w1")
        procs.worker("email", name="w2")
        procs.scheduler()
        before = [enqueue("email", "jobs.diagnostics.record", "kx:ran", f"b{i}") for i in range(20)]
        wait_until(lambda: all(_status(j) == "finished" for j in before), 60, "jobs before failover")
        durable = enqueue("email", "jobs.diagnostics.sleep", 1, "kx:ran", "durable", durable=True, in_=5)

        sentinel_cluster.master.kill()
        after: list[str] = []

        def enqueue_after() -> bool:
            try:
                after.append(enqueue("email", "jobs.diagnostics.record", "kx:ran", f"a{len(after)}"))
            except EnqueueUnavailable:
                return False
            return len(after) >= 10

        wait_until(enqueue_after, 60, "enqueue works again after the failover", interval_s=0.5)
        wait_until(lambda: all(_status(j) == "finished" for j in after), 30, "processing resumed within 30 s")
        wait_until(lambda: _status(durable) == "finished", 60, "the durable job survived the failover")
        master = connections.primary().connection_pool.get_master_address()  # type: ignore[attr-defined]
        assert master[1] == sentinel_cluster.replica.port
    finally:
        procs.stop_all()


def test_durable_enqueue_without_a_replica_says_so(private_env: dict[str, object]) -> None:
    from jobs.errors import EnqueueNotDurable

    with pytest.raises(EnqueueNotDurable, match="no replica acknowledged"):
        enqueue("email", "jobs.diagnostics.noop", durable=True)


def test_redis_unreachable_client_is_typed(private_env: dict[str, object]) -> None:
    server: RedisServer = private_env["primary"]  # type: ignore[assignment]
    server.kill()
    with pytest.raises(EnqueueUnavailable) as info:
        enqueue("email", "jobs.diagnostics.noop")
    assert isinstance(info.value.__cause__, redis.ConnectionError)


@pytest.mark.timeout(120)
def test_scheduler_survives_redis_going_away_during_its_start_up(
    private_env: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis may fail over between the scheduler's first PING and its registration."""
    from workers.scheduler import SchedulerProcess

    server: RedisServer = private_env["primary"]  # type: ignore[assignment]
    monkeypatch.setattr(connections, "_process_role", connections._process_role)  # run() names the process
    scheduler = SchedulerProcess(definitions=[], tick_s=0.2, maintenance_interval_s=1.0)
    server.kill()
    thread = threading.Thread(target=scheduler.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # let start-up meet the outage; not a timing assertion
        assert thread.is_alive(), "the scheduler stopped on a Redis outage at start-up"
        server.start()  # same port and directory
        job_id = enqueue("email", "jobs.diagnostics.noop", in_=1)
        wait_until(lambda: _status(job_id) == "queued", 60, "the scheduler moved the due job after it")
    finally:
        scheduler.stop_event.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.timeout(180)
def test_worker_and_scheduler_started_during_an_outage_wait_for_redis(
    private_env: dict[str, object], private_processes: Processes
) -> None:
    """What supervisord runs survives a Redis that is down when it starts (plain `rq worker` exits)."""
    server: RedisServer = private_env["primary"]  # type: ignore[assignment]
    server.kill()
    plain = private_processes.worker("email", name="plain-rq")
    late = private_processes.start(sys.executable, "-m", "workers", "worker", "email", name="late-worker")
    scheduler = private_processes.start(sys.executable, "-m", "workers", "scheduler", name="late-scheduler")
    assert plain.wait(timeout=60) != 0, "plain `rq worker` gives up at once"
    wait_until(lambda: "waiting for Redis" in log_of(late), 60, "the worker says it waits")
    wait_until(lambda: "waiting for Redis" in log_of(scheduler), 60, "the scheduler says it waits")
    assert late.poll() is None and scheduler.poll() is None, log_of(late)

    server.start()  # same port and directory
    job_id = enqueue("email", "jobs.diagnostics.record", "kx:ran", "late")
    wait_until(lambda: _status(job_id) == "finished", 90, "the late worker ran the job")
    workers = Worker.all(connection=connections.primary())
    assert [w.pid for w in workers] == [late.pid], "the same process, now `rq worker` (exec)"
    assert scheduler.poll() is None, log_of(scheduler)
