"""The Starlette adapter's pure parts: cookie configuration, the client address, limit names."""

from __future__ import annotations

import pytest
import redis.asyncio
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from cache.integrations.starlette import RateLimitMiddleware, SessionMiddleware, request_ip
from cache.integrations.starlette.ratelimit import _preset
from cache.ratelimit.async_service import AsyncRateLimiter

APP = PlainTextResponse("x")


@pytest.mark.parametrize("options", [{"secure": False}, {"domain": "example.com"}])
def test_a_host_prefixed_cookie_demands_secure_and_no_domain(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="__Host-"):
        SessionMiddleware(APP, **options)  # type: ignore[arg-type]


def test_a_plain_cookie_for_development_and_a_bad_same_site() -> None:
    middleware = SessionMiddleware(APP, cookie_name="session", secure=False)
    assert middleware._cookie("abc") == "session=abc; Path=/; HttpOnly; SameSite=Lax"
    assert "Max-Age=0" in middleware._cookie(None)
    with pytest.raises(ValueError, match="same_site"):
        SessionMiddleware(APP, same_site="sideways")


@pytest.mark.parametrize(
    ("client", "header", "expected"),
    [
        (("1.2.3.4", 80), "6.6.6.6", "1.2.3.4"),
        (("::ffff:1.2.3.4", 80), "", "1.2.3.4"),
        (("not-an-ip", 80), "6.6.6.6", None),
        (None, "6.6.6.6", None),
    ],
)
def test_request_ip_ignores_headers_without_trusted_proxies(
    client: tuple[str, int] | None, header: str, expected: str | None
) -> None:
    scope = {"type": "http", "headers": [(b"x-forwarded-for", header.encode())], "client": client}
    assert request_ip(Request(scope)) == expected


def test_limits_are_preset_names_or_presets() -> None:
    limiter = AsyncRateLimiter(redis.asyncio.Redis(port=1))  # never connects: no command is sent
    assert _preset(limiter, "api") is limiter.api
    with pytest.raises(ValueError, match="'ip', 'user', 'api'"):
        _preset(limiter, "everyone")
    assert RateLimitMiddleware(APP, limits=()).limits == ()
