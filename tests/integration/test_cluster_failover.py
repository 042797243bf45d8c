"""A master SIGKILLed: its replica takes over and the same clients work again (marker `cluster`).

The clients are the settings-built ones, kept across the failover: the sync and async
command clients and a real-time subscriber. They are not expected to ride out the
failover itself here (that is the workers' job, issue 18): only to work again once the
cluster has settled, without being rebuilt.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from cache import connections
from cache.connections import Role
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from tests.integration.realtime_fixtures import WAIT_S, Recorder
from tests.waiting import wait_until
from workers.dev.cluster import LocalCluster

pytestmark = pytest.mark.cluster

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


def test_a_web_call_to_a_master_that_never_answers_ends_within_its_bound(
    cluster: LocalCluster, cluster_primary: redis.Redis
) -> None:
    """SIGSTOP: the kernel accepts, nothing answers; REDIS_CALL_TIMEOUT (1 s) bounds the call."""
    import signal
    import time

    from cache.errors import RedisUnavailable
    from cache.settings import DEFAULT_CALL_TIMEOUT_S

    assert cluster_primary.get(KEY) is None  # the slot map is read, the pool connected
    stalled = cluster.master_of_key(KEY)
    assert stalled.process is not None
    stalled.process.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(RedisUnavailable, match="REDIS_CLUSTER_NODES"):
            with connections.translate_errors(Role.PRIMARY):
                cluster_primary.get(KEY)
        elapsed = time.monotonic() - start
    finally:
        stalled.process.send_signal(signal.SIGCONT)
    assert elapsed < 3 * DEFAULT_CALL_TIMEOUT_S  # generous: minutes (unbounded) fail
