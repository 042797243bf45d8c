"""The two example apps, served as in production, driven over HTTP with httpx.

`examples/flask_app.py` under `gunicorn -c examples/gunicorn.conf.py` and
`examples/fastapi_app.py` under `uvicorn --no-proxy-headers` have the same routes, so
each test body runs against both (`start_example` is parametrised over them).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import httpx
import pytest
import redis

from cache import keys
from cache.sessions.service import SessionService
from jobs.enqueue import fetch_job
from jobs.queues import get_queue
from tests.integration.examples_fixtures import Example, StartExample
from tests.integration.flask_fixtures import COOKIE, session_cookie
from workers.dev.servers import CACHE_CONF, RedisServer

pytestmark = [pytest.mark.sessions, pytest.mark.ratelimit]

LOGIN_POLICY = '"login";q=5;w=60'
SIGNED_OUT_ONLY = [("GET", "/me"), ("POST", "/promote"), ("POST", "/reports"), ("GET", "/events")]


def signed_in(app: Example, user: str, sid: str | None = None) -> str:
    response = app.login(user, sid)
    assert response.status_code == 200, response.text
    assert response.json() == {"user": user, "data": {"role": "member"}}
    return session_cookie(response)[0]


def whoami(app: Example, sid: str) -> str | None:
    """The signed-in user of `sid`, None when the id is dead (401, signed out)."""
    response = app.call("GET", "/me", sid)
    if response.status_code == 401:
        assert response.json() == {"error": "sign_in_required"}
        return None
    assert response.status_code == 200, response.text
    user: str = response.json()["user"]
    return user


def flags(response: httpx.Response) -> dict[str, str]:
    """The session cookie's attributes by lower-cased name, e.g. {"samesite": "SameSite=Lax"}."""
    return {a.split("=")[0].lower(): a for a in session_cookie(response)[1]}


def test_the_cookie_is_host_prefixed_and_holds_only_an_opaque_id(
    start_example: StartExample, primary: redis.Redis
) -> None:
    app = start_example()
    response = app.login("alice")
    assert response.status_code == 200
    (line,) = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    sid, cookie = session_cookie(response)[0], flags(response)
    assert {"secure", "httponly", "samesite", "path"} <= set(cookie), line
    assert cookie["samesite"] == "SameSite=Lax" and cookie["path"] == "Path=/" and "domain" not in cookie
    assert 32 <= len(sid) < 64 and sid.replace("-", "").replace("_", "").isalnum()
    assert "alice" not in line and "member" not in line
    assert primary.exists(keys.session(sid))  # the data lives in Redis, under the id
    assert app.call("GET", "/me", sid).json() == {"user": "alice", "data": {"role": "member"}}


def test_a_planted_or_unknown_id_is_never_adopted(start_example: StartExample) -> None:
    app = start_example()
    unknown = "A" * 43
    response = app.login("victim", unknown)
    assert session_cookie(response)[0] != unknown
    answer = app.call("GET", "/me", unknown)
    assert answer.status_code == 401 and answer.json() == {"error": "sign_in_required"}
    planted = signed_in(app, "mallory")  # a live id, planted in the victim's browser
    victim = signed_in(app, "victim", planted)
    assert victim != planted
    assert whoami(app, planted) is None  # the id sent before the login died at it
    assert whoami(app, victim) == "victim"


def test_a_dead_cookie_is_dropped_by_the_401(start_example: StartExample) -> None:
    app = start_example()
    for sid in ("A" * 43, signed_in(app, "alice")):
        app.call("POST", "/logout-everywhere", sid)  # the second id is dead from here on
        answer = app.call("GET", "/me", sid)
        assert answer.status_code == 401
        assert "Max-Age=0" in session_cookie(answer)[1]


def test_a_response_setting_a_new_id_is_never_stored(start_example: StartExample) -> None:
    app = start_example()
    login = app.login("alice")
    promote = app.call("POST", "/promote", session_cookie(login)[0])
    assert login.headers.get("Cache-Control") == "no-store"
    assert promote.headers.get("Cache-Control") == "no-store"
    assert "cookie" in promote.headers.get("Vary", "").lower()  # it read the session


def test_promote_rotates_the_id_and_keeps_the_data(start_example: StartExample, primary: redis.Redis) -> None:
    app = start_example()
    sid = signed_in(app, "alice")
    assert SessionService(primary).update(sid, {"theme": "dark"})  # data the app wrote earlier
    response = app.call("POST", "/promote", sid)
    assert response.status_code == 200, response.text
    new_sid = session_cookie(response)[0]
    assert new_sid != sid and whoami(app, sid) is None
    expected = {"user": "alice", "data": {"role": "admin", "theme": "dark"}}
    assert response.json() == expected
    assert app.call("GET", "/me", new_sid).json() == expected


def test_logout_everywhere_ends_every_session_of_the_user_only(start_example: StartExample) -> None:
    app = start_example()
    laptop, phone, bob = signed_in(app, "alice"), signed_in(app, "alice"), signed_in(app, "bob")
    response = app.call("POST", "/logout-everywhere", laptop)
    assert response.status_code == 200 and response.json() == {"ended": 2}
    assert "Max-Age=0" in session_cookie(response)[1]
    assert whoami(app, laptop) is None and whoami(app, phone) is None
    assert whoami(app, bob) == "bob"


