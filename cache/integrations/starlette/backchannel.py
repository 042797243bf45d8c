"""OIDC back-channel logout (Keycloak) as a Starlette/FastAPI endpoint over `async_handle_logout_token`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Unpack
from urllib.parse import parse_qs

import redis.asyncio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from cache import connections
from cache.connections import Role
from cache.sessions.backchannel import (
    MAX_TOKEN_BYTES,
    NO_STORE,
    JwksSource,
    VerifyOptions,
    async_handle_logout_token,
)

__all__ = ["backchannel_logout"]

MAX_BODY_BYTES = 2 * MAX_TOKEN_BYTES  # `logout_token=` plus percent-encoding; more is junk


async def _form_token(request: Request) -> str | None:
    """The `logout_token` field of a urlencoded body; None for anything else or too large."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    values = parse_qs(body.decode("latin-1"), max_num_fields=8).get("logout_token", [])
    return values[0] if len(values) == 1 else None


def backchannel_logout(
    *,
    jwks: JwksSource,
    issuer: str,
    audience: str,
    client: redis.asyncio.Redis | None = None,
    **options: Unpack[VerifyOptions],
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint Keycloak POSTs logout tokens to (a Starlette `Route` with `methods=["POST"]`).

    Args:
        jwks: `jwks_client(url)` (built once per process) or a JWKS mapping.
        issuer, audience: the realm's issuer URL and this client's id.
        client: defaults to `connections.build_async_client(Role.PRIMARY)`, built on first use.
        options: `verify_logout_token`'s tuning (algorithms, leeway_s, max_age_s, ...).

    Answers 200 once the sessions are gone, 400 for a refused token, 503 while Redis is
    down (Keycloak retries), always with `Cache-Control: no-store`.
    """
    clients: list[redis.asyncio.Redis] = [client] if client is not None else []

    async def endpoint(request: Request) -> Response:
        try:
            token = await _form_token(request)
        except (ValueError, UnicodeError):
            token = None
        if token is None:
            return PlainTextResponse("expected a form with one logout_token", 400, headers=NO_STORE)
        if not clients:
            clients.append(connections.build_async_client(Role.PRIMARY))
        answer = await async_handle_logout_token(
            clients[0], token=token, jwks=jwks, issuer=issuer, audience=audience, **options
        )
        return PlainTextResponse(answer.body, answer.status, headers=dict(answer.headers))

    return endpoint
