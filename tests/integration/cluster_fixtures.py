"""A real 6-node Redis Cluster (3 masters, 3 replicas) for the `cluster` tests.

Fixtures:
    redis_cluster: the session's `workers.dev.cluster.LocalCluster`, started once per
        test process (under xdist, once per worker: about 3 s each, so a worker that runs
        no cluster test starts none). Its nodes run `redis.conf` plus the cluster options.
    cluster: `redis_cluster` flushed (FLUSHALL on every master) and settled for one test;
        a test that killed a node gets it restarted and the cluster settled first.
    cluster_env: the process settings pointed at `cluster` (`REDIS_CLUSTER_NODES`, for the
        PRIMARY and, sharing it, the CACHE role), the shared clients reset; yields the
        variables it set.
    cluster_primary: the settings-built shared PRIMARY client on the cluster
        (`connections.primary()`, a `cache.cluster.BoundedRedisCluster` typed as `redis.Redis`).

A test that kills a master must not assume which node serves which slot afterwards:
ask `cluster.master_of_key(key)` again after `cluster.wait_settled()`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from cache import connections
from cache.errors import RedisUnavailable
from cache.settings import reset_settings
from tests.waiting import wait_until
from workers.dev.cluster import LocalCluster

CLUSTER_VARIABLES = (
    "REDIS_URL",
    "CACHE_REDIS_URL",
    "REDIS_PASSWORD",
    "REDIS_SENTINELS",
    "REDIS_CLUSTER_NODES",
    "CACHE_REDIS_CLUSTER_NODES",
    "REDIS_CLUSTER_TLS",
)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> LocalCluster:
    """The session cluster, every node running, settled and flushed."""
    for node in redis_cluster.nodes:
        redis_cluster.restart(node)
    redis_cluster.wait_settled()
    redis_cluster.flushall()
    return redis_cluster


@pytest.fixture
def cluster_env(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = {"REDIS_CLUSTER_NODES": cluster.addresses}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    connections.reset_clients()
    wait_until(_primary_ready, 30, "the settings-built cluster client has read the slot map")
    yield env
    reset_settings()
    connections.reset_clients()


def _primary_ready() -> bool:
    """Build and warm the shared PRIMARY client: its first command reads the slot map, which
    can outlast the web tier's 1 s call bound on a loaded machine (the test would then see a
    cold-start outage, not the behaviour it checks)."""
    try:
        return bool(connections.primary().ping())
    except (*connections.REDIS_ERRORS, RedisUnavailable):
        connections.reset_clients()
        return False


@pytest.fixture
def cluster_primary(cluster_env: dict[str, str]) -> redis.Redis:
    return connections.primary()
