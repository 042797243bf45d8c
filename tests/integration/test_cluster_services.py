"""The services on a cluster client: cache, rate limits, real-time events (marker `cluster`).

Sessions and the RQ side need the cluster key layout (issue 18) and are tested there.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from cache import connections
from cache.appcache.service import CacheService
from cache.appcache.stats import CacheStats
from cache.connections import Role
from cache.ratelimit.service import RateLimiter
from cache.realtime.async_service import AsyncRealtimeService, AsyncSubscriber
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from tests.integration.realtime_fixtures import WAIT_S, Recorder
from workers.dev.cluster import LocalCluster

pytestmark = pytest.mark.cluster

T0 = 1_700_000_000_000


def test_cache_service_fills_hits_and_deletes_across_slots(cluster_env: dict[str, str]) -> None:
    service = CacheService(connections.cache_redis(), namespace="test", stats=CacheStats())
    calls: list[int] = []

    def fetch(n: int) -> dict[str, int]:
        calls.append(n)
        return {"n": n}

    for n in range(20):  # twenty keys: every master holds some
        assert service.get_or_set(f"item:{n}", lambda n=n: fetch(n), ttl_s=60) == {"n": n}
        assert service.get_or_set(f"item:{n}", lambda n=n: fetch(n), ttl_s=60) == {"n": n}
    assert calls == list(range(20))
    service.delete("item:3")
    assert service.get("item:3") is None and service.get("item:4") == {"n": 4}


def test_rate_limiter_counts_one_key_per_subject(cluster: LocalCluster, cluster_primary: redis.Redis) -> None:
    limiter = RateLimiter(cluster_primary, scope="test")
    for subject in ("alice", "bob", "carol"):
        decisions = [limiter.check(subject, 5, 60, now_ms=T0 + i) for i in range(7)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert {node.port for node in cluster.master_nodes()}  # every master is a live node


def test_realtime_publish_replay_and_a_subscriber_receiving(cluster_env: dict[str, str]) -> None:
    service = RealtimeService()
    earlier = [service.publish_user_event("u1", "step", {"n": n}) for n in range(5)]
    assert [e.id for e in service.events_since("u1")] == earlier
    assert service.latest_id("user:u1:events") == earlier[-1]
    recorder, system = Recorder(), Recorder()
    with Subscriber(service=service) as subscriber:
        subscriber.subscribe_user("u1", recorder, since="0-0")  # replays the five first
        subscriber.subscribe_system(system)
        assert subscriber.wait_ready(WAIT_S)
        live = service.publish_user_event("u1", "step", {"n": 5})
        system_id = service.publish_system_event("maintenance", {})
        assert recorder.wait_for(6) == [*earlier, live]
        assert system.wait_for(1) == [system_id]


def test_async_realtime_on_the_cluster(cluster_env: dict[str, str]) -> None:
    async def run() -> tuple[list[str], list[str]]:
        client = connections.build_async_client(Role.PRIMARY)
        service = AsyncRealtimeService(client)
        recorder = Recorder()
        try:
            first = await service.publish_user_event("u2", "hello", {})
            async with AsyncSubscriber(service=service) as subscriber:
                await subscriber.subscribe_user("u2", recorder, since="0-0")
                assert await subscriber.wait_ready(WAIT_S)
                second = await service.publish_user_event("u2", "again", {})
                for _ in range(int(WAIT_S * 20)):
                    if len(recorder.ids()) >= 2:
                        break
                    await asyncio.sleep(0.05)
            return recorder.ids(), [first, second]
        finally:
            await client.aclose()

    got, sent = asyncio.run(run())
    assert got == sent
