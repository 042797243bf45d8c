"""A whole FastAPI app on `cache.integrations.starlette`; every line is a route or the adapter's set-up.

The routes of `examples.flask_app`, as FastAPI dependencies. Run it as in production:
`uvicorn examples.fastapi_app:app --no-proxy-headers` (the adapter reads forwarding
headers itself, under `TRUSTED_PROXIES`); streams end on SIGTERM by themselves.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from starlette.middleware import Middleware

from cache.appcache import async_cached
from cache.identifiers import IdentifierKind
from cache.integrations.starlette import (
    EventStreamResponse,
    RateLimitMiddleware,
    RequestSession,
    SessionMiddleware,
    current_user,
    load_session,
    login,
    logout_everywhere,
    rate_limit,
    rotate_session,
)
from cache.limits import Preset
from jobs.reports import enqueue_report

app = FastAPI(middleware=[Middleware(SessionMiddleware), Middleware(RateLimitMiddleware, limits=("ip",))])
User = Annotated[str, Depends(current_user)]  # the signed-in user; 401 when signed out
Session = Annotated[RequestSession, Depends(load_session)]
LOGIN_LIMIT = Preset(scope="login", limit=5, window_s=60, identifier_kind=IdentifierKind.IP)  # per address
LIVE_PAGE = Path(__file__).with_name("live.html").read_text()


class SignIn(BaseModel):
    user: str


@async_cached(ttl_s=60)
async def summary() -> dict[str, str]:
    return {"generated_at": dt.datetime.now(dt.UTC).isoformat()}  # stands in for a slow query


@app.get("/", response_class=HTMLResponse)
async def live_page() -> str:
    return LIVE_PAGE  # static: answers while Redis is down


@app.post("/login", dependencies=[Depends(rate_limit(LOGIN_LIMIT))])
async def sign_in(request: Request, form: SignIn) -> dict[str, Any]:
    await login(request, form.user, {"role": "member"})  # call it once your IdP vouched for the user
    return {"user": form.user, "data": dict(await load_session(request))}


@app.get("/me", dependencies=[Depends(rate_limit("user"))])
async def me(user: User, session: Session) -> dict[str, Any]:
    return {"user": user, "data": dict(session)}


@app.post("/promote")
async def promote(request: Request, user: User, session: Session) -> dict[str, Any]:
    await rotate_session(request, {"role": "admin"})  # a new id, the old one dead at once
    return {"user": user, "data": dict(session)}


@app.post("/logout-everywhere")
async def everywhere(request: Request, user: User) -> dict[str, int]:
    return {"ended": await logout_everywhere(request)}  # every session of the user


@app.get("/summary")
async def cached_summary() -> dict[str, str]:
    return await summary()  # from the cache for 60 s; computed anyway while it is down


@app.post("/reports", status_code=202, dependencies=[Depends(rate_limit("user"))])
def new_report(user: User) -> dict[str, str]:  # plain `def`: FastAPI runs it off the event loop
    return {"job_id": enqueue_report("users", {"status": "active"}, requested_by=user)}


@app.get("/events")
async def events(request: Request, user: User) -> Response:
    return EventStreamResponse(request, user)  # the user from the session, never from the request
