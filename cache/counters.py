"""Counters kept in memory on the hot path and added to a shared Redis hash in batches.

Counting must not cost a round trip, so each process counts in memory and hands its
unflushed increments to a writer at most once per flush interval. The protocol every
service follows: `take_pending` hands over the increments and starts a new interval, a
failed write gives them back (`restore_pending`) so the next flush carries them, and a
forked child starts from zero (it would otherwise flush its parent's increments again).
Pure bookkeeping: no I/O, no service imports.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", int, float)

__all__ = ["BufferedCounters"]


class BufferedCounters(Generic[K, V]):
    """Thread-safe counts of one process: totals since start and increments not yet flushed.

    Times are monotonic seconds; a method given no `now` reads `time.monotonic()`.

    Args:
        flush_interval_s: how long increments wait before `flush_due` says to flush.
        lazy_start: start the first interval at the first `flush_due` rather than now;
            for callers whose clock is injected per call (a test clock), not the process's.
    """

    def __init__(self, flush_interval_s: float, *, lazy_start: bool = False) -> None:
        self.flush_interval_s = flush_interval_s
        self._lazy_start = lazy_start
        self._lock = threading.Lock()
        self._totals: dict[K, V] = {}
        self._pending: dict[K, V] = {}
        self._next_flush_at = self._first_flush_at()

    def _first_flush_at(self) -> float | None:
        return None if self._lazy_start else time.monotonic() + self.flush_interval_s

    def incr(self, key: K, amount: V = 1) -> None:
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + amount
            self._pending[key] = self._pending.get(key, 0) + amount

    def incr_many(self, increments: Iterable[tuple[K, V]]) -> None:
        """Several increments at once: a flush takes all of them or none."""
        with self._lock:
            for key, amount in increments:
                self._totals[key] = self._totals.get(key, 0) + amount
                self._pending[key] = self._pending.get(key, 0) + amount

    def totals(self) -> dict[K, V]:
        """This process's totals since start (or the last `reset`); no I/O."""
        with self._lock:
            return dict(self._totals)

    def flush_due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        next_at = self._next_flush_at
        if next_at is None:
            self._next_flush_at = now + self.flush_interval_s
            return False
        return now >= next_at

    def take_pending(self, now: float | None = None) -> dict[K, V]:
        """Hand over the unflushed increments (non-zero ones) and start a new interval.

        Two threads never take the same increments: what is taken is gone at once.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            pending = {key: n for key, n in self._pending.items() if n}
            self._pending = {}
            self._next_flush_at = now + self.flush_interval_s
        return pending

    def restore_pending(self, pending: Mapping[K, V]) -> None:
        """Give back increments whose flush failed, so that the next flush carries them."""
        with self._lock:
            for key, n in pending.items():
                self._pending[key] = self._pending.get(key, 0) + n

    def flush(self, write: Callable[[dict[K, V]], object], now: float | None = None) -> None:
        """Hand the pending increments to `write` (one round trip); nothing pending, no call.

        Raises:
            Whatever `write` raises; the increments are then kept for the next flush.
        """
        pending = self.take_pending(now)
        if not pending:
            return
        try:
            write(pending)
        except BaseException:
            self.restore_pending(pending)
            raise

    async def flush_async(
        self, write: Callable[[dict[K, V]], Awaitable[object]], now: float | None = None
    ) -> None:
        """`flush` with a coroutine writer (an asyncio client's pipeline): the same protocol."""
        pending = self.take_pending(now)
        if not pending:
            return
        try:
            await write(pending)
        except BaseException:
            self.restore_pending(pending)
            raise

    def reset(self) -> None:
        """Zero the totals and the pending increments and start a new interval."""
        with self._lock:
            self._totals = {}
            self._pending = {}
            self._next_flush_at = self._first_flush_at()

    def reset_in_forked_children(self) -> None:
        """A child forked from this process starts from zero (for process-wide counters)."""
        os.register_at_fork(after_in_child=self.reset)
