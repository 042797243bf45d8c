"""Outage logging of the rate limiter: a page per scope and minute while Redis is down, not a flood."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from cache.limits import FailurePolicy

logger = logging.getLogger("cache.ratelimit.service")


class OutageLog:
    """Warns on the first failure of a scope, then at most once per interval, and once on recovery."""

    def __init__(self, interval_s: float, monotonic: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.monotonic = monotonic
        self.lock = threading.Lock()
        self.down: dict[str, tuple[float, int]] = {}  # scope -> (last warning at, failures since)

    def failed(self, scope: str, policy: FailurePolicy, exc: BaseException) -> None:
        now = self.monotonic()
        with self.lock:
            last, count = self.down.get(scope, (-math.inf, 0))
            if now - last < self.interval_s:
                self.down[scope] = (last, count + 1)
                return
            self.down[scope] = (now, 0)
        logger.warning(
            "rate limit %r: Redis unavailable, failing %s (%d more failures since the last warning): %s: %s",
            scope,
            policy.value,
            count,
            type(exc).__name__,
            exc,
        )

    def succeeded(self, scope: str) -> None:
        if scope not in self.down:  # the common case, without taking the lock
            return
        with self.lock:
            if self.down.pop(scope, None) is None:
                return
        logger.info("rate limit %r: Redis reachable again", scope)
