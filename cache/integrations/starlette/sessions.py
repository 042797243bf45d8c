"""Server-side sessions for Starlette and FastAPI: a pure ASGI middleware over `AsyncSessionService`.

The cookie carries only the opaque id. Nothing reaches Redis until a route asks for the
session (`await load_session(request)` or a FastAPI `Depends(load_session)`), so routes
that never touch it keep working while Redis is down; a route that does gets a 503
(sessions fail closed), within the client's call timeout. Any other `RedisUnavailable` a
route raises (an enqueue while the PRIMARY is down) is a 503 `redis_unavailable` too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache.errors import RedisUnavailable
from cache.integrations import problems
from cache.integrations.problems import Problem
from cache.sessions.async_service import AsyncSessionService
from cache.sessions.core import Session, SignInRequired

__all__ = [
    "DEFAULT_COOKIE_NAME",
    "RequestSession",
    "SessionMiddleware",
    "load_session",
    "login",
    "logout",
    "logout_everywhere",
    "rotate_session",
]

DEFAULT_COOKIE_NAME = "__Host-session"  # __Host-: Secure, Path=/, no Domain; no subdomain can set it
_UNSET: Any = object()


class RequestSession(MutableMapping[str, Any]):
    """One request's session: the data as a mapping once loaded, writes saved before the response.

    `request.state.session` and `request.session` are this object.
    """

    def __init__(self, service: AsyncSessionService, cookie_id: str | None) -> None:
        self._service = service
        self._cookie_id = cookie_id
        self._loaded = False
        self.session: Session | None = None
        self._data: dict[str, Any] = {}
        self._changes: dict[str, Any] = {}
        self._removed: set[str] = set()
        self.new_cookie: str | None = _UNSET  # _UNSET: leave the cookie; None: delete it; str: set it

    async def load(self) -> RequestSession:
        """Read the session named by the cookie (once per request).

        Raises:
            SessionStoreUnavailable: Redis is down; the middleware answers 503.
        """
        if not self._loaded:
            self.session = await self._service.get(self._cookie_id) if self._cookie_id else None
            self._data = dict(self.session.data) if self.session else {}
            self._loaded = True
            if self.session is None and self._cookie_id:
                self.new_cookie = None  # a dead or forged id: drop it, never adopt it
        return self

    @property
    def loaded(self) -> bool:
        """True once the session was read from Redis in this request."""
        return self._loaded

    @property
    def user_id(self) -> str | None:
        return self._require().user_id if self.session else None

    def _require(self) -> Session:
        if not self._loaded:
            raise RuntimeError("await load_session(request) before reading the session")
        if self.session is None:
            raise SignInRequired("this needs a signed-in session")
        return self.session

    async def login(self, user_id: str | int, data: Mapping[str, Any] | None = None, **options: Any) -> None:
        """A new session with a fresh id (the old one, if any, is destroyed: no fixation)."""
        await self.load()
        if self.session is not None:
            await self._service.destroy(self.session.id)
        session_id = await self._service.create(user_id, data, **options)
        self.session = await self._service.get(session_id, touch=False)
        self._data = dict(self.session.data) if self.session else {}
        self._changes.clear()
        self._removed.clear()
        self.new_cookie = session_id

    async def rotate(self, changes: Mapping[str, Any] | None = None) -> None:
        """A new id for the same session (login, privilege change); the old id stops working."""
        session = self._require()
        await self.save()
        new_id = await self._service.rotate(session.id, changes=changes)
        if new_id is None:
            await self._forget()
            return
        self.session = await self._service.get(new_id, touch=False)
        self._data = dict(self.session.data) if self.session else {}
        self.new_cookie = new_id

    async def logout(self) -> None:
        await self.load()
        if self.session is not None:
            await self._service.destroy(self.session.id)
        await self._forget()

    async def logout_everywhere(self) -> int:
        """End every session of this user, this one included; returns how many were live."""
        session = self._require()
        count = await self._service.destroy_all_for_user(session.user_id)
        await self._forget()
        return count

    async def save(self) -> None:
        """Write pending changes (the middleware calls this before the response starts)."""
        if self.session is not None and (self._changes or self._removed):
            changes, removed = dict(self._changes), set(self._removed)
            self._changes.clear()
            self._removed.clear()
            await self._service.update(self.session.id, changes, remove=removed)

    async def _forget(self) -> None:
        self.session = None
        self._data = {}
        self._changes.clear()
        self._removed.clear()
        self.new_cookie = None

    def __getitem__(self, key: str) -> Any:
        self._require()
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._require()
        self._data[key] = value
        self._changes[key] = value
        self._removed.discard(key)

    def __delitem__(self, key: str) -> None:
        self._require()
        del self._data[key]
        self._changes.pop(key, None)
        self._removed.add(key)

    def __iter__(self) -> Iterator[str]:
        if not self._loaded:
            raise RuntimeError("await load_session(request) before reading the session")
        return iter(self._data)

    def __len__(self) -> int:
        if not self._loaded:
            raise RuntimeError("await load_session(request) before reading the session")
        return len(self._data)

    def __repr__(self) -> str:  # never the id
        return f"RequestSession(user_id={self.session.user_id if self.session else None!r})"


class SessionMiddleware:
    """Pure ASGI middleware: `request.state.session` / `request.session` is a `RequestSession`.

    A `RedisUnavailable` raised below before the response started is answered here: 503
    `session_store_unavailable` for the session store, `redis_unavailable` for any other.

    Args:
        app: the ASGI app.
        service: defaults to `AsyncSessionService()` (the PRIMARY Redis), built on first use.
        cookie_name: `__Host-session` by default; the prefix demands `secure=True` and no domain.
        secure, same_site, domain: the cookie's flags; it is always HttpOnly and Path=/.
        max_age_s: the cookie's Max-Age; None (default) ends it with the browser, the
            server-side idle and absolute timeouts still apply.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: AsyncSessionService | None = None,
        cookie_name: str = DEFAULT_COOKIE_NAME,
        secure: bool = True,
        same_site: str = "lax",
        domain: str | None = None,
        max_age_s: int | None = None,
    ) -> None:
        if cookie_name.startswith("__Host-") and (not secure or domain is not None):
            raise ValueError("a __Host- cookie must be secure=True with no domain; pick another cookie_name")
        if same_site.lower() not in {"lax", "strict", "none"}:
            raise ValueError(f"same_site must be lax, strict or none, got {same_site!r}")
        self.app = app
        self._service = service
        self.cookie_name = cookie_name
        flags = ["Path=/", "HttpOnly", f"SameSite={same_site.capitalize()}"]
        if secure:
            flags.append("Secure")
        if domain is not None:
            flags.append(f"Domain={domain}")
        self._flags = "; ".join(flags)
        self._max_age_s = max_age_s

    @property
    def service(self) -> AsyncSessionService:
        if self._service is None:  # built in the serving loop, never at import
            self._service = AsyncSessionService()
        return self._service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        handle = RequestSession(self.service, HTTPConnection(scope).cookies.get(self.cookie_name))
        scope["session"] = handle
        scope.setdefault("state", {})["session"] = handle
        started = False

        async def send_with_cookie(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                await handle.save()  # may raise SessionStoreUnavailable: still time for a 503
                started = True
                headers = MutableHeaders(scope=message)
                if handle.loaded:
                    headers.add_vary_header("Cookie")  # the answer depends on whose session it is
                if handle.new_cookie is not _UNSET:
                    headers.append("set-cookie", self._cookie(handle.new_cookie))
                if isinstance(handle.new_cookie, str):
                    headers["Cache-Control"] = "no-store"  # a new id must never sit in a shared cache
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        except RedisUnavailable as error:  # the session store's outage, or any other one of a route
            if started or scope["type"] != "http":
                raise
            await problem_response(problems.outage(error))(scope, receive, send)  # no cookie, no save
        except SignInRequired:
            if started or scope["type"] != "http":
                raise
            # Through `send_with_cookie`: a dead id the request carried is still dropped.
            await problem_response(problems.sign_in_required())(scope, receive, send_with_cookie)

    def _cookie(self, session_id: str | None) -> str:
        if session_id is None:
            return f"{self.cookie_name}=; Max-Age=0; {self._flags}"
        max_age = "" if self._max_age_s is None else f"; Max-Age={self._max_age_s}"
        return f"{self.cookie_name}={session_id}{max_age}; {self._flags}"


def problem_response(problem: Problem) -> Response:
    """`problem` (`cache.integrations.problems`) as a Starlette response."""
    return Response(problem.content, problem.status, problem.headers, media_type=problems.MEDIA_TYPE)


def _handle(request: HTTPConnection) -> RequestSession:
    handle = request.scope.get("session")
    if not isinstance(handle, RequestSession):
        raise RuntimeError("cache.integrations.starlette.SessionMiddleware is not installed")
    return handle


async def load_session(request: Request) -> RequestSession:
    """The request's session, loaded (a FastAPI dependency: `Depends(load_session)`)."""
    return await _handle(request).load()


async def login(
    request: Request, user_id: str | int, data: Mapping[str, Any] | None = None, **options: Any
) -> None:
    """Sign in: a new session and cookie; any session the request carried is destroyed.

    `options` go to `AsyncSessionService.create` (`ttl_s`, `absolute_ttl_s`, `idp_sid`, `idp_sub`).
    """
    await _handle(request).login(user_id, data, **options)


async def rotate_session(request: Request, changes: Mapping[str, Any] | None = None) -> None:
    """A new session id (after login or a privilege change); the old id is dead at once."""
    await (await load_session(request)).rotate(changes)


async def logout(request: Request) -> None:
    await _handle(request).logout()


async def current_user(request: Request) -> str:
    """The signed-in user's id, for routes that need one (a FastAPI dependency).

    Raises:
        SignInRequired: signed out; the middleware answers 401.
    """
    session = await load_session(request)
    if session.user_id is None:
        raise SignInRequired("this needs a signed-in session")
    return session.user_id


async def logout_everywhere(request: Request) -> int:
    """End every session of the signed-in user; returns how many were live."""
    return await (await load_session(request)).logout_everywhere()
