"""A Starlette app using only `cache.integrations.starlette`, served by uvicorn in the tests."""

from __future__ import annotations

import json
import os

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cache.integrations.starlette import (
    EventStreamResponse,
    RateLimitMiddleware,
    SessionMiddleware,
    backchannel_logout,
    load_session,
    login,
    logout,
    logout_everywhere,
    rate_limit,
    rotate_session,
)
from cache.limits import Preset
from jobs.email import enqueue_email

api_limit = rate_limit("api")  # keyed by X-API-Key, fails closed
login_limit = rate_limit(Preset(scope="login", limit=3, window_s=60, identifier_kind="ip"))


async def static(request: Request) -> Response:
    return PlainTextResponse("static")


async def api(request: Request) -> Response:
    await api_limit(request)
    return JSONResponse({"ok": True})


async def sign_in(request: Request) -> Response:
    await login_limit(request)
    idp_sid = request.query_params.get("sid")
    await login(request, request.query_params["user"], {"role": "member"}, idp_sid=idp_sid)
    return JSONResponse({"ok": True})


async def me(request: Request) -> Response:
    session = await load_session(request)
    return JSONResponse({"user_id": session.user_id, "data": dict(session) if session.user_id else None})


async def put(request: Request) -> Response:
    session = await load_session(request)
    for name, value in request.query_params.items():
        session[name] = value
    return JSONResponse({"ok": True})


async def rotate(request: Request) -> Response:
    await rotate_session(request, {"role": "admin"})
    return JSONResponse({"ok": True})


async def sign_out(request: Request) -> Response:
    await logout(request)
    return JSONResponse({"ok": True})


async def everywhere(request: Request) -> Response:
    return JSONResponse({"ended": await logout_everywhere(request)})


async def events(request: Request) -> Response:
    session = await load_session(request)
    if session.user_id is None:
        return JSONResponse({"error": "sign in"}, status_code=401)
    return EventStreamResponse(request, session.user_id, keep_alive_s=0.5)


async def welcome(request: Request) -> Response:  # an enqueue (blocking: off the loop); reads no session
    context = {"name": "Ana", "login_url": "https://x.example/login"}
    job_id = await run_in_threadpool(enqueue_email, "ana@example.com", "welcome", context)
    return JSONResponse({"job": job_id}, status_code=202)


async def demo_events(request: Request) -> Response:  # a stream that reads no session: Redis down reaches it
    return EventStreamResponse(request, "demo", keep_alive_s=0.5)


# The tests pass the IdP's JWKS and issuer in the environment.
logout_endpoint = backchannel_logout(
    jwks=json.loads(os.environ.get("TEST_JWKS", '{"keys": []}')),
    issuer=os.environ.get("TEST_ISSUER", "https://sso.example.test/realms/kryonix"),
    audience="kryonix-web",
)


app = Starlette(
    routes=[
        Route("/static", static),
        Route("/api", api),
        Route("/login", sign_in, methods=["POST"]),
        Route("/me", me),
        Route("/put", put, methods=["POST"]),
        Route("/rotate", rotate, methods=["POST"]),
        Route("/logout", sign_out, methods=["POST"]),
        Route("/logout-everywhere", everywhere, methods=["POST"]),
        Route("/events", events),
        Route("/welcome", welcome, methods=["POST"]),
        Route("/demo-events", demo_events),
        Route("/backchannel-logout", logout_endpoint, methods=["POST"]),
    ],
    middleware=[Middleware(SessionMiddleware), Middleware(RateLimitMiddleware, limits=("ip",))],
)

# An app with rate limits and no sessions: RateLimitMiddleware answers outages itself.
limits_only = Starlette(
    routes=[Route("/static", static), Route("/welcome", welcome, methods=["POST"])],
    middleware=[Middleware(RateLimitMiddleware, limits=("ip",))],
)
