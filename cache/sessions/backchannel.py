"""OpenID Connect Back-Channel Logout 1.0 (Keycloak): verify a logout token, end its sessions.

The IdP POSTs a signed JWT (`logout_token`) to the RP when a user signs out there.
`verify_logout_token` checks it as section 2.6 requires, with PyJWT: the signature
against the IdP's JWKS (the algorithm comes from the key, never `none` nor a shared
secret), `iss`, `aud`, `iat` (bounded skew and age), `exp` when present, the `events`
claim, `sub` and/or `sid`, no `nonce`. `handle_logout_token` adds the `jti` replay check
(pending, then done once the sessions are destroyed; kept until the token could no
longer be accepted) and destroys the matching sessions, answering what section 2.8 asks
(200, 400, 503, `Cache-Control: no-store`);
`async_handle_logout_token` is its asyncio twin. Framework-neutral: a Flask or Starlette
view passes the form field and returns the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

import jwt
import redis.asyncio
from redis import Redis

from cache import keys
from cache.sessions.async_service import AsyncSessionService
from cache.sessions.calls import fail_closed
from cache.sessions.core import SessionError, SessionStoreUnavailable, check_idp_value
from cache.sessions.jwks import jwks_client
from cache.sessions.service import SessionService

__all__ = [
    "BACKCHANNEL_LOGOUT_EVENT",
    "JwksSource",
    "JwksUnavailable",
    "LogoutClaims",
    "LogoutResponse",
    "LogoutTokenError",
    "VerifyOptions",
    "async_handle_logout_token",
    "claim_jti",
    "finish_jti",
    "handle_logout_token",
    "jwks_client",
    "refused",
    "verify_logout_token",
]

log = logging.getLogger(__name__)

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
DEFAULT_ALGORITHMS = ("RS256",)  # Keycloak's default; pass more (ES256, PS256 ...) to allow them
# Asymmetric only: a shared-secret (HS*) key in a JWKS would let anyone holding it sign.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_LEEWAY_S = 30.0  # clock skew allowed between the IdP and us
DEFAULT_MAX_AGE_S = 300.0  # an `iat` older than this is refused: logout tokens are sent at once
MAX_TOKEN_BYTES = 16 * 1024  # a logout token is a few hundred bytes; refuse junk before parsing
MAX_JTI_LENGTH = 256
ACCEPTED_TYPES = frozenset({"logout+jwt", "jwt"})  # `typ` header, when present (case-insensitive)
NO_STORE = {"Cache-Control": "no-store"}

JwksSource = jwt.PyJWKClient | Mapping[str, Any]  # a client fetching the IdP's JWKS URL, or a JWKS dict


class VerifyOptions(TypedDict, total=False):
    """`verify_logout_token`'s tuning, passed through by the handlers."""

    algorithms: Collection[str]
    leeway_s: float
    max_age_s: float
    require_exp: bool
    clock: Callable[[], float]


class LogoutTokenError(SessionError):
    """The logout token is refused; `reason` says why (for logs, never for the response body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"logout token refused: {reason}")
        self.reason = reason


class JwksUnavailable(SessionError):
    """The IdP's JWKS could not be fetched: the token can be neither accepted nor refused."""


@dataclass(frozen=True, kw_only=True)
class LogoutClaims:
    """What a verified logout token says; times in seconds since the epoch."""

    issuer: str
    jti: str
    issued_at: float
    expires_at: float | None
    sid: str | None
    sub: str | None


@dataclass(frozen=True, kw_only=True)
class LogoutResponse:
    """What the back-channel logout endpoint answers the IdP."""

    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=lambda: dict(NO_STORE))
    destroyed: int = 0  # sessions ended (for logs and tests; not sent)


