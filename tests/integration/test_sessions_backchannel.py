"""OIDC back-channel logout against a real PRIMARY and a JWKS served on loopback (marker `sessions`).

A locally generated RSA key signs the logout tokens; a tiny http.server thread serves
its public half as the IdP's JWKS, fetched through `jwks_client` as in production.
Every refused token must leave every session alive.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache import keys
from cache.connections import Role, build_async_client
from cache.sessions.async_service import AsyncSessionService
from cache.sessions.backchannel import (
    BACKCHANNEL_LOGOUT_EVENT,
    LogoutResponse,
    LogoutTokenError,
    async_handle_logout_token,
    handle_logout_token,
    jwks_client,
    verify_logout_token,
)
from cache.sessions.service import SessionService

pytestmark = pytest.mark.sessions
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)

ISSUER = "https://sso.example.test/realms/kryonix"
AUDIENCE = "kryonix-web"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [
        {**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1", "use": "sig", "alg": "RS256"}
    ]
}


class _JwksHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(JWKS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/realms/kryonix/protocol/openid-connect/certs"
    server.shutdown()
    server.server_close()
    thread.join()


def make_token(
    *, key: Any = KEY, alg: str = "RS256", kid: str | None = "k1", drop: tuple[str, ...] = (), **claims: Any
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        "typ": "Logout",  # Keycloak's own claim: ignored
    }
    payload.update(claims)
    for name in drop:
        payload.pop(name)
    headers = {"typ": "logout+jwt"} if kid is None else {"kid": kid, "typ": "logout+jwt"}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def unsigned_token(**claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "jti": "x",
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    return f"{_part({'alg': 'none', 'kid': 'k1'})}.{_part({**payload, **claims})}."


def confused_token(**claims: Any) -> str:
    """HS256 keyed with the public key's PEM: the classic algorithm confusion (PyJWT will not make one)."""
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "jti": "y",
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    signing_input = f"{_part({'alg': 'HS256', 'kid': 'k1'})}.{_part({**payload, **claims})}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _part(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.fixture
def service(primary: redis.Redis) -> SessionService:
    return SessionService(primary)


@pytest.fixture
def logins(service: SessionService) -> dict[str, str]:
    """Alice on two devices through IdP session s1, one more through s2; Bob; a local login."""
    return {
        "alice-1": service.create("alice", idp_sid="s1", idp_sub="sub-alice"),
        "alice-2": service.create("alice", idp_sid="s1", idp_sub="sub-alice"),
        "alice-3": service.create("alice", idp_sid="s2", idp_sub="sub-alice"),
        "bob": service.create("bob", idp_sid="s3", idp_sub="sub-bob"),
        "local": service.create("alice"),
    }


def handle(primary: redis.Redis, token: object, jwks: Any) -> LogoutResponse:
    return handle_logout_token(primary, token=token, jwks=jwks, issuer=ISSUER, audience=AUDIENCE)


def alive(service: SessionService, logins: dict[str, str]) -> set[str]:
    return {name for name, sid in logins.items() if service.get(sid, touch=False) is not None}


@pytest.mark.parametrize(
    ("claims", "ended"),
    [
        ({"sid": "s1", "sub": "sub-alice"}, {"alice-1", "alice-2"}),
        ({"sid": "s1"}, {"alice-1", "alice-2"}),
        ({"sub": "sub-alice"}, {"alice-1", "alice-2", "alice-3"}),
        ({"sid": "s2", "sub": "sub-alice"}, {"alice-3"}),
        ({"sid": "unknown"}, set()),
    ],
)
def test_a_valid_token_ends_exactly_the_matching_sessions(
    primary: redis.Redis,
    service: SessionService,
    logins: dict[str, str],
    jwks_url: str,
    claims: dict[str, str],
    ended: set[str],
) -> None:
    given: dict[str, Any] = dict(claims)
    response = handle(primary, make_token(**given), jwks_client(jwks_url))
    assert (response.status, response.body, response.destroyed) == (200, "", len(ended))
    assert response.headers["Cache-Control"] == "no-store"
    assert alive(service, logins) == set(logins) - ended
    if "sid" in claims and ended:
        assert primary.exists(keys.idp_session_sessions(claims["sid"])) == 0


def _wrong(**claims: Any) -> str:
    return make_token(sid="s1", **claims)


