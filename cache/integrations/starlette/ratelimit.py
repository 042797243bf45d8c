"""Rate limits for Starlette and FastAPI: a pure ASGI middleware and a dependency over `AsyncRateLimiter`.

A limit is a preset name (`"ip"`, `"user"`, `"api"`) or an explicit `Preset`. Every
decision of a request (the middleware's and the dependencies') goes into the response
headers (`RateLimit-Policy`, `RateLimit`, `X-RateLimit-*`); a denial is a 429 JSON answer
with `Retry-After`, a closed limit that could not be checked a 503 (bodies in
`cache.integrations.problems`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache.errors import RedisUnavailable
from cache.identifiers import IdentifierKind
from cache.integrations.client_address import client_ip
from cache.integrations.problems import Problem, outage, rate_limit_denied
from cache.integrations.starlette.sessions import RequestSession, load_session, problem_response
from cache.limits import Preset
from cache.ratelimit.async_service import AsyncRateLimiter
from cache.ratelimit.core import Decision
from cache.ratelimit.headers import rate_limit_headers
from cache.settings import get_settings

__all__ = ["RateLimitMiddleware", "RateLimited", "rate_limit", "request_ip"]

Limit = str | Preset
Identify = Callable[[Request], Awaitable[str | None]]
_DECISIONS = "kryonix.ratelimit"  # scope key: the decisions taken for this request
_LIMITER = "kryonix.ratelimiter"  # scope key: the middleware's limiter, for dependencies


class RateLimited(Exception):
    """A limit said no; the middleware turns it into the 429 (or 503) response."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason or f"rate limit {decision.scope!r} exceeded")
        self.decision = decision


def request_ip(connection: HTTPConnection) -> str | None:
    """The client address under the `TRUSTED_PROXIES` settings; never raises on what a client sends."""
    headers = connection.headers
    return client_ip(
        connection.client.host if connection.client else None,
        forwarded_for=headers.getlist("x-forwarded-for"),
        forwarded=headers.getlist("forwarded"),
        trusted=get_settings().trusted_proxies,
    )


def _preset(limiter: AsyncRateLimiter, limit: Limit) -> Preset:
    if isinstance(limit, Preset):
        return limit
    presets = {"ip": limiter.by_ip, "user": limiter.by_user, "api": limiter.api}
    if limit not in presets:
        raise ValueError(f"a limit is 'ip', 'user', 'api' or a Preset, got {limit!r}")
    return presets[limit]


async def _default_identity(request: Request, preset: Preset) -> str | None:
    if preset.identifier_kind is IdentifierKind.IP:
        return request_ip(request)
    if preset.identifier_kind is IdentifierKind.SECRET:
        return request.headers.get("x-api-key") or None
    session = await load_session(request)
    return session.user_id


async def _decide(
    request: Request, limiter: AsyncRateLimiter, limit: Limit, identify: Identify | None, cost: int
) -> Decision | None:
    preset = _preset(limiter, limit)
    identifier = await identify(request) if identify else await _default_identity(request, preset)
    if identifier is None:
        return None  # nobody to limit by (a Unix-socket peer, an anonymous user): not limited
    decision = await limiter.check_preset(preset, identifier, cost=cost)
    request.scope.setdefault(_DECISIONS, []).append(decision)
    if not decision.allowed:
        raise RateLimited(decision)
    return decision


def rate_limit(
    limit: Limit, *, identify: Identify | None = None, cost: int = 1
) -> Callable[[Request], Awaitable[Decision | None]]:
    """A dependency checking one more limit for a route: `Depends(rate_limit("user"))`.

    Needs `RateLimitMiddleware` (with `limits=()` for dependencies only): it owns the limiter,
    adds the headers and answers the denial. `identify` picks the identifier (default: the
    client IP for IP presets, `X-API-Key` for secret ones, the session's user otherwise).
    """

    async def check(request: Request) -> Decision | None:
        limiter = request.scope.get(_LIMITER)
        if not isinstance(limiter, AsyncRateLimiter):
            raise RuntimeError("cache.integrations.starlette.RateLimitMiddleware is not installed")
        return await _decide(request, limiter, limit, identify, cost)

    return check


def _problem(error: RateLimited | RedisUnavailable, decisions: Sequence[Decision]) -> Problem:
    return rate_limit_denied(*decisions) if isinstance(error, RateLimited) else outage(error)


def _answers(error: Exception, scope: Scope) -> bool:
    """Whether this middleware answers `error`: a denial always, an outage only without sessions.

    With `SessionMiddleware` installed, that middleware answers outages, setting no cookie.
    """
    return isinstance(error, RateLimited) or not isinstance(scope.get("session"), RequestSession)


class RateLimitMiddleware:
    """Pure ASGI middleware: checks `limits` on every HTTP request and adds the headers.

    Args:
        app: the ASGI app.
        limits: preset names or `Preset`s checked on every request (default: `("ip",)`).
        limiter: defaults to `AsyncRateLimiter()` (the PRIMARY Redis), built on first use.
        identify: as for `rate_limit`.
        exempt: path prefixes not limited by `limits` (health checks, static files).

    Answers a denial 429 (503 `rate_limit_unavailable` for a closed limit Redis could not
    check). In an app without `SessionMiddleware` it also answers a `RedisUnavailable`
    raised below (503 `redis_unavailable`); with it, `SessionMiddleware` does.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Sequence[Limit] = ("ip",),
        limiter: AsyncRateLimiter | None = None,
        identify: Identify | None = None,
        exempt: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.limits = tuple(limits)
        self._limiter = limiter
        self._identify = identify
        self.exempt = tuple(exempt)

    @property
    def limiter(self) -> AsyncRateLimiter:
        if self._limiter is None:  # built in the serving loop, never at import
            self._limiter = AsyncRateLimiter()
        for limit in self.limits:
            _preset(self._limiter, limit)
        return self._limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[_LIMITER] = self.limiter
        decisions: list[Decision] = scope.setdefault(_DECISIONS, [])
        request = Request(scope, receive)
        try:
            if not scope["path"].startswith(self.exempt):
                for limit in self.limits:
                    await _decide(request, self.limiter, limit, self._identify, 1)
        except (RateLimited, RedisUnavailable) as error:
            if not _answers(error, scope):
                raise
            await problem_response(_problem(error, decisions))(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if decisions:
                    headers = MutableHeaders(scope=message)
                    for name, value in rate_limit_headers(*decisions).items():
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except (RateLimited, RedisUnavailable) as error:
            if started or not _answers(error, scope):
                raise
            await problem_response(_problem(error, decisions))(scope, receive, send)
