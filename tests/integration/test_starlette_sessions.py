"""The Starlette adapter served by uvicorn: cookies, fixation, rotation, logout, rate limits, outages."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http.cookies import SimpleCookie

import httpx
import pytest

from tests.integration.starlette_fixtures import Served
from workers.dev.servers import RedisServer

pytestmark = [pytest.mark.sessions, pytest.mark.ratelimit]

APP = "tests.integration.starlette_app:app"
COOKIE = "__Host-session"


def set_cookie(response: httpx.Response) -> SimpleCookie:
    cookies = SimpleCookie()
    for line in response.headers.get_list("set-cookie"):
        cookies.load(line)
    return cookies


def session_id(response: httpx.Response) -> str:
    return set_cookie(response)[COOKIE].value


def signed_in(http: httpx.Client, user: str = "42") -> str:
    response = http.post("/login", params={"user": user})
    assert response.status_code == 200, response.text
    return session_id(response)


def me(http: httpx.Client, sid: str) -> httpx.Response:
    return http.get("/me", headers={"cookie": f"{COOKIE}={sid}"})


@pytest.fixture
def served(redis_env: dict[str, str], uvicorn_app: Callable[..., Served]) -> Served:
    return uvicorn_app(APP)


def test_login_sets_a_host_prefixed_cookie_with_only_the_opaque_id(served: Served) -> None:
    with served.client() as http:
        response = http.post("/login", params={"user": "42"})
        morsel = set_cookie(response)[COOKIE]
        assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax"
        assert morsel["path"] == "/" and not morsel["domain"]
        # The opaque id and nothing else: 43 random base64url characters, which may well
        # contain "42" by chance (a substring check failed about one run in a hundred).
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", morsel.value), morsel.value
        assert me(http, morsel.value).json() == {"user_id": "42", "data": {"role": "member"}}


def test_a_forged_or_old_id_is_never_adopted(served: Served) -> None:
    with served.client() as http:
        planted = "A" * 43
        response = http.post("/login", params={"user": "7"}, headers={"cookie": f"{COOKIE}={planted}"})
        assert session_id(response) != planted
        answer = me(http, planted)
        assert answer.json()["user_id"] is None
        assert set_cookie(answer)[COOKIE]["max-age"] == "0"  # the dead id is dropped


def test_login_over_an_existing_session_destroys_it(served: Served) -> None:
    with served.client() as http:
        first = signed_in(http, "1")
        second = http.post("/login", params={"user": "2"}, headers={"cookie": f"{COOKIE}={first}"})
        assert session_id(second) != first
        assert me(http, first).json()["user_id"] is None


def test_writes_are_saved_and_rotation_kills_the_old_id(served: Served) -> None:
    with served.client() as http:
        sid = signed_in(http)
        assert http.post("/put", params={"theme": "dark"}, headers={"cookie": f"{COOKIE}={sid}"}).is_success
        rotated = http.post("/rotate", headers={"cookie": f"{COOKIE}={sid}"})
        new_sid = session_id(rotated)
        assert new_sid != sid
        assert me(http, sid).json()["user_id"] is None
        assert me(http, new_sid).json() == {"user_id": "42", "data": {"role": "admin", "theme": "dark"}}


def test_logout_everywhere_ends_every_session_of_the_user(served: Served) -> None:
    with served.client() as http:
        phone, laptop, other = signed_in(http, "42"), signed_in(http, "42"), signed_in(http, "9")
        answer = http.post("/logout-everywhere", headers={"cookie": f"{COOKIE}={phone}"})
        assert answer.json() == {"ended": 2}
        assert set_cookie(answer)[COOKIE]["max-age"] == "0"
        assert me(http, laptop).json()["user_id"] is None
        assert me(http, other).json()["user_id"] == "9"


def test_a_limit_denies_with_429_json_and_headers_on_every_response(served: Served) -> None:
    with served.client() as http:
        allowed = [http.post("/login", params={"user": "1"}) for _ in range(3)]
        denied = http.post("/login", params={"user": "1"})
    for response in allowed:
        assert response.status_code == 200
        assert '"login";q=3;w=60' in response.headers["ratelimit-policy"]
        assert '"ip";q=100;w=60' in response.headers["ratelimit-policy"]
        assert "ratelimit" in response.headers
    assert denied.status_code == 429
    retry_after_s = int(denied.headers["retry-after"])
    assert denied.json() == {"error": "rate_limited", "limit": "login", "retry_after_s": retry_after_s}
    assert retry_after_s >= 1 and denied.headers["cache-control"] == "no-store"
    assert '"login";r=0' in denied.headers["ratelimit"]


@pytest.mark.parametrize(
    "forwarded",
    ["1.2.3.4:5678", "evil, 6.6.6.6", "[::1]:443", "x" * 10_000, "unknown", ", , ,", "\x7f"],
)
def test_spoofed_or_odd_forwarding_headers_never_fail(served: Served, forwarded: str) -> None:
    with served.client() as http:
        response = http.get(
            "/static", headers={"x-forwarded-for": forwarded, "forwarded": f"for={forwarded}"}
        )
    assert response.status_code == 200
    assert '"ip";r=99' in response.headers["ratelimit"]  # keyed by the peer, not the header


def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(
    redis_env: dict[str, str], uvicorn_app: Callable[..., Served]
) -> None:
    served = uvicorn_app(APP, TRUSTED_PROXIES="1", RATELIMIT_BY_IP="2/60")
    with served.client() as http:
        for _ in range(2):
            assert http.get("/static", headers={"x-forwarded-for": "203.0.113.7:999"}).status_code == 200
        assert http.get("/static", headers={"x-forwarded-for": "203.0.113.7"}).status_code == 429
        assert http.get("/static", headers={"x-forwarded-for": "203.0.113.8"}).status_code == 200


def test_redis_down_session_routes_503_static_routes_200(
    redis_env: dict[str, str], uvicorn_app: Callable[..., Served], redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    served = uvicorn_app(APP, REDIS_URL=server.url)
    with served.client() as http:
        sid = signed_in(http)
        assert http.get("/api", headers={"x-api-key": "k-1"}).headers["ratelimit-policy"].startswith('"ip"')
        server.kill()
        for answer in (me(http, sid), http.post("/login", params={"user": "1"})):
            assert answer.status_code == 503 and answer.json() == {"error": "session_store_unavailable"}
            assert answer.headers["retry-after"] == "5" and answer.headers["cache-control"] == "no-store"
            assert "set-cookie" not in answer.headers
        closed = http.get("/api", headers={"x-api-key": "k-1"})  # the api preset fails closed
        assert closed.status_code == 503 and closed.json() == {
            "error": "rate_limit_unavailable",
            "limit": "api",
        }
        assert closed.headers["retry-after"] == "5" and closed.headers["cache-control"] == "no-store"
        assert '"api";q=10000;w=3600' in closed.headers["ratelimit-policy"]
        static = http.get("/static", headers={"cookie": f"{COOKIE}={sid}"})
        assert static.status_code == 200 and static.text == "static"
        assert "set-cookie" not in static.headers


@pytest.mark.parametrize(
    "app", [APP, "tests.integration.starlette_app:limits_only"], ids=["sessions", "limits-only"]
)
def test_an_enqueue_while_redis_is_down_answers_503_not_500(
    redis_env: dict[str, str],
    uvicorn_app: Callable[..., Served],
    redis_factory: Callable[..., RedisServer],
    app: str,
) -> None:
    server = redis_factory()
    served = uvicorn_app(app, REDIS_URL=server.url)
    with served.client() as http:
        assert http.post("/welcome").status_code == 202
        server.kill()
        answer = http.post("/welcome")  # bounded by REDIS_CALL_TIMEOUT, well inside the client's 15 s
        assert answer.status_code == 503 and answer.json() == {"error": "redis_unavailable"}
        assert answer.headers["retry-after"] == "5" and answer.headers["cache-control"] == "no-store"
        assert http.get("/static").status_code == 200


def test_backchannel_logout_ends_the_idp_session(
    redis_env: dict[str, str], uvicorn_app: Callable[..., Served]
) -> None:
    from tests.integration.test_sessions_backchannel import JWKS, make_token

    served = uvicorn_app(APP, TEST_JWKS=json.dumps(JWKS))
    with served.client() as http:
        sid = session_id(http.post("/login", params={"user": "42", "sid": "idp-1"}))
        kept = session_id(http.post("/login", params={"user": "42", "sid": "idp-2"}))
        token = make_token(sid="idp-1")
        answer = http.post("/backchannel-logout", data={"logout_token": token})
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
        assert http.post("/backchannel-logout", data={"logout_token": token}).status_code == 400  # replay
        assert http.post("/backchannel-logout", content=b"{}").status_code == 400
        assert me(http, sid).json()["user_id"] is None
        assert me(http, kept).json()["user_id"] == "42"


@pytest.mark.parametrize("kind", ["two fields", "multipart", "json"])
def test_backchannel_logout_refuses_bad_forms_as_flask_does(
    redis_env: dict[str, str], uvicorn_app: Callable[..., Served], kind: str
) -> None:
    from tests.integration.test_flask_adapter import bad_form_request
    from tests.integration.test_sessions_backchannel import JWKS, make_token

    served = uvicorn_app(APP, TEST_JWKS=json.dumps(JWKS))
    with served.client() as http:
        sid = session_id(http.post("/login", params={"user": "42", "sid": "idp-9"}))
        answer = http.post("/backchannel-logout", **bad_form_request(kind, make_token(sid="idp-9")))  # type: ignore[arg-type]
        assert (answer.status_code, answer.headers["cache-control"]) == (400, "no-store")
        assert answer.json() == {"error": "invalid_request", "error_description": "invalid logout token"}
        assert me(http, sid).json()["user_id"] == "42"
