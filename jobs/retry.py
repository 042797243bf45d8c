"""Retry policy: exponential backoff with full jitter and a cap (pure; `rng` is injectable)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol


class UniformRandom(Protocol):
    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """`attempts` retries after the first run; the n-th waits uniformly in [0, min(cap, base*factor^n)].

    Full jitter (AWS architecture blog, "Exponential Backoff and Jitter") spreads a burst
    of failures over the whole window instead of retrying them in lockstep. The queues'
    own policies are in `jobs/queues.py`; docs/jobs.md ("Retry policy") lists them.
    """

    attempts: int = 5
    """Retries after the first run (0: none): a job runs at most `attempts + 1` times."""
    base_s: float = 10.0
    """The ceiling of the wait before the first retry, in seconds (> 0)."""
    factor: float = 2.0
    """How much the ceiling grows per retry (>= 1; 1 keeps it at `base_s`)."""
    cap_s: float = 3600.0
    """The ceiling never exceeds this, in seconds (>= `base_s`): late retries stay at most this far apart."""

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.base_s <= 0 or self.factor < 1 or self.cap_s < self.base_s:
            raise ValueError(f"invalid retry policy {self}")

    def ceiling(self, retry_number: int) -> float:
        """The upper bound of the wait before retry `retry_number` (0-based)."""
        return min(self.cap_s, self.base_s * self.factor**retry_number)

    def backoff(self, retry_number: int, rng: UniformRandom | None = None) -> int:
        """Seconds to wait before retry `retry_number`; at least 1 so it goes through the scheduler."""
        draw = rng if rng is not None else random
        return max(1, math.ceil(draw.uniform(0, self.ceiling(retry_number))))
