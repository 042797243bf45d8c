"""Helpers of the cache tests: a fake clock, a counting fetcher, and a child-process entry point.

Run as a script, this module is one of the "other processes" of the stampede test: it
prints `ready`, waits for a go signal in the PRIMARY Redis, calls `get_or_set` once
with a fetcher that counts its runs on the PRIMARY, and prints the JSON result.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FETCH_COUNT_KEY = "test:cache:fetch-count"
GO_KEY = "test:cache:go"
ARRIVED_KEY = "test:cache:arrived"  # participants past the start line
ARRIVALS_KEY = "test:cache:arrivals-expected"
FETCH_S = 0.5  # after the last arrival: time for every participant to reach the lease


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingFetcher:
    """A fetcher that counts its runs (thread-safe) and can block until released."""

    def __init__(
        self, value: Any = "fetched", *, block: bool = False, error: Exception | None = None
    ) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
        self.started.set()
        if not self.release.wait(30):
            raise TimeoutError("fetcher was never released")
        if self.error is not None:
            raise self.error
        return self.value


def shared_fetcher(primary: Any, tag: str) -> Any:
    """The stampede fetcher: counts runs on the PRIMARY, visible to every process."""

    def fetch() -> dict[str, Any]:
        primary.incr(FETCH_COUNT_KEY)
        # Hold the fetch until every participant has started (a loaded machine may take
        # longer than any fixed sleep to schedule 50 threads), then a little longer.
        expected = int(primary.get(ARRIVALS_KEY) or 0)
        deadline = time.monotonic() + 30
        while int(primary.get(ARRIVED_KEY) or 0) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(FETCH_S)
        return {"computed_by": tag}

    return fetch


def child_command(namespace: str, key: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), namespace, key]


def _child(namespace: str, key: str) -> None:
    from cache import connections
    from cache.appcache.service import CacheService

    service = CacheService(namespace=namespace, lock_ttl_s=30)
    primary = connections.primary()
    primary.ping()
    service.client.ping()  # connected before the go, so the start is simultaneous
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not primary.exists(GO_KEY):
        if time.monotonic() > deadline:
            raise TimeoutError("no go signal")
        time.sleep(0.001)
    primary.incr(ARRIVED_KEY)
    value = service.get_or_set(key, shared_fetcher(primary, f"process-{os.getpid()}"))
    print(json.dumps(value), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_ROOT))
    _child(sys.argv[1], sys.argv[2])
