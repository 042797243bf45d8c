"""The no-op job of `python -m bench peers`, defined once per peer job system.

Each module builds its system's app at its documented defaults on the Redis in
`BENCH_PEERS_REDIS_URL`. The job adds one INCR to `bench:peers:done` (the bench waits
on that count and subtracts those N calls from the Redis commands per job): the peers
have no burst mode, so this is how the bench sees the last job finish.
"""

from __future__ import annotations

import functools
import os

import redis

DONE_KEY = "bench:peers:done"


def url() -> str:
    return os.environ["BENCH_PEERS_REDIS_URL"]


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(url())


def mark_done() -> None:
    """One INCR per job: the only work the peers' no-op job does."""
    _client().incr(DONE_KEY)
