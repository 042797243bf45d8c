"""Rate limit response headers, table-driven (marker `ratelimit`)."""

from __future__ import annotations

import pytest

from cache.ratelimit.headers import limit_item, policy_item, rate_limit_headers, retry_after_value
from cache.ratelimit.service import Decision, FailurePolicy, InvalidRateLimit, unavailable_decision

pytestmark = pytest.mark.ratelimit


def decision(
    *,
    allowed: bool = True,
    limit: int = 100,
    remaining: int = 99,
    reset: float = 60.0,
    retry: float = 0.0,
    window: float = 60.0,
    scope: str = "ip",
) -> Decision:
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=remaining,
        reset_after_s=reset,
        retry_after_s=retry,
        window_s=window,
        scope=scope,
    )


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (decision(), None),
        (decision(allowed=False, retry=12.0), "12"),
        (decision(allowed=False, retry=12.001), "13"),
        (decision(allowed=False, retry=0.001), "1"),
        (decision(allowed=False, retry=0.0), "1"),
    ],
)
def test_retry_after_rounds_up_and_is_at_least_one(d: Decision, expected: str | None) -> None:
    assert retry_after_value(d) == expected


@pytest.mark.parametrize(
    ("d", "policy", "limit"),
    [
        (decision(), '"ip";q=100;w=60', '"ip";r=99;t=60'),
        (
            decision(scope="api", limit=10_000, remaining=0, reset=0.2, window=3_600),
            '"api";q=10000;w=3600',
            '"api";r=0;t=1',
        ),
        (decision(window=0.5, reset=0.0), '"ip";q=100;w=1', '"ip";r=99;t=0'),
        (decision(window=1.5, reset=1.4999), '"ip";q=100;w=2', '"ip";r=99;t=2'),
    ],
)
def test_ietf_items(d: Decision, policy: str, limit: str) -> None:
    assert policy_item(d) == policy
    assert limit_item(d) == limit


def test_admitted_request_headers() -> None:
    assert rate_limit_headers(decision(remaining=41, reset=59.2)) == {
        "RateLimit-Policy": '"ip";q=100;w=60',
        "RateLimit": '"ip";r=41;t=60',
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "41",
        "X-RateLimit-Reset": "60",
    }


def test_rejected_request_headers() -> None:
    headers = rate_limit_headers(decision(allowed=False, remaining=0, reset=59.5, retry=0.25))
    assert headers["Retry-After"] == "1"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["RateLimit"] == '"ip";r=0;t=60'


def test_epoch_reset_when_now_is_given() -> None:
    headers = rate_limit_headers(decision(reset=30.5), now_s=1_700_000_000.7)
    assert headers["X-RateLimit-Reset"] == "1700000032"


def test_several_limits_list_all_and_report_the_tightest() -> None:
    by_ip = decision(scope="ip", limit=100, remaining=50, reset=30)
    by_user = decision(scope="user", limit=1_000, remaining=3, reset=55)
    headers = rate_limit_headers(by_ip, by_user)
    assert headers["RateLimit-Policy"] == '"ip";q=100;w=60, "user";q=1000;w=60'
    assert headers["RateLimit"] == '"ip";r=50;t=30, "user";r=3;t=55'
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("1000", "3")
    assert "Retry-After" not in headers


def test_several_limits_with_rejections_report_the_longest_wait() -> None:
    short = decision(scope="ip", allowed=False, remaining=0, retry=5)
    long = decision(scope="user", allowed=False, remaining=0, retry=40, limit=1_000)
    ok = decision(scope="api", remaining=0)
    headers = rate_limit_headers(ok, short, long)
    assert headers["Retry-After"] == "40"
    assert headers["X-RateLimit-Limit"] == "1000"


def test_degraded_decisions_report_only_what_is_known() -> None:
    opened = unavailable_decision(FailurePolicy.OPEN, scope="ip", limit=100, window_ms=60_000, error="E")
    assert rate_limit_headers(opened) == {"RateLimit-Policy": '"ip";q=100;w=60', "X-RateLimit-Limit": "100"}
    closed = unavailable_decision(FailurePolicy.CLOSED, scope="api", limit=10, window_ms=3_600_000, error="E")
    assert rate_limit_headers(closed) == {
        "RateLimit-Policy": '"api";q=10;w=3600',
        "X-RateLimit-Limit": "10",
        "Retry-After": "5",
    }


def test_a_scope_that_could_split_headers_is_refused() -> None:
    forged = decision(scope='ip";q=1\r\nSet-Cookie: a=b')
    with pytest.raises(InvalidRateLimit, match="scope must be"):
        rate_limit_headers(forged)
