"""Flask adapter: server-side `flask.session`, rate limits, SSE, back-channel logout.

`init_app(app)` and the view helpers below are the whole integration; docs/flask.md
shows an app using only them. The pieces live in `flask_sessions` and `flask_limits`.
"""

from __future__ import annotations

from flask import Flask

from cache.errors import RedisUnavailable
from cache.integrations.flask_events import close_event_streams, end_streams_on_sigterm, event_stream
from cache.integrations.flask_limits import backchannel_logout_view, rate_limit, request_ip
from cache.integrations.flask_sessions import (
    EXTENSION,
    Extension,
    ServerSession,
    ServerSessionInterface,
    SessionOptions,
    current_user,
    login,
    logout,
    logout_everywhere,
    rotate_session,
    session_user_id,
    sign_in_required,
    unavailable,
)
from cache.ratelimit.service import RateLimiter
from cache.sessions.core import SignInRequired
from cache.sessions.service import SessionService

__all__ = [
    "ServerSession",
    "ServerSessionInterface",
    "SessionOptions",
    "backchannel_logout_view",
    "close_event_streams",
    "current_user",
    "end_streams_on_sigterm",
    "event_stream",
    "init_app",
    "login",
    "logout",
    "logout_everywhere",
    "rate_limit",
    "request_ip",
    "rotate_session",
    "session_user_id",
]


def init_app(
    app: Flask,
    *,
    sessions: SessionService | None = None,
    limiter: RateLimiter | None = None,
    options: SessionOptions | None = None,
) -> None:
    """Make `flask.session` server-side, let `rate_limit` find its limiter, answer outages with 503.

    A view that raises `RedisUnavailable` (a session read, an `enqueue_*` while the
    PRIMARY is down) answers 503 `session_store_unavailable` or `redis_unavailable`
    (`cache.integrations.problems`) instead of 500.

    Args:
        app: the Flask app.
        sessions: the session service; by default one on the PRIMARY Redis, built on first use
            (so in each worker process after a fork, never at import).
        limiter: the rate limiter for `rate_limit`; likewise.
        options: cookie name and flags (default `__Host-session`, Secure, HttpOnly, SameSite=Lax).
    """
    app.extensions[EXTENSION] = Extension(
        options=options or SessionOptions(), session_service=sessions, limiter=limiter
    )
    app.session_interface = ServerSessionInterface()
    app.register_error_handler(RedisUnavailable, unavailable)
    app.register_error_handler(SignInRequired, sign_in_required)
