"""The adapters' error answers: one spelling, compact JSON, no-store, Retry-After on every 503."""

from __future__ import annotations

import json

import pytest

from cache.errors import RedisUnavailable
from cache.integrations import problems
from cache.ratelimit.core import Decision
from cache.sessions.core import SessionStoreUnavailable

WHERE = {"role": "primary", "setting": "REDIS_URL"}


def decision(
    *, allowed: bool, degraded: bool = False, scope: str = "ip", retry_after_s: float = 7
) -> Decision:
    return Decision(
        allowed=allowed, limit=5, remaining=0, reset_after_s=retry_after_s, window_s=60,
        retry_after_s=0.0 if allowed else retry_after_s, scope=scope, degraded=degraded,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("problem", "status", "body"),
    [
        (
            problems.outage(SessionStoreUnavailable("down", **WHERE)),
            503,
            {"error": "session_store_unavailable"},
        ),
        (problems.outage(RedisUnavailable("down", **WHERE)), 503, {"error": "redis_unavailable"}),
        (problems.events_unavailable(), 503, {"error": "events_unavailable"}),
        (problems.shutting_down(), 503, {"error": "shutting_down"}),
        (problems.bad_last_event_id(), 400, {"error": "bad_last_event_id"}),
        (problems.sign_in_required(), 401, {"error": "sign_in_required"}),
        (problems.too_many_streams(4), 429, {"error": "too_many_streams", "max_streams": 4}),
    ],
)
def test_each_answer_has_its_code_status_and_headers(
    problem: problems.Problem, status: int, body: dict
) -> None:
    assert (problem.status, json.loads(problem.content)) == (status, body)
    assert problem.content == json.dumps(body, separators=(",", ":")).encode()
    assert problem.headers["Cache-Control"] == "no-store"
    assert ("Retry-After" in problem.headers) == (status == 503)


def test_a_denial_names_the_longest_real_wait_and_a_failed_closed_limit_is_503() -> None:
    denied = problems.rate_limit_denied(
        decision(allowed=True), decision(allowed=False, scope="ip", retry_after_s=3),
        decision(allowed=False, scope="login", retry_after_s=40),
    )  # fmt: skip
    assert denied.status == 429
    assert json.loads(denied.content) == {"error": "rate_limited", "limit": "login", "retry_after_s": 40}
    unavailable = problems.rate_limit_denied(decision(allowed=False, degraded=True, scope="api"))
    assert unavailable.status == 503 and unavailable.headers["Retry-After"] == "7"  # the decision's own
    assert json.loads(unavailable.content) == {"error": "rate_limit_unavailable", "limit": "api"}
    with pytest.raises(ValueError, match="denied decision"):
        problems.rate_limit_denied(decision(allowed=True))
