"""Start-up waits for Redis instead of exiting (marker `ops`)."""

from __future__ import annotations

import pytest

from cache.errors import RedisUnavailable
from workers.startup import MAX_WAIT_S, wait_for_primary

pytestmark = pytest.mark.ops


def _down(setting: str = "REDIS_URL") -> RedisUnavailable:
    message = "primary Redis (REDIS_URL=redis://x): unreachable"
    return RedisUnavailable(message, role="primary", setting=setting)


def test_waits_with_doubling_capped_backoff_until_redis_answers() -> None:
    answers = [_down()] * 7 + [None]
    slept: list[float] = []

    def check() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    assert wait_for_primary(check, slept.append) == 7
    assert slept == [1, 2, 4, 8, 16, MAX_WAIT_S, MAX_WAIT_S]
    assert answers == []


def test_a_refused_password_is_not_waited_out() -> None:
    slept: list[float] = []

    def check() -> None:
        raise _down("REDIS_PASSWORD")

    with pytest.raises(RedisUnavailable, match="unreachable"):
        wait_for_primary(check, slept.append)
    assert slept == []


def test_no_wait_when_redis_answers() -> None:
    slept: list[float] = []
    assert wait_for_primary(lambda: None, slept.append) == 0
    assert slept == []
