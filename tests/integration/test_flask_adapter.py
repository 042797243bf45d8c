"""The Flask adapter served by a real gunicorn (2 workers) on loopback, driven with httpx.

The app is tests/integration/flask_app.py, using only `cache.integrations.flask`. The
session cookie is Secure, so it is sent back by hand over plain HTTP, as a browser
would send it over HTTPS.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable

import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from cache import keys
from cache.sessions.backchannel import BACKCHANNEL_LOGOUT_EVENT
from tests.integration.flask_app import AUDIENCE, ISSUER
from tests.integration.flask_fixtures import Serve, call, session_cookie, sign_in, whoami
from workers.dev.servers import RedisServer

pytestmark = [pytest.mark.sessions, pytest.mark.ratelimit]

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}]}


def test_the_cookie_holds_only_the_id_with_safe_flags(serve: Serve, primary: redis.Redis) -> None:
    base = serve()
    response = call("POST", f"{base}/login", data={"user": "alice"})
    sid, attributes = session_cookie(response)
    flags = {a.split("=")[0].lower(): a for a in attributes}
    assert {"secure", "httponly", "path", "samesite", "max-age"} <= set(flags)
    assert flags["path"] == "Path=/" and flags["samesite"] == "SameSite=Lax" and "domain" not in flags
    assert len(sid) < 64 and "alice" not in sid and "member" not in sid
    assert primary.exists(keys.session(sid))
    assert call("GET", f"{base}/me", sid).json() == {"user": "alice", "data": {"role": "member"}}
    assert "Cookie" in call("GET", f"{base}/me", sid).headers["vary"]


def test_login_never_keeps_a_planted_id(serve: Serve) -> None:
    base = serve()
    planted = sign_in(base, "mallory")
    victim = sign_in(base, "victim", cookie=planted)
    assert victim != planted
    assert whoami(base, planted) is None  # the planted id died at the login
    assert whoami(base, victim) == "victim"
    forged = call("GET", f"{base}/me", "forged-" + "A" * 36)
    assert (
        forged.json()["user"] is None and "Max-Age=0" in session_cookie(forged)[1]
    )  # a stale cookie is dropped


def test_rotation_gives_a_new_id_and_kills_the_old(serve: Serve) -> None:
    base = serve()
    sid = sign_in(base, "alice")
    assert call("POST", f"{base}/theme", sid, data={"theme": "dark"}).status_code == 204
    response = call("POST", f"{base}/sudo", sid)
    assert response.status_code == 204
    new_sid = session_cookie(response)[0]
    assert new_sid != sid and whoami(base, sid) is None
    me = call("GET", f"{base}/me", new_sid).json()
    assert me == {"user": "alice", "data": {"role": "admin", "theme": "dark"}}
    assert call("POST", f"{base}/sudo").status_code == 401


def test_logout_and_logout_everywhere(serve: Serve) -> None:
    base = serve()
    laptop, phone, tablet, bob = (sign_in(base, u) for u in ("alice", "alice", "alice", "bob"))
    response = call("POST", f"{base}/logout", tablet)
    assert response.status_code == 204 and "Max-Age=0" in session_cookie(response)[1]
    assert whoami(base, tablet) is None
    response = call("POST", f"{base}/logout-everywhere", laptop)
    assert response.json() == {"ended": 2} and "Max-Age=0" in session_cookie(response)[1]
    assert whoami(base, laptop) is None and whoami(base, phone) is None
    assert whoami(base, bob) == "bob"


def test_429_with_headers_and_headers_on_allowed_responses(serve: Serve) -> None:
    base = serve()
    allowed = [call("GET", f"{base}/limited") for _ in range(3)]
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert allowed[0].headers["RateLimit-Policy"] == '"limited";q=3;w=60'
    assert allowed[-1].headers["RateLimit"].startswith('"limited";r=0;')
    denied = call("GET", f"{base}/limited")
    assert denied.status_code == 429
    retry_after_s = int(denied.headers["Retry-After"])
    assert denied.json() == {"error": "rate_limited", "limit": "limited", "retry_after_s": retry_after_s}
    assert retry_after_s >= 1 and "RateLimit-Policy" in denied.headers
    assert denied.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("203.0.113.9:4711", "203.0.113.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("1.1.1.1, 203.0.113.10", "203.0.113.10"),  # the client's own entry on the left is ignored
        ("<script>, ::ffff:nonsense", "127.0.0.1"),
        ("unknown", "127.0.0.1"),
        ("a" * 4_000, "127.0.0.1"),  # gunicorn itself refuses lines over 8190 bytes (431)
    ],
)
def test_forwarded_addresses_behind_one_proxy_never_fail(
    serve: Serve, forwarded_for: str, client: str
) -> None:
    base = serve(TRUSTED_PROXIES="1")
    response = call("GET", f"{base}/limited", headers={"X-Forwarded-For": forwarded_for})
    assert response.status_code == 200 and response.json() == {"ip": client}


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(serve: Serve) -> None:
    base = serve()
    for n in range(3):
        response = call("GET", f"{base}/limited", headers={"X-Forwarded-For": f"198.51.100.{n}"})
        assert response.json() == {"ip": "127.0.0.1"}
    assert call("GET", f"{base}/limited", headers={"X-Forwarded-For": "198.51.100.99"}).status_code == 429


def test_user_and_api_presets_pick_their_identifier(serve: Serve) -> None:
    base = serve()
    sid = sign_in(base, "alice")
    assert call("GET", f"{base}/per-user", sid).headers["RateLimit-Policy"].startswith('"user";')
    assert call("GET", f"{base}/per-user").headers["RateLimit-Policy"].startswith('"ip";')
    keyed = call("GET", f"{base}/api", headers={"X-API-Key": "k-123"})
    assert keyed.status_code == 200 and keyed.headers["RateLimit-Policy"].startswith('"api";')
    assert call("GET", f"{base}/api").headers["RateLimit-Policy"].startswith('"ip";')


def test_redis_down_session_routes_503_static_routes_200(
    serve: Serve, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(name="flask-primary")
    base = serve(REDIS_URL=server.url)
    sid = sign_in(base, "alice")
    server.stop()
    for method, path in (("GET", "/me"), ("POST", "/login"), ("POST", "/logout"), ("POST", "/theme")):
        response = call(method, f"{base}{path}", sid, data={"user": "alice", "theme": "x"})
        assert response.status_code == 503, (path, response.text)
        assert response.json() == {"error": "session_store_unavailable"}
        assert response.headers["Retry-After"] == "5" and response.headers["Cache-Control"] == "no-store"
        assert "set-cookie" not in response.headers
    assert call("GET", f"{base}/static").status_code == 200
    assert call("GET", f"{base}/static", sid).status_code == 200  # a cookie alone reads nothing
    limited = call("GET", f"{base}/limited")  # the per-address preset fails open
    assert limited.status_code == 200 and "RateLimit-Policy" in limited.headers
    api = call("GET", f"{base}/api", headers={"X-API-Key": "k-1"})  # the API quota fails closed
    assert api.status_code == 503 and api.json() == {"error": "rate_limit_unavailable", "limit": "api"}
    assert api.headers["Retry-After"] == "5" and api.headers["Cache-Control"] == "no-store"
    server.start()
    assert whoami(base, sid) == "alice"


def test_an_enqueue_while_redis_is_down_answers_503_not_500(
    serve: Serve, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(name="flask-enqueue")
    base = serve(REDIS_URL=server.url)
    assert call("POST", f"{base}/welcome").status_code == 202
    server.stop()
    response = call("POST", f"{base}/welcome")  # bounded by REDIS_CALL_TIMEOUT, well inside TIMEOUT_S
    assert response.status_code == 503 and response.json() == {"error": "redis_unavailable"}
    assert response.headers["Retry-After"] == "5" and response.headers["Cache-Control"] == "no-store"
    server.start()
    assert call("POST", f"{base}/welcome").status_code == 202


def logout_token(**claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 120, "jti": uuid.uuid4().hex}
    payload["events"] = {BACKCHANNEL_LOGOUT_EVENT: {}}
    return jwt.encode(
        {**payload, **claims}, KEY, algorithm="RS256", headers={"kid": "k1", "typ": "logout+jwt"}
    )


def test_backchannel_logout_ends_the_idp_session(serve: Serve) -> None:
    base = serve(TEST_JWKS=json.dumps(JWKS))
    first, second = sign_in(base, "alice", idp_sid="idp-1"), sign_in(base, "alice")
    token = logout_token(sid="idp-1")
    response = call("POST", f"{base}/backchannel-logout", data={"logout_token": token})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert whoami(base, first) is None and whoami(base, second) == "alice"
    replayed = call("POST", f"{base}/backchannel-logout", data={"logout_token": token})
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_request"
    assert call("POST", f"{base}/backchannel-logout", data={"logout_token": "x.y.z"}).status_code == 400
    assert call("GET", f"{base}/backchannel-logout").status_code == 405


def bad_form_request(kind: str, token: str) -> dict[str, object]:
    """httpx arguments of a back-channel POST that is not one urlencoded `logout_token`."""
    if kind == "two fields":
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return {"content": f"logout_token={token}&logout_token={token}", "headers": form}
    if kind == "multipart":
        return {"files": {"logout_token": (None, token)}}
    return {"json": {"logout_token": token}}


@pytest.mark.parametrize("kind", ["two fields", "multipart", "json"])
def test_backchannel_logout_refuses_any_body_but_one_urlencoded_token(serve: Serve, kind: str) -> None:
    base = serve(TEST_JWKS=json.dumps(JWKS))
    sid = sign_in(base, "alice", idp_sid="idp-9")
    answer = call("POST", f"{base}/backchannel-logout", **bad_form_request(kind, logout_token(sid="idp-9")))
    assert (answer.status_code, answer.headers["Cache-Control"]) == (400, "no-store")
    assert answer.json() == {"error": "invalid_request", "error_description": "invalid logout token"}
    assert whoami(base, sid) == "alice"


def test_a_hung_redis_answers_503_within_the_call_bound(
    serve: Serve, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(name="flask-hung")
    base = serve(REDIS_URL=server.url)
    sid = sign_in(base, "alice")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        response = call("GET", f"{base}/me", sid)  # bounded by REDIS_CALL_TIMEOUT, well inside TIMEOUT_S
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert call("GET", f"{base}/static", sid).status_code == 200
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert whoami(base, sid) == "alice"