def _signing_key(token: str, jwks: JwksSource, algorithms: Collection[str]) -> jwt.PyJWK:
    """The JWKS key the token names, checked to be a signing key of an allowed algorithm."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise LogoutTokenError("not a JWS compact token") from None
    alg, typ, kid = header.get("alg"), header.get("typ"), header.get("kid")
    if not isinstance(alg, str) or alg not in algorithms:
        raise LogoutTokenError(f"algorithm {alg!r} is not allowed")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES):
        raise LogoutTokenError(f"token type {typ!r} is not a logout token")
    if kid is not None and not isinstance(kid, str):
        raise LogoutTokenError("the kid header is not a string")
    key = _find_key(jwks, kid)
    if key.public_key_use not in (None, "sig"):
        raise LogoutTokenError("the key is not a signing key")
    if key.algorithm_name != alg:
        raise LogoutTokenError(f"algorithm {alg!r} does not match the key's ({key.algorithm_name})")
    return key


def _find_key(jwks: JwksSource, kid: str | None) -> jwt.PyJWK:
    if isinstance(jwks, jwt.PyJWKClient):
        try:
            if kid is None:
                found = jwks.get_signing_keys()
                if len(found) != 1:
                    raise LogoutTokenError("the token names no kid and the JWKS has several keys")
                return found[0]
            return jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise JwksUnavailable(f"could not fetch the IdP's JWKS: {exc}") from None
        except jwt.PyJWKClientError:
            raise LogoutTokenError("no key of the IdP's JWKS signs this token") from None
    try:
        key_set = jwt.PyJWKSet.from_dict(dict(jwks))
    except jwt.PyJWTError:
        raise LogoutTokenError("the JWKS holds no usable key") from None
    matching = [k for k in key_set.keys if kid is None or k.key_id == kid]
    if len(matching) != 1:
        raise LogoutTokenError("no key of the IdP's JWKS signs this token")
    return matching[0]


def verify_logout_token(
    token: object,
    *,
    jwks: JwksSource,
    issuer: str,
    audience: str,
    algorithms: Collection[str] = DEFAULT_ALGORITHMS,
    leeway_s: float = DEFAULT_LEEWAY_S,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    require_exp: bool = False,
    clock: Callable[[], float] = time.time,
) -> LogoutClaims:
    """The claims of a valid logout token (Back-Channel Logout 1.0, section 2.6).

    Args:
        token: the `logout_token` form field, untrusted.
        jwks: the IdP's keys: `jwks_client(url)` (cached), or a JWKS dict.
        issuer: the IdP's issuer (Keycloak: `https://host/realms/<realm>`), compared exactly.
        audience: our client id at the IdP.
        algorithms: the signature algorithms accepted (asymmetric only).
        leeway_s: clock skew allowed for `iat` and `exp`.
        max_age_s: how old `iat` may be; also how long a `jti` is remembered.
        require_exp: refuse tokens without `exp` (REQUIRED since the spec's 2023 errata;
            IdPs following the 2022 text omit it). `exp`, when present, is always checked.
        clock: seconds since the epoch, for the age check.

    Raises:
        LogoutTokenError: any check failed (answer 400).
        JwksUnavailable: the JWKS could not be fetched (answer 503; the IdP may retry).
    """
    bad = set(algorithms) - SUPPORTED_ALGORITHMS
    if bad or not algorithms:
        raise ValueError(f"algorithms must be asymmetric JWS algorithms, got {sorted(bad) or 'none'}")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise LogoutTokenError("missing, oversized or not text")
    key = _signing_key(token, jwks, algorithms)
    required = ["iss", "aud", "iat", "jti", "events", *(["exp"] if require_exp else [])]
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[key.algorithm_name],
            audience=audience,
            issuer=issuer,
            leeway=leeway_s,
            options={"require": required, "verify_iat": True, "verify_exp": True, "verify_nbf": True},
        )
    except jwt.PyJWTError as exc:
        raise LogoutTokenError(f"{type(exc).__name__}: {exc}") from None
    return _logout_claims(claims, now=clock(), leeway_s=leeway_s, max_age_s=max_age_s)


def _logout_claims(claims: dict[str, Any], *, now: float, leeway_s: float, max_age_s: float) -> LogoutClaims:
    """Sections 2.4 and 2.6 beyond what PyJWT checks: events, nonce, sub/sid, jti, age."""
    events = claims.get("events")
    if not isinstance(events, dict) or BACKCHANNEL_LOGOUT_EVENT not in events:
        raise LogoutTokenError("the events claim has no back-channel logout event")
    if not isinstance(events[BACKCHANNEL_LOGOUT_EVENT], dict):
        raise LogoutTokenError("the back-channel logout event is not a JSON object")
    if "nonce" in claims:
        raise LogoutTokenError("a nonce claim is present")
    sid, sub = claims.get("sid"), claims.get("sub")
    if sid is None and sub is None:
        raise LogoutTokenError("neither sub nor sid is present")
    try:
        sid, sub = check_idp_value("sid", sid), check_idp_value("sub", sub)
    except ValueError as exc:
        raise LogoutTokenError(str(exc)) from None
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise LogoutTokenError("the jti claim is not a short non-empty string")
    issued_at = float(claims["iat"])
    if now - issued_at > max_age_s + leeway_s:
        raise LogoutTokenError(f"issued {now - issued_at:.0f} s ago, more than {max_age_s:.0f} s")
    exp = claims.get("exp")
    return LogoutClaims(
        issuer=str(claims["iss"]),
        jti=jti,
        issued_at=issued_at,
        expires_at=None if exp is None else float(exp),
        sid=sid,
        sub=sub,
    )


def _jti_key(claims: LogoutClaims) -> str:
    digest = hashlib.sha256(f"{claims.issuer}\0{claims.jti}".encode()).hexdigest()
    return keys.logout_token_jti(digest)


def _jti_ttl_ms(claims: LogoutClaims, options: VerifyOptions) -> int:
    """Until the token's `iat` is too old to be accepted anyway: the marks never pile up."""
    max_age_s = options.get("max_age_s", DEFAULT_MAX_AGE_S)
    leeway_s = options.get("leeway_s", DEFAULT_LEEWAY_S)
    now = options.get("clock", time.time)()
    return max(1000, int((claims.issued_at + max_age_s + leeway_s - now) * 1000))


