"""What both SSE adapters share beyond the envelope: the per-user stream cap and the replay page size.

Framework-free, so the Flask and the Starlette adapter count and page the same way.
"""

from __future__ import annotations

import threading

DEFAULT_MAX_STREAMS = 4  # open streams per user per process: one user must not hold every thread or task
REPLAY_PAGE = 200  # backlog events per read; the next page is read once the client took this one


class StreamCounts:
    """Open event streams per user in one process, each user capped.

    A lock, since Flask's streams open and close on many threads (uncontended on one
    event loop, where it costs next to nothing).
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, user: str, limit: int) -> bool:
        """Count one more open stream of `user`, unless it already holds `limit`."""
        with self._lock:
            if self._open.get(user, 0) >= limit:
                return False
            self._open[user] = self._open.get(user, 0) + 1
            return True

    def release(self, user: str) -> None:
        with self._lock:
            left = self._open.pop(user, 1) - 1
            if left > 0:
                self._open[user] = left