REFUSED: dict[str, Callable[[], object]] = {
    "wrong signature": lambda: _wrong(key=OTHER_KEY),
    "unknown kid": lambda: _wrong(kid="k2"),
    "wrong aud": lambda: _wrong(aud="someone-else"),
    "wrong iss": lambda: _wrong(iss="https://evil.example.test/realms/kryonix"),
    "expired": lambda: _wrong(iat=int(time.time()) - 200, exp=int(time.time()) - 100),
    "iat too old": lambda: _wrong(iat=int(time.time()) - 3600, exp=int(time.time()) + 60),
    "iat in the future": lambda: _wrong(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
    "no iat": lambda: _wrong(drop=("iat",)),
    "no jti": lambda: _wrong(drop=("jti",)),
    "no aud": lambda: _wrong(drop=("aud",)),
    "missing events": lambda: _wrong(drop=("events",)),
    "events without the logout event": lambda: _wrong(events={"http://schemas.openid.net/event/other": {}}),
    "events value not an object": lambda: _wrong(events={BACKCHANNEL_LOGOUT_EVENT: "yes"}),
    "events not an object": lambda: _wrong(events=[BACKCHANNEL_LOGOUT_EVENT]),
    "nonce present": lambda: _wrong(nonce="n-0S6_WzA2Mj"),
    "neither sub nor sid": lambda: make_token(),
    "alg none": lambda: unsigned_token(sid="s1"),
    "HS256 with the public key as secret": lambda: confused_token(sid="s1"),
    "an access token's type": lambda: jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(time.time()),
            "jti": "j",
            "sid": "s1",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        },
        KEY,
        algorithm="RS256",
        headers={"kid": "k1", "typ": "at+jwt"},
    ),
    "not a JWT": lambda: "not.a.jwt",
    "not a string": lambda: 42,
    "oversized": lambda: "a" * 100_000,
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_invalid_token_is_refused_with_400_and_destroys_nothing(
    primary: redis.Redis, service: SessionService, logins: dict[str, str], jwks_url: str, case: str
) -> None:
    for jwks in (jwks_client(jwks_url), JWKS):
        response = handle(primary, REFUSED[case](), jwks)
        assert response.status == 400, case
        assert response.headers["Cache-Control"] == "no-store"
        assert json.loads(response.body) == {
            "error": "invalid_request",
            "error_description": "invalid logout token",
        }
        assert alive(service, logins) == set(logins)


def test_a_replayed_jti_is_refused_and_ends_no_later_session(
    primary: redis.Redis, service: SessionService, logins: dict[str, str], jwks_url: str
) -> None:
    token = make_token(sub="sub-bob")
    assert handle(primary, token, jwks_client(jwks_url)).status == 200
    again = service.create("bob", idp_sid="s4", idp_sub="sub-bob")
    replay = handle(primary, token, JWKS)
    assert replay.status == 400
    assert service.get(again) is not None
    marks = list(primary.scan_iter(match=keys.logout_token_jti("*")))
    assert len(marks) == 1
    assert 0 < primary.pttl(marks[0]) <= 330_000  # kept until the token is too old anyway


