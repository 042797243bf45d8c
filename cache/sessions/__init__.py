"""Server-side sessions: an opaque id in the cookie, the data in Redis, idle and absolute
expiry, a per-user index for sign-out everywhere.
"""

from typing import TYPE_CHECKING

from cache.exports import lazy_exports

if TYPE_CHECKING:
    from cache.sessions.core import (
        InvalidSessionArgument,
        Session,
        SessionError,
        SessionStoreUnavailable,
        new_session_id,
    )
    from cache.sessions.service import SessionService

__all__ = [
    "InvalidSessionArgument",
    "Session",
    "SessionError",
    "SessionService",
    "SessionStoreUnavailable",
    "new_session_id",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "SessionService": "cache.sessions.service",
        "InvalidSessionArgument": "cache.sessions.core",
        "Session": "cache.sessions.core",
        "SessionError": "cache.sessions.core",
        "SessionStoreUnavailable": "cache.sessions.core",
        "new_session_id": "cache.sessions.core",
    },
)
