"""BoundedRetry: nested retry loops never multiply, and no retry outlives the call (marker `security`).

redis-py runs a retry loop per command and another inside it per connect, handshake and
health-check PING, each with the full attempt count; against a server that never
answers that multiplied into minutes per call (issue 14, finding 9).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
import redis
from redis.backoff import ConstantBackoff, NoBackoff

from cache import connections
from cache.retry import BoundedRetry, blocking_s, call_deadline, remaining_s

pytestmark = pytest.mark.security


class Failing:
    """An operation that fails `failures` times with `error`, then returns "ok"."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or redis.ConnectionError("connection refused")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_a_loop_nested_in_another_runs_once_and_the_outer_one_retries() -> None:
    retry = BoundedRetry(NoBackoff(), 6)
    inner = Failing(failures=100)
    outer_attempts = 0
    failed: list[Exception] = []

    def attempt() -> str:
        nonlocal outer_attempts
        outer_attempts += 1
        return retry.call_with_retry(inner, failed.append)  # e.g. the reconnect inside a command

    with pytest.raises(redis.ConnectionError):
        retry.call_with_retry(attempt, lambda error: None)
    assert (outer_attempts, inner.calls) == (7, 7)  # not 7 x 7
    assert len(failed) == 7  # the inner failure handler (disconnect) still runs every time


def test_without_a_deadline_the_attempt_count_is_kept() -> None:
    operation = Failing(failures=3)
    assert BoundedRetry(NoBackoff(), 6).call_with_retry(operation, lambda error: None) == "ok"
    assert operation.calls == 4


def test_a_refused_password_is_not_retried() -> None:
    operation = Failing(failures=10, error=redis.AuthenticationError("invalid password"))
    with pytest.raises(redis.AuthenticationError):
        BoundedRetry(NoBackoff(), 6).call_with_retry(operation, lambda error: None)
    assert operation.calls == 1


def test_no_retry_starts_that_the_deadline_cannot_fit() -> None:
    retry = BoundedRetry(ConstantBackoff(0.05), 1000, call_timeout_s=0.3)
    operation = Failing(failures=10_000)
    start = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        retry.call_with_retry(operation, lambda error: None)
    assert time.monotonic() - start < 1.0  # 0.3 s of budget, generous margin
    assert operation.calls <= 7  # stopped by the deadline, not by its 1000 retries


def test_a_call_deadline_is_never_extended_by_a_nested_one() -> None:
    assert remaining_s() is None
    with call_deadline(0.5):
        outer = remaining_s()
        with call_deadline(60):
            inner = remaining_s()
        assert outer is not None and inner is not None and inner <= outer <= 0.5
    assert remaining_s() is None


@pytest.mark.parametrize(
    ("command", "seconds"),
    [
        (("WAIT", 1, 2000), 2.0),
        ((b"wait", b"1", b"500"), 0.5),
        (("WAITAOF", 1, 0, 1500), 1.5),
        (("BLPOP", "a", "b", 3), 3.0),
        (("BLMOVE", "src", "dst", "LEFT", "RIGHT", 0.5), 0.5),
        (("BZPOPMIN", "z", 0), math.inf),  # blocks forever: no deadline
        (("BLMPOP", 2, 1, "k", "LEFT"), 2.0),
        (("XREAD", "COUNT", 10, "BLOCK", 250, "STREAMS", "s", "$"), 0.25),
        (("XREADGROUP", "GROUP", "g", "c", "block", 0, "STREAMS", "s", ">"), math.inf),
        (("XREAD", "STREAMS", "s", "0"), None),
        (("GET", "k"), None),
        (("EVALSHA", "abc", 1, "WAIT"), None),
        (("WAIT", 1, "soon"), None),  # malformed: Redis refuses it at once
        (("BLPOP",), None),
        ((), None),
    ],
)
def test_blocking_commands_get_their_own_timeout_on_top_of_the_bound(
    command: tuple[object, ...], seconds: float | None
) -> None:
    assert blocking_s(command) == seconds


@pytest.mark.parametrize(
    ("process_role", "bound"),
    [("app", 1.0), ("dashboard", 1.0), ("metrics", 1.0), ("worker-email", None), ("maintenance", None)],
)
def test_the_shared_clients_are_bounded_in_web_processes_only(
    monkeypatch: pytest.MonkeyPatch,
    settings_env: Callable[..., None],
    process_role: str,
    bound: float | None,
) -> None:
    settings_env(REDIS_URL="redis://127.0.0.1:1/0")  # never contacted: clients connect lazily
    monkeypatch.setattr(connections, "_process_role", process_role)
    connections.reset_clients()
    try:
        assert getattr(connections.primary(), "call_timeout_s", None) == bound
    finally:
        connections.reset_clients()
