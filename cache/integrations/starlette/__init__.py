"""Starlette and FastAPI adapters: sessions, rate limits (and their headers), in pure ASGI middleware.

```python
app = Starlette(routes=..., middleware=[
    Middleware(SessionMiddleware),  # outermost: a Redis outage below it is a 503, never a 500
    Middleware(RateLimitMiddleware, limits=("ip",)),
])
```
"""

from cache.integrations.starlette.backchannel import backchannel_logout
from cache.integrations.starlette.events import EventStreamResponse, shutdown_event_streams
from cache.integrations.starlette.ratelimit import RateLimited, RateLimitMiddleware, rate_limit, request_ip
from cache.integrations.starlette.sessions import (
    DEFAULT_COOKIE_NAME,
    RequestSession,
    SessionMiddleware,
    current_user,
    load_session,
    login,
    logout,
    logout_everywhere,
    rotate_session,
)

__all__ = [
    "DEFAULT_COOKIE_NAME",
    "EventStreamResponse",
    "RateLimitMiddleware",
    "RateLimited",
    "RequestSession",
    "SessionMiddleware",
    "backchannel_logout",
    "current_user",
    "load_session",
    "login",
    "logout",
    "logout_everywhere",
    "rate_limit",
    "request_ip",
    "rotate_session",
    "shutdown_event_streams",
]