def test_verify_returns_the_claims_and_names_the_reason() -> None:
    claims = verify_logout_token(
        make_token(sid="s1", sub="sub-alice", jti="j-1"), jwks=JWKS, issuer=ISSUER, audience=AUDIENCE
    )
    assert (claims.issuer, claims.sid, claims.sub, claims.jti) == (ISSUER, "s1", "sub-alice", "j-1")
    with pytest.raises(LogoutTokenError, match="nonce") as info:
        verify_logout_token(_wrong(nonce="n"), jwks=JWKS, issuer=ISSUER, audience=AUDIENCE)
    assert info.value.reason == "a nonce claim is present"
    with pytest.raises(LogoutTokenError, match="exp"):
        verify_logout_token(
            _wrong(drop=("exp",)), jwks=JWKS, issuer=ISSUER, audience=AUDIENCE, require_exp=True
        )
    without_exp = verify_logout_token(_wrong(drop=("exp",)), jwks=JWKS, issuer=ISSUER, audience=AUDIENCE)
    assert without_exp.expires_at is None
    with pytest.raises(ValueError, match="asymmetric"):
        verify_logout_token("x", jwks=JWKS, issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"])


def test_an_unreachable_jwks_answers_503_and_destroys_nothing(
    primary: redis.Redis, service: SessionService, logins: dict[str, str]
) -> None:
    client = jwks_client("http://127.0.0.1:9/certs", timeout_s=0.5)  # discard port: refused
    response = handle(primary, make_token(sid="s1"), client)
    assert response.status == 503
    assert response.headers["Cache-Control"] == "no-store"
    assert alive(service, logins) == set(logins)


class _TrickleHandler(BaseHTTPRequestHandler):
    """A JWKS server that sends one byte every 0.2 s: no single read ever times out."""

    def do_GET(self) -> None:
        body = json.dumps(JWKS).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(len(body)):
            try:
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_a_trickling_jwks_answers_503_within_the_fetch_deadline(
    primary: redis.Redis, service: SessionService, logins: dict[str, str]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timeout_s = 1.0
    try:
        client = jwks_client(f"http://127.0.0.1:{server.server_address[1]}/certs", timeout_s=timeout_s)
        started = time.monotonic()
        response = handle(primary, make_token(sid="s1"), client)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (response.status, response.headers["Retry-After"]) == (503, "5")
    assert elapsed < 3 * timeout_s  # generous: the whole document (minutes at this pace) would fail
    assert alive(service, logins) == set(logins)


def test_a_store_outage_after_the_jti_answers_503_and_lets_the_retry_through(
    primary: redis.Redis, service: SessionService, logins: dict[str, str]
) -> None:
    dead = redis.Redis(host="127.0.0.1", port=9, retry=Retry(NoBackoff(), 0))  # the discard port: refused
    token = make_token(sid="s1")
    options: dict[str, Any] = {"jwks": JWKS, "issuer": ISSUER, "audience": AUDIENCE}
    failed = handle_logout_token(primary, token=token, service=SessionService(dead), **options)
    dead.close()
    assert (failed.status, failed.headers["Cache-Control"]) == (503, "no-store")
    assert alive(service, logins) == set(logins)
    retried = handle_logout_token(primary, token=token, **options)
    assert (retried.status, retried.destroyed) == (200, 2)
    assert handle_logout_token(primary, token=token, **options).status == 400  # now done: a replay


def _mark_pending(primary: redis.Redis, token: str) -> None:
    """What a `SET NX` that timed out on the client but reached Redis leaves behind."""
    claims = verify_logout_token(token, jwks=JWKS, issuer=ISSUER, audience=AUDIENCE)
    digest = hashlib.sha256(f"{claims.issuer}\0{claims.jti}".encode()).hexdigest()
    primary.set(keys.logout_token_jti(digest), b"pending", px=60_000)


def test_a_pending_jti_from_a_failed_delivery_is_processed_again(
    primary: redis.Redis, service: SessionService, logins: dict[str, str]
) -> None:
    token = make_token(sid="s1")
    _mark_pending(primary, token)
    retried = handle(primary, token, JWKS)
    assert (retried.status, retried.destroyed) == (200, 2)
    assert alive(service, logins) == {"alice-3", "bob", "local"}
    assert handle(primary, token, JWKS).status == 400


def test_the_async_handler_processes_a_pending_jti_and_refuses_a_done_one(
    primary: redis.Redis, service: SessionService, logins: dict[str, str]
) -> None:
    token = make_token(sub="sub-bob")
    _mark_pending(primary, token)

    async def main() -> list[tuple[int, int]]:
        client = build_async_client(Role.PRIMARY)
        options: dict[str, Any] = {"jwks": JWKS, "issuer": ISSUER, "audience": AUDIENCE}
        try:
            answers = [await async_handle_logout_token(client, token=token, **options) for _ in range(2)]
        finally:
            await client.aclose()
        return [(a.status, a.destroyed) for a in answers]

    assert asyncio.run(main()) == [(200, 1), (400, 0)]
    assert "bob" not in alive(service, logins)


def test_the_async_handler_answers_as_the_sync_one(
    primary: redis.Redis, service: SessionService, logins: dict[str, str], jwks_url: str
) -> None:
    async def main() -> list[tuple[int, int]]:
        client = build_async_client(Role.PRIMARY)
        jwks = jwks_client(jwks_url)
        options: dict[str, Any] = {"jwks": jwks, "issuer": ISSUER, "audience": AUDIENCE}
        token = make_token(sid="s1")
        try:
            answers = [
                await async_handle_logout_token(client, token=_wrong(nonce="n"), **options),
                await async_handle_logout_token(client, token=token, **options),
                await async_handle_logout_token(client, token=token, **options),
                await async_handle_logout_token(
                    client, token=make_token(sub="sub-bob"), service=AsyncSessionService(client), **options
                ),
            ]
        finally:
            await client.aclose()
        assert all(a.headers["Cache-Control"] == "no-store" for a in answers)
        return [(a.status, a.destroyed) for a in answers]

    assert asyncio.run(main()) == [(400, 0), (200, 2), (400, 0), (200, 1)]
    assert alive(service, logins) == {"alice-3", "local"}