JTI_PENDING = b"pending"  # claimed; its sessions are not yet known to be destroyed
JTI_DONE = b"done"  # its sessions were destroyed: the same token again is a replay


def claim_jti(client: Redis, *, claims: LogoutClaims, **options: Unpack[VerifyOptions]) -> bool:
    """Claim the token's `jti` (SET NX, pending); False only when it is already done: a replay.

    A pending mark left by an earlier delivery that failed half-way (Redis timed out,
    the logout did not finish) does not refuse the token: destroying is idempotent, so
    the IdP's retry is processed again. Raises SessionStoreUnavailable (fail closed).
    """
    key = _jti_key(claims)
    with fail_closed(action="record a logout token"):
        if client.set(key, JTI_PENDING, nx=True, px=_jti_ttl_ms(claims, options)):
            return True
        return not _is_done(client.get(key))


def _is_done(mark: object) -> bool:
    """Whether a mark read back says done (clients decoding responses give str)."""
    return mark in (JTI_DONE, JTI_DONE.decode())


def finish_jti(client: Redis, *, claims: LogoutClaims) -> None:
    """Mark the token's `jti` done once its sessions are destroyed (keeping the mark's TTL).

    Raises SessionStoreUnavailable: the mark stays pending and a retry is processed again.
    """
    with fail_closed(action="record a logout token as done"):
        client.set(_jti_key(claims), JTI_DONE, xx=True, keepttl=True)