def test_signed_out_requests_get_401_sign_in_required(start_example: StartExample) -> None:
    app = start_example()
    for method, path in [*SIGNED_OUT_ONLY, ("POST", "/logout-everywhere")]:
        response = app.call(method, path)
        assert response.status_code == 401, (path, response.text)
        assert response.json() == {"error": "sign_in_required"}, path
        assert response.headers["Cache-Control"] == "no-store", path


def test_the_sixth_login_from_one_address_is_429_with_headers(start_example: StartExample) -> None:
    app = start_example()
    allowed = [app.login(f"user{n}") for n in range(5)]
    assert [r.status_code for r in allowed] == [200] * 5
    for n, response in enumerate(allowed):
        assert LOGIN_POLICY in response.headers["RateLimit-Policy"]
        assert f'"login";r={4 - n};' in response.headers["RateLimit"]
    denied = app.login("user5")
    assert denied.status_code == 429, denied.text
    assert LOGIN_POLICY in denied.headers["RateLimit-Policy"]
    assert '"login";r=0;' in denied.headers["RateLimit"]
    assert int(denied.headers["Retry-After"]) >= 1
    assert COOKIE not in denied.headers.get("set-cookie", "")


def test_an_untrusted_forwarded_for_cannot_move_a_client_to_another_limit(
    start_example: StartExample,
) -> None:
    app = start_example()
    for n in range(5):
        spoofed = {"X-Forwarded-For": f"198.51.100.{n}", "Forwarded": f"for=198.51.100.{n}"}
        assert app.login("mallory", headers=spoofed).status_code == 200
    assert app.login("mallory", headers={"X-Forwarded-For": "198.51.100.99"}).status_code == 429


def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(start_example: StartExample) -> None:
    app = start_example(TRUSTED_PROXIES="1")
    for _ in range(5):
        assert app.login("alice", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    assert app.login("alice", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    assert app.login("bob", headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 200


def test_the_cached_summary_is_shared_and_answers_with_the_cache_down(
    start_example: StartExample, redis_factory: Callable[..., RedisServer]
) -> None:
    cache = redis_factory(CACHE_CONF, name="example-cache")
    app = start_example(CACHE_REDIS_URL=cache.url)
    first = app.call("GET", "/summary")
    assert first.status_code == 200 and set(first.json()) == {"generated_at"}
    assert [app.call("GET", "/summary").json() for _ in range(4)] == [first.json()] * 4  # any worker
    cache.stop()
    down = app.call("GET", "/summary")
    assert down.status_code == 200 and set(down.json()) == {"generated_at"}  # computed anyway


def test_reports_enqueues_a_job_for_the_signed_in_user(
    start_example: StartExample, primary: redis.Redis
) -> None:
    app = start_example()
    sid = signed_in(app, "alice")
    response = app.call("POST", "/reports", sid)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = fetch_job(primary, job_id=job_id)
    assert job is not None and job.origin == "report"
    assert job.func_name == "jobs.reports.jobs.generate_report" and job.args == ["users"]
    assert job.kwargs["requested_by"] == "alice" and job.kwargs["filters"] == {"status": "active"}
    assert job_id in get_queue(primary, name="report").job_ids


def assert_unavailable(response: httpx.Response, path: str) -> None:
    assert response.status_code == 503, (path, response.status_code, response.text)
    assert response.headers["Retry-After"] == "5", path
    assert "set-cookie" not in response.headers, path
    assert "error" in response.json(), path  # the body names the outage; its exact words vary


def test_with_the_primary_stopped_session_routes_503_static_and_cached_200(
    start_example: StartExample, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(name="example-primary")
    app = start_example(REDIS_URL=server.url)
    sid = signed_in(app, "alice")
    server.stop()
    for method, path in [*SIGNED_OUT_ONLY, ("POST", "/logout-everywhere")]:  # bounded by TIMEOUT_S
        assert_unavailable(app.call(method, path, sid), path)
    assert_unavailable(app.login("alice", sid), "/login")
    for cookie in (None, sid):  # a cookie alone reads nothing
        page = app.call("GET", "/", cookie)
        assert page.status_code == 200 and "Live events" in page.text and "set-cookie" not in page.headers
    assert app.call("GET", "/summary").status_code == 200
    server.start()
    assert whoami(app, sid) == "alice"  # the outage ended nobody's session


def test_with_the_primary_hung_a_session_route_503s_within_the_call_bound(
    start_example: StartExample, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(name="example-hung")
    app = start_example(REDIS_URL=server.url)
    sid = signed_in(app, "alice")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        assert_unavailable(app.call("GET", "/me", sid), "/me")  # REDIS_CALL_TIMEOUT, inside TIMEOUT_S
        assert app.call("GET", "/", sid).status_code == 200
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert whoami(app, sid) == "alice"
