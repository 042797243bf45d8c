"""Child-process body for the shared rate-limit counters test (a `spawn` child imports it by name)."""

from __future__ import annotations

from multiprocessing.queues import Queue

from cache.connections import Role, build_client
from cache.ratelimit.service import FailurePolicy, RateLimiter, flush_ratelimit_stats
from cache.settings import Settings


def decide_and_flush(url: str, dead_url: str, identifier: str, limit: int, results: Queue[bool]) -> None:
    """Child body: `limit` admitted and 2 denied checks on `url`, one fail-open and one
    fail-closed check against `dead_url` (nothing listens there), then flush and report.

    Every client is built here, in the child, as a web worker builds its own.
    """
    client = build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": url}))
    limiter = RateLimiter(client, scope="shared")
    for _ in range(limit + 2):
        limiter.check(identifier, limit, 60)
    dead = build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": dead_url, "REDIS_RETRY_ATTEMPTS": "1"}))
    RateLimiter(dead, scope="shared").check(identifier, limit, 60)
    RateLimiter(dead, scope="shared", failure_policy=FailurePolicy.CLOSED).check(identifier, limit, 60)
    results.put(flush_ratelimit_stats(client))
    client.close()
    dead.close()
