"""Flask rate limits and the back-channel logout view; exported by `cache.integrations.flask`.

An adapter only: the client address comes from `client_ip` under the trusted-proxy
settings, the decision from `RateLimiter`, the headers from `rate_limit_headers`, the
logout from `handle_logout_token`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, Unpack

from flask import Response, current_app, make_response, request
from flask.typing import ResponseReturnValue

from cache.identifiers import IdentifierKind
from cache.integrations.backchannel_form import MAX_BODY_BYTES, bad_form, form_token
from cache.integrations.client_address import client_ip
from cache.integrations.flask_sessions import extension, problem_response, session_user_id
from cache.integrations.problems import rate_limit_denied
from cache.limits import Preset
from cache.ratelimit.core import Decision
from cache.ratelimit.headers import rate_limit_headers
from cache.sessions.backchannel import VerifyOptions, handle_logout_token
from cache.settings import get_settings

__all__ = ["API_KEY_HEADER", "UNKNOWN_CLIENT", "backchannel_logout_view", "rate_limit", "request_ip"]

P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]
API_KEY_HEADER = "X-API-Key"
UNKNOWN_CLIENT = "0.0.0.0"  # noqa: S104 - an identifier, not a bind address; peers with no IP address (a Unix socket and no trusted header) share one limit


def request_ip() -> str:
    """The client's address under `TRUSTED_PROXIES`; never raises on what a client sends."""
    found = client_ip(
        request.remote_addr,
        forwarded_for=request.headers.getlist("X-Forwarded-For"),
        forwarded=request.headers.getlist("Forwarded"),
        trusted=get_settings().trusted_proxies,
    )
    return found if found is not None else UNKNOWN_CLIENT


def _decide(preset: str | Preset, cost: int, api_key_header: str) -> Decision:
    """One check: by user or API key for those presets when the request names one, else by IP."""
    limiter = extension(current_app).rate_limiter
    if preset == "user":
        user_id = session_user_id()
        if user_id is not None:
            return limiter.limit_by_user(user_id, cost=cost)
    elif preset == "api":
        api_key = request.headers.get(api_key_header)
        if api_key:
            return limiter.limit_api(api_key, cost=cost)
    elif isinstance(preset, Preset):
        return limiter.check_preset(preset, request_ip(), cost=cost)
    elif preset != "ip":
        raise ValueError(f"rate_limit preset must be 'ip', 'user', 'api' or a Preset, got {preset!r}")
    return limiter.limit_by_ip(request_ip(), cost=cost)


def rate_limit(
    preset: str | Preset = "ip",
    *,
    limit: int | None = None,
    window_s: float | None = None,
    scope: str | None = None,
    cost: int = 1,
    api_key_header: str = API_KEY_HEADER,
) -> Callable[[View[P]], View[P]]:
    """Limit a view: a preset (`"ip"`, `"user"`, `"api"`), a `Preset`, or `limit` per `window_s`.

    `"user"` limits the signed-in user (the session is read), `"api"` the key in
    `api_key_header`; a request without one is limited by its address. `limit` and
    `window_s` make an own per-address limit under `scope` (default: the view's name).
    A denied request gets 429 JSON (503 when the policy failed closed on an outage);
    every response carries the `RateLimit-Policy`/`RateLimit` headers.
    """
    if limit is not None or window_s is not None:
        if limit is None or window_s is None:
            raise ValueError("rate_limit needs both limit and window_s")
        chosen: str | Preset | None = None
    else:
        chosen = preset
        if isinstance(chosen, str) and chosen not in ("ip", "user", "api"):
            raise ValueError(f"rate_limit preset must be 'ip', 'user', 'api' or a Preset, got {chosen!r}")

    def decorate(view: View[P]) -> View[P]:
        own = chosen
        if own is None:
            own = Preset(
                scope=scope or view.__name__,
                limit=limit or 0,
                window_s=window_s or 0,
                identifier_kind=IdentifierKind.IP,
            )

        @functools.wraps(view)
        def limited(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            decision = _decide(own, cost, api_key_header)
            if not decision.allowed:
                return problem_response(rate_limit_denied(decision))
            response = make_response(view(*args, **kwargs))
            response.headers.update(rate_limit_headers(decision))
            return response

        return limited

    return decorate


def backchannel_logout_view(
    *, jwks: Any, issuer: str, audience: str, **options: Unpack[VerifyOptions]
) -> Callable[[], Response]:
    """A view for Keycloak's "Backchannel logout URL" (register it for POST only).

    Args:
        jwks: `jwks_client(url)` (built once) or a JWKS dict.
        issuer, audience: what the logout token must name.
        options: `VerifyOptions` (`algorithms`, `leeway_s`, `max_age_s`, `require_exp`, `clock`).

    Only an `application/x-www-form-urlencoded` body with exactly one `logout_token` is
    read; any other body gets the 400 with the OIDC JSON error body, as in Starlette.
    """

    def backchannel_logout() -> Response:
        sessions = extension(current_app).sessions
        token = form_token(request.content_type, request.stream.read(MAX_BODY_BYTES + 1))
        if token is None:
            answer = bad_form()
        else:
            answer = handle_logout_token(
                sessions.client,
                token=token,
                jwks=jwks,
                issuer=issuer,
                audience=audience,
                service=sessions,
                **options,
            )
        response = Response(answer.body, status=answer.status, headers=dict(answer.headers))
        if answer.body:
            response.mimetype = "application/json"
        return response

    return backchannel_logout
