"""OIDC back-channel logout (Keycloak) as a Starlette/FastAPI endpoint over `async_handle_logout_token`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Unpack

import redis.asyncio
from starlette.requests import Request
from starlette.responses import Response

from cache import connections
from cache.connections import Role
from cache.integrations.backchannel_form import MAX_BODY_BYTES, bad_form, form_token
from cache.sessions.backchannel import JwksSource, LogoutResponse, VerifyOptions, async_handle_logout_token

__all__ = ["backchannel_logout"]


async def _body(request: Request) -> bytes | None:
    """The request body, or None once it is over MAX_BODY_BYTES (read no further)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


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

    Answers 200 once the sessions are gone, 400 (OIDC JSON error body) for a refused token
    or any body but a urlencoded form with one `logout_token`, 503 while Redis or the
    JWKS is unreachable (Keycloak retries), always with `Cache-Control: no-store`.
    """
    clients: list[redis.asyncio.Redis] = [client] if client is not None else []

    async def endpoint(request: Request) -> Response:
        body = await _body(request)
        token = None if body is None else form_token(request.headers.get("content-type"), body)
        if token is None:
            return _response(bad_form())
        if not clients:
            clients.append(connections.build_async_client(Role.PRIMARY))
        answer = await async_handle_logout_token(
            clients[0], token=token, jwks=jwks, issuer=issuer, audience=audience, **options
        )
        return _response(answer)

    return endpoint


def _response(answer: LogoutResponse) -> Response:
    media_type = "application/json" if answer.body else None  # the 400's OIDC error body
    return Response(answer.body, answer.status, headers=dict(answer.headers), media_type=media_type)