def refused(reason: str) -> LogoutResponse:
    """The 400 for the IdP: the OIDC error body, never `reason` (that is logged)."""
    log.warning("back-channel logout refused: %s", reason[:200])  # header values are the sender's
    body = '{"error":"invalid_request","error_description":"invalid logout token"}'
    return LogoutResponse(status=400, body=body, headers={**NO_STORE, "Content-Type": "application/json"})


def _unavailable(exc: Exception) -> LogoutResponse:
    log.error("back-channel logout not done: %s", exc)
    return LogoutResponse(status=503, body="", headers={**NO_STORE, "Retry-After": "5"})


def _verified(
    token: object, jwks: JwksSource, issuer: str, audience: str, options: VerifyOptions
) -> LogoutClaims | LogoutResponse:
    """The claims, or the answer when the token is refused or cannot be checked now."""
    try:
        return verify_logout_token(token, jwks=jwks, issuer=issuer, audience=audience, **options)
    except LogoutTokenError as exc:
        return refused(exc.reason)
    except JwksUnavailable as exc:
        return _unavailable(exc)


def _done(destroyed: int) -> LogoutResponse:
    log.info("back-channel logout: %d session(s) ended", destroyed)
    return LogoutResponse(status=200, body="", destroyed=destroyed)


def handle_logout_token(
    client: Redis,
    *,
    token: object,
    jwks: JwksSource,
    issuer: str,
    audience: str,
    service: SessionService | None = None,
    **options: Unpack[VerifyOptions],
) -> LogoutResponse:
    """Verify `token` and destroy its sessions; the answer for the IdP (section 2.8).

    With `sid`, the sessions of that IdP session end; with only `sub`, every session of
    that subject. 200 on success (even when no session matched), 400 for any invalid or
    replayed token (the body never says why; the log does), 503 when Redis or the JWKS
    is unreachable (the logout may be incomplete; the `jti` is at most pending, so the
    IdP's retry is processed again). `client` is the
    PRIMARY Redis; `service` defaults to `SessionService(client)`; `options` are
    `verify_logout_token`'s.
    """
    claims = _verified(token, jwks, issuer, audience, options)
    if isinstance(claims, LogoutResponse):
        return claims
    service = service or SessionService(client)
    try:
        if not claim_jti(client, claims=claims, **options):
            return refused("the jti was already used (replay)")
        if claims.sid is not None:
            destroyed = service.logout_by_idp_session(claims.sid)
        else:
            destroyed = service.logout_by_subject(claims.sub or "")  # verified: sid or sub is set
        finish_jti(client, claims=claims)
    except SessionStoreUnavailable as exc:
        return _unavailable(exc)  # the mark is at most pending: the IdP's retry is processed
    return _done(destroyed)


async def async_handle_logout_token(
    client: redis.asyncio.Redis,
    *,
    token: object,
    jwks: JwksSource,
    issuer: str,
    audience: str,
    service: AsyncSessionService | None = None,
    **options: Unpack[VerifyOptions],
) -> LogoutResponse:
    """`handle_logout_token` for ASGI apps: the JWKS fetch runs in a thread, Redis on `client`.

    `service` defaults to `AsyncSessionService(client)`.
    """
    claims = await asyncio.to_thread(_verified, token, jwks, issuer, audience, options)
    if isinstance(claims, LogoutResponse):
        return claims
    service = service or AsyncSessionService(client)
    key = _jti_key(claims)
    try:
        with fail_closed(action="record a logout token"):
            fresh = await client.set(key, JTI_PENDING, nx=True, px=_jti_ttl_ms(claims, options))
            if not fresh and _is_done(await client.get(key)):
                return refused("the jti was already used (replay)")
        if claims.sid is not None:
            destroyed = await service.logout_by_idp_session(claims.sid)
        else:
            destroyed = await service.logout_by_subject(claims.sub or "")
        with fail_closed(action="record a logout token as done"):
            await client.set(key, JTI_DONE, xx=True, keepttl=True)
    except SessionStoreUnavailable as exc:
        return _unavailable(exc)
    return _done(destroyed)
