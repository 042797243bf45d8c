"""The web tier's error answers, spelled once for every adapter: status, headers, JSON body.

Flask and Starlette answer the same situation with the same bytes: `error` is a
snake_case machine code a client can switch on, extra fields are the same in both, and
every answer carries `Cache-Control: no-store` (every 503 also `Retry-After`). No
framework is imported here; each adapter only wraps a `Problem` in its response class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cache.errors import RedisUnavailable
from cache.ratelimit.core import Decision
from cache.ratelimit.headers import rate_limit_headers
from cache.sessions.core import SessionStoreUnavailable

__all__ = [
    "BAD_LAST_EVENT_ID",
    "EVENTS_UNAVAILABLE",
    "RATE_LIMITED",
    "RATE_LIMIT_UNAVAILABLE",
    "REDIS_UNAVAILABLE",
    "RETRY_AFTER_S",
    "SESSION_STORE_UNAVAILABLE",
    "SHUTDOWN_RETRY_AFTER_S",
    "SHUTTING_DOWN",
    "SIGN_IN_REQUIRED",
    "TOO_MANY_STREAMS",
    "Problem",
    "bad_last_event_id",
    "events_unavailable",
    "outage",
    "rate_limit_denied",
    "shutting_down",
    "sign_in_required",
    "too_many_streams",
]

RETRY_AFTER_S = 5  # what a 503 for a Redis outage tells the client; outages are short or paged
SHUTDOWN_RETRY_AFTER_S = 1  # a worker shutting down: another one (or its replacement) answers soon

SESSION_STORE_UNAVAILABLE = "session_store_unavailable"
REDIS_UNAVAILABLE = "redis_unavailable"
RATE_LIMITED = "rate_limited"
RATE_LIMIT_UNAVAILABLE = "rate_limit_unavailable"
EVENTS_UNAVAILABLE = "events_unavailable"
SHUTTING_DOWN = "shutting_down"
BAD_LAST_EVENT_ID = "bad_last_event_id"
TOO_MANY_STREAMS = "too_many_streams"
SIGN_IN_REQUIRED = "sign_in_required"

NO_STORE = {"Cache-Control": "no-store"}
MEDIA_TYPE = "application/json"


@dataclass(frozen=True)
class Problem:
    """One error answer: `status`, `headers` (besides Content-Type) and the JSON `body`."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str:
        code: str = self.body["error"]
        return code

    @property
    def content(self) -> bytes:
        """The body as compact JSON, the same bytes from every adapter."""
        return json.dumps(self.body, separators=(",", ":")).encode()


def _unavailable(code: str, *, retry_after_s: int = RETRY_AFTER_S) -> Problem:
    return Problem(503, {"error": code}, {**NO_STORE, "Retry-After": str(retry_after_s)})


def outage(error: RedisUnavailable) -> Problem:
    """503 for a view that raised `error`: the session store's own code, else `redis_unavailable`.

    Sessions fail closed with the more specific code; anything else (an enqueue while the
    PRIMARY is down, a cache read a view did not guard) is a plain Redis outage.
    """
    if isinstance(error, SessionStoreUnavailable):
        return _unavailable(SESSION_STORE_UNAVAILABLE)
    return _unavailable(REDIS_UNAVAILABLE)


def events_unavailable() -> Problem:
    """503 for an event stream whose start position could not be read (Redis down at connect)."""
    return _unavailable(EVENTS_UNAVAILABLE)


def shutting_down() -> Problem:
    """503 for a new event stream while the worker shuts down."""
    return _unavailable(SHUTTING_DOWN, retry_after_s=SHUTDOWN_RETRY_AFTER_S)


def sign_in_required() -> Problem:
    """401 for a view that needs a signed-in session and has none (`SignInRequired`)."""
    return Problem(401, {"error": SIGN_IN_REQUIRED}, dict(NO_STORE))


def bad_last_event_id() -> Problem:
    """400 for a `Last-Event-ID` (or `last_event_id`) that is no event id."""
    return Problem(400, {"error": BAD_LAST_EVENT_ID}, dict(NO_STORE))


def too_many_streams(limit: int) -> Problem:
    """429 for one more event stream than a user may hold open in this process (`max_streams`)."""
    return Problem(429, {"error": TOO_MANY_STREAMS, "max_streams": limit}, dict(NO_STORE))


def rate_limit_denied(decision: Decision, *more: Decision) -> Problem:
    """429 for a request a limit denied, 503 when only closed limits that could not be checked did.

    Args:
        decision, more: every decision of the request (the headers list them all); at
            least one was denied.

    Returns:
        `{"error":"rate_limited","limit":<scope>,"retry_after_s":N}` (429) or
        `{"error":"rate_limit_unavailable","limit":<scope>}` (503), with the
        `RateLimit-*` headers, `Retry-After` and `Cache-Control: no-store`.
    """
    decisions = (decision, *more)
    denied = [d for d in decisions if not d.allowed]
    if not denied:
        raise ValueError("rate_limit_denied needs a denied decision")
    headers = {**rate_limit_headers(*decisions), **NO_STORE}
    refused = [d for d in denied if not d.degraded]
    if not refused:
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
        return Problem(503, {"error": RATE_LIMIT_UNAVAILABLE, "limit": denied[0].scope}, headers)
    worst = max(refused, key=lambda d: d.retry_after_s)
    retry_after_s = int(headers.get("Retry-After", "1"))
    body = {"error": RATE_LIMITED, "limit": worst.scope, "retry_after_s": retry_after_s}
    return Problem(429, body, headers)
