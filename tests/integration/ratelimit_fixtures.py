"""Helpers for the rate limit tests: the reference model and the bodies of child processes.

The child-process functions live here, in an importable module, because a `spawn`
child imports its target by name; each child builds its own client from the URL.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from cache.connections import Role, build_client
from cache.ratelimit.service import RateLimiter
from cache.settings import Settings


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    used: int
    retry_after_ms: int
    reset_after_ms: int


@dataclass
class SlidingLog:
    """Executable specification of `cache/lua/ratelimit_check.lua`, in plain Python.

    The log holds (latest admission ms, units, first admission ms), oldest first. A
    request at `now` counts entries with latest admission > now - window; it is
    admitted when they plus its cost fit the limit, and joins the newest entry (which
    moves to now) when that entry's first admission is less than `resolution` ms ago.
    A denied request fits once enough of the oldest units have left the window.
    """

    entries: list[tuple[int, int, int]] = field(default_factory=list)

    def check(self, now: int, limit: int, window: int, cost: int, resolution: int = 1) -> Outcome:
        clock = now
        if self.entries and self.entries[-1][0] > now:
            now = self.entries[-1][0]
        self.entries = [entry for entry in self.entries if entry[0] > now - window]
        used = sum(units for _, units, _ in self.entries)
        if used + cost <= limit:
            units, first = cost, now
            if self.entries and now - self.entries[-1][2] < resolution:
                _, merged, first = self.entries.pop()
                units += merged
            self.entries.append((now, units, first))
            return Outcome(True, used + cost, 0, now + window - clock)
        need, freed = used + cost - limit, 0
        for at, units, _ in self.entries:
            freed += units
            if freed >= need:
                return Outcome(False, used, at + window - clock, self.entries[-1][0] + window - clock)
        raise AssertionError("cost > limit never reaches the model")


def limiter_for(url: str, *, scope: str = "test") -> RateLimiter:
    """A limiter on a client built in this process, as a web worker would have."""
    return RateLimiter(build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": url})), scope=scope)


def admit_many(url: str, start: Event, requests: int, ready: Queue[int], results: Queue[int]) -> None:
    """Child body: load the script, say so, wait for the start, then check one shared
    100/min key `requests` times and report how many were admitted."""
    limiter = limiter_for(url)
    limiter.check("warm-up", 100, 60)
    ready.put(os.getpid())
    start.wait(60)
    results.put(sum(limiter.check("shared", 100, 60).allowed for _ in range(requests)))


def burst_until_killed(url: str, max_checks: int, max_seconds: float) -> None:
    """Child body: a burst over many identifiers, bounded in count and time; the test SIGKILLs it."""
    limiter = limiter_for(url, scope="burst")
    deadline = time.monotonic() + max_seconds
    for i in range(max_checks):
        if time.monotonic() > deadline:
            return
        limiter.check(f"client-{i % 5_000}", 3, 30, cost=1 + i % 3)
