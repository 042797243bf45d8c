"""Server-side sessions: an opaque id in the cookie, the data in Redis, idle and absolute
expiry, a per-user index for sign-out everywhere, OIDC back-channel logout; sync and asyncio.
"""

from typing import TYPE_CHECKING

from cache.exports import lazy_exports

if TYPE_CHECKING:
    from cache.sessions.async_service import AsyncSessionService
    from cache.sessions.backchannel import (
        LogoutClaims,
        LogoutResponse,
        LogoutTokenError,
        async_handle_logout_token,
        handle_logout_token,
        jwks_client,
        verify_logout_token,
    )
    from cache.sessions.core import (
        InvalidSessionArgument,
        Session,
        SessionError,
        SessionStoreUnavailable,
        new_session_id,
    )
    from cache.sessions.service import SessionService

__all__ = [
    "AsyncSessionService",
    "InvalidSessionArgument",
    "LogoutClaims",
    "LogoutResponse",
    "LogoutTokenError",
    "Session",
    "SessionError",
    "SessionService",
    "SessionStoreUnavailable",
    "async_handle_logout_token",
    "handle_logout_token",
    "jwks_client",
    "new_session_id",
    "verify_logout_token",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "SessionService": "cache.sessions.service",
        "AsyncSessionService": "cache.sessions.async_service",
        "LogoutClaims": "cache.sessions.backchannel",
        "LogoutResponse": "cache.sessions.backchannel",
        "LogoutTokenError": "cache.sessions.backchannel",
        "handle_logout_token": "cache.sessions.backchannel",
        "async_handle_logout_token": "cache.sessions.backchannel",
        "jwks_client": "cache.sessions.backchannel",
        "verify_logout_token": "cache.sessions.backchannel",
        "InvalidSessionArgument": "cache.sessions.core",
        "Session": "cache.sessions.core",
        "SessionError": "cache.sessions.core",
        "SessionStoreUnavailable": "cache.sessions.core",
        "new_session_id": "cache.sessions.core",
    },
)
