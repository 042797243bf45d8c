"""The one bounded wait the tests use: poll a condition, fail with a message on timeout.

Tests wait for behaviour, never assert speed: a timeout is generous, and reaching it is a
test failure that names what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


def wait_until(
    predicate: Callable[[], object], timeout_s: float, message: str, *, interval_s: float = 0.05
) -> None:
    """Poll `predicate` until it is true; fail the test, naming `message`, after `timeout_s`.

    The predicate is checked once more at the deadline, so a slow last poll still counts.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for: {message}")
        time.sleep(interval_s)


async def async_wait_until(
    predicate: Callable[[], object], timeout_s: float, message: str, *, interval_s: float = 0.01
) -> None:
    """`wait_until` inside an event loop: the same checks, sleeping without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for: {message}")
        await asyncio.sleep(interval_s)
