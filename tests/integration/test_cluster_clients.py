"""Clients built from REDIS_CLUSTER_NODES on a real 6-node cluster (marker `cluster`)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from cache import connections
from cache.cluster import BoundedAsyncRedisCluster, BoundedRedisCluster
from cache.connections import REDIS_ERRORS, Role, is_cluster, translate_errors
from cache.errors import ClusterCommandError, RedisUnavailable
from cache.settings import Settings, get_settings
from tests.waiting import wait_until
from workers.dev.cluster import LocalCluster
from workers.dev.servers import RedisServer, free_port

pytestmark = pytest.mark.cluster

# Two keys in different hash slots (on different masters of a 3-master cluster).
KEY_A, KEY_B = "a", "b"


def test_the_shared_clients_are_cluster_clients_on_every_master(
    cluster: LocalCluster, cluster_primary: redis.Redis
) -> None:
    assert isinstance(cluster_primary, BoundedRedisCluster) and is_cluster(cluster_primary)
    assert cluster_primary.call_timeout_s == get_settings().call_timeout_s  # the web tier's bound
    assert cluster.master_of_key(KEY_A).port != cluster.master_of_key(KEY_B).port
    cluster_primary.set(KEY_A, "1")
    cluster_primary.set(KEY_B, "2")
    assert [cluster_primary.get(KEY_A), cluster_primary.get(KEY_B)] == [b"1", b"2"]
    owner = cluster.master_of_key(KEY_B).client()
    assert owner.get(KEY_B) == b"2"
    owner.close()
    assert connections.ping(Role.PRIMARY) >= 0
    cache = connections.cache_redis()
    assert is_cluster(cache), "the cache shares the primary's cluster while CACHE_REDIS_URL is unset"
    assert cache.get(KEY_A) == b"1"


def test_a_background_client_has_no_call_bound(cluster_env: dict[str, str]) -> None:
    client = connections.build_client(Role.PRIMARY, decode_responses=True)
    assert isinstance(client, BoundedRedisCluster) and client.call_timeout_s is None
    assert client.set("k", "v") and client.get("k") == "v"
    client.close()


def test_async_client_talks_to_the_cluster(cluster_env: dict[str, str]) -> None:
    async def run() -> tuple[object, object, float | None]:
        client = connections.build_async_client(Role.PRIMARY)
        assert isinstance(client, BoundedAsyncRedisCluster)
        try:
            await client.set(KEY_A, "x")
            await client.set(KEY_B, "y")
            return await client.get(KEY_A), await client.get(KEY_B), client.call_timeout_s
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ("x", "y", get_settings().call_timeout_s)


def test_a_message_published_is_received_by_the_pubsub_client(cluster_env: dict[str, str]) -> None:
    subscriber = connections.pubsub_client()
    pubsub = subscriber.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("user:1:events")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    publisher = connections.primary()
    # Classic pub/sub is broadcast over the cluster bus: any node's subscriber receives it.
    wait_until(lambda: publisher.publish("user:1:events", "hello") >= 0, 5, "PUBLISH")
    message = pubsub.get_message(timeout=5)
    while message is not None and message["type"] != "message":
        message = pubsub.get_message(timeout=5)
    pubsub.close()
    subscriber.close()
    assert message is not None and message["data"] == "hello"


def test_a_cross_slot_multi_raises_the_projects_error(cluster_primary: redis.Redis) -> None:
    pipe = cluster_primary.pipeline(transaction=True)
    pipe.set(KEY_A, "1")
    pipe.set(KEY_B, "2")
    with pytest.raises(ClusterCommandError, match="CrossSlotTransactionError") as caught:
        with translate_errors(Role.PRIMARY):
            pipe.execute()
    assert not isinstance(caught.value.__cause__, redis.RedisError)  # the very error RedisError misses
    assert isinstance(caught.value.__cause__, REDIS_ERRORS)


def test_a_cross_slot_script_raises_the_projects_error(cluster_primary: redis.Redis) -> None:
    with pytest.raises(ClusterCommandError, match="same key slot"):
        with translate_errors(Role.PRIMARY):
            cluster_primary.eval("return 1", 2, KEY_A, KEY_B)


def test_a_one_slot_multi_with_a_hash_tag_works(cluster_primary: redis.Redis) -> None:
    pipe = cluster_primary.pipeline(transaction=True)
    pipe.set("{user:1}:a", "1")
    pipe.incr("{user:1}:n")
    assert pipe.execute()[1] == 1  # (redis-py 8.1's cluster MULTI returns SET's raw b"OK")
    assert cluster_primary.get("{user:1}:a") == b"1"


def test_an_unreachable_cluster_names_the_setting() -> None:
    settings = Settings.from_env({"REDIS_CLUSTER_NODES": f"127.0.0.1:{free_port()}"})
    with pytest.raises(RedisUnavailable, match=r"REDIS_CLUSTER_NODES=127\.0\.0\.1") as caught:
        connections.build_client(Role.PRIMARY, settings, call_timeout_s=0.5)
    assert caught.value.setting == "REDIS_CLUSTER_NODES"


def test_a_single_server_given_as_a_cluster_node_is_refused_clearly(primary_server: RedisServer) -> None:
    settings = Settings.from_env({"REDIS_CLUSTER_NODES": f"127.0.0.1:{primary_server.port}"})
    with pytest.raises(RedisUnavailable, match=r"REDIS_CLUSTER_NODES.*Cluster mode is not enabled"):
        connections.build_client(Role.PRIMARY, settings)


def test_every_node_connection_carries_the_settings(cluster_primary: redis.Redis) -> None:
    """Timeouts, health checks, the name, and the deadline-bounded connection class, on every node."""
    from cache.retry import _BoundedConnection

    settings = get_settings()
    assert isinstance(cluster_primary, BoundedRedisCluster)
    cluster_primary.ping(target_nodes=BoundedRedisCluster.ALL_NODES)
    for node in cluster_primary.get_nodes():
        pool = node.redis_connection.connection_pool  # type: ignore[union-attr]
        connection = pool.get_connection()
        try:
            assert isinstance(connection, _BoundedConnection)
            assert connection.health_check_interval == settings.health_check_interval_s
            assert connection.socket_timeout == min(settings.socket_timeout_s, settings.call_timeout_s)
            assert connection.client_name is not None and connection.client_name.startswith(
                "kryonix:primary:"
            )
        finally:
            pool.release(connection)
