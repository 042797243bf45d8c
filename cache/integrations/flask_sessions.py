"""Flask sessions on `SessionService`; `cache.integrations.flask` is the public face.

`init_app(app)` installs `ServerSessionInterface`, a Flask `SessionInterface` (as
Flask-Session does): the cookie carries only the opaque session id, everything else
stays on the PRIMARY Redis. The session is read lazily, on the first access to
`flask.session`, so routes that never touch it send no Redis command and keep working
while Redis is down; a route that does touch it answers 503 then (sessions fail
closed). docs/flask.md shows a whole app.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, session
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.wrappers import Request as BaseRequest
from werkzeug.wrappers import Response as BaseResponse

from cache.errors import RedisUnavailable
from cache.integrations import problems
from cache.integrations.problems import Problem
from cache.ratelimit.service import RateLimiter
from cache.sessions.core import Session, SessionStoreUnavailable, SignInRequired
from cache.sessions.service import SessionService

__all__ = [
    "ServerSession",
    "ServerSessionInterface",
    "SessionOptions",
    "extension",
    "login",
    "logout",
    "logout_everywhere",
    "rotate_session",
    "session_user_id",
]

EXTENSION = "kryonix"


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """The cookie's name and flags. `__Host-` makes the browser insist on Secure, Path=/, no Domain."""

    cookie_name: str = "__Host-session"
    secure: bool = True
    httponly: bool = True
    samesite: str = "Lax"
    path: str = "/"
    domain: str | None = None

    def __post_init__(self) -> None:
        if self.cookie_name.startswith("__Host-") and (not self.secure or self.path != "/" or self.domain):
            raise ValueError("a __Host- cookie needs secure=True, path='/' and no domain")
        if self.cookie_name.startswith("__Secure-") and not self.secure:
            raise ValueError("a __Secure- cookie needs secure=True")
        if self.samesite not in ("Lax", "Strict", "None"):
            raise ValueError(f"samesite must be 'Lax', 'Strict' or 'None', got {self.samesite!r}")


@dataclass
class Extension:
    """What `init_app` keeps in `app.extensions["kryonix"]`; the services are built on first use."""

    options: SessionOptions
    session_service: SessionService | None = None
    limiter: RateLimiter | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sessions(self) -> SessionService:
        if self.session_service is None:
            self.session_service = SessionService()
        return self.session_service

    @property
    def rate_limiter(self) -> RateLimiter:
        if self.limiter is None:
            self.limiter = RateLimiter()
        return self.limiter


class ServerSession(SessionMixin):
    """`flask.session`: read from Redis on first access, changes written once after the view.

    Writing to it needs a signed-in session (`login()` first): sessions belong to a user,
    so that `logout_everywhere()` and back-channel logout can find them.
    """

    def __init__(self, service: SessionService, cookie_id: str | None) -> None:
        self.service = service
        self.cookie_id = cookie_id
        self.record: Session | None = None
        self._data: dict[str, Any] | None = None
        self.changed: dict[str, Any] = {}
        self.removed: set[str] = set()
        self.new_id: str | None = None  # login or rotation: send this id
        self.ended = False  # logout: delete the cookie
        self.outage = False  # answered 503 for a Redis outage: write nothing more, set no cookie
        self.modified = False
        self.accessed = False

    @property
    def data(self) -> dict[str, Any]:
        """The session's items, read from Redis on first use (raises SessionStoreUnavailable)."""
        if self._data is None:
            self.accessed = True
            self.record = self.service.get(self.cookie_id) if self.cookie_id and not self.ended else None
            self._data = dict(self.record.data) if self.record is not None else {}
        return self._data

    @property
    def loaded(self) -> bool:
        return self._data is not None

    def start(self, record: Session | None, new_id: str | None) -> None:
        """Adopt a new server session (login, rotation) or none (logout)."""
        self.record, self.new_id, self.ended = record, new_id, record is None
        self._data = dict(record.data) if record is not None else {}
        self.changed.clear()
        self.removed.clear()
        self.accessed = True

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        _ = self.data  # read first: a later flush must know the session
        if self.record is None:
            raise RuntimeError("no signed-in session: call cache.integrations.flask.login() first")
        self.data[name] = value
        self.changed[name] = value
        self.removed.discard(name)
        self.modified = True

    def __delitem__(self, name: str) -> None:
        del self.data[name]
        self.changed.pop(name, None)
        self.removed.add(name)
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def flush(self) -> None:
        """Write the pending changes in one atomic update."""
        if self.record is not None and (self.changed or self.removed):
            self.service.update(self.record.id, self.changed, remove=sorted(self.removed - set(self.changed)))
        self.changed.clear()
        self.removed.clear()
        self.modified = False


class ServerSessionInterface(SessionInterface):
    """Sessions in Redis, the cookie holding the opaque id only."""

    def open_session(self, app: Flask, request: BaseRequest) -> SessionMixin | None:
        ext = extension(app)
        return ServerSession(ext.sessions, request.cookies.get(ext.options.cookie_name))

    def save_session(self, app: Flask, session: SessionMixin, response: BaseResponse) -> None:
        if not isinstance(session, ServerSession) or session.outage:
            return
        if session.accessed:
            response.vary.add("Cookie")
        try:
            session.flush()
        except SessionStoreUnavailable as error:
            answer_in_place(response, problems.outage(error))
            return
        options = extension(app).options
        stale = session.loaded and session.record is None and bool(session.cookie_id)
        if session.ended or stale:  # logged out, or a cookie naming no live session: drop it
            response.delete_cookie(
                options.cookie_name,
                path=options.path,
                domain=options.domain,
                secure=options.secure,
                httponly=options.httponly,
                samesite=options.samesite,
            )
        elif session.new_id is not None and session.record is not None:
            max_age = max(0, int(session.record.absolute_expires_at - session.record.last_seen))
            response.set_cookie(
                options.cookie_name,
                session.new_id,
                max_age=max_age,
                path=options.path,
                domain=options.domain,
                secure=options.secure,
                httponly=options.httponly,
                samesite=options.samesite,
            )
            response.headers["Cache-Control"] = "no-store"


def extension(app: Flask) -> Extension:
    """The state `init_app` left on `app`."""
    try:
        ext: Extension = app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError("call cache.integrations.flask.init_app(app) first") from None
    return ext


def problem_response(problem: Problem) -> Response:
    """`problem` as a Flask response."""
    return Response(problem.content, problem.status, problem.headers, mimetype=problems.MEDIA_TYPE)


def unavailable(error: RedisUnavailable) -> Response:
    """The handler `init_app` registers: a view that hit a Redis outage answers 503, not 500.

    As for a session outage found after the view, the answer writes no pending session
    change and sets no cookie (Starlette's `SessionMiddleware` answers the same way).
    """
    current = session  # the proxy forwards isinstance and attribute writes to the request's session
    if isinstance(current, ServerSession):
        current.outage = True
    return problem_response(problems.outage(error))


def answer_in_place(response: BaseResponse, problem: Problem) -> None:
    """Turn `response` into `problem` (a session outage found after the view ran); no cookie is set."""
    response.status_code = problem.status
    response.set_data(problem.content)
    response.mimetype = problems.MEDIA_TYPE
    response.headers.update(problem.headers)
    response.headers.pop("Set-Cookie", None)


def _current() -> ServerSession:
    current = session  # the proxy forwards isinstance and attribute writes to the request's session
    if not isinstance(current, ServerSession):
        raise RuntimeError("call cache.integrations.flask.init_app(app) first")
    return current


def login(
    user_id: str | int,
    data: Mapping[str, Any] | None = None,
    *,
    idp_sid: str | None = None,
    idp_sub: str | None = None,
) -> None:
    """Sign `user_id` in under a fresh session id; the session sent with the request is ended.

    A new id at every login is what defeats session fixation: an id planted before the
    login never becomes a signed-in one.

    Raises:
        SessionStoreUnavailable: Redis is down (the view answers 503).
    """
    current = _current()
    service = current.service
    if current.cookie_id:
        service.destroy(current.cookie_id)
    new_id = service.create(user_id, data, idp_sid=idp_sid, idp_sub=idp_sub)
    current.start(service.get(new_id, touch=False), new_id)


def rotate_session(changes: Mapping[str, Any] | None = None) -> None:
    """A new id for the signed-in session (privilege change), the old id dead at once.

    Raises:
        SignInRequired: no signed-in session (answered 401), also when it ended meanwhile.
    """
    current = _current()
    current_user()
    assert current.record is not None
    current.flush()
    new_id = current.service.rotate(current.record.id, changes=changes)
    if new_id is None:
        current.start(None, None)
        raise SignInRequired("the session ended before it could be rotated")
    current.start(current.service.get(new_id, touch=False), new_id)


def logout() -> bool:
    """End this session; True when one was live."""
    current = _current()
    session_id = current.record.id if current.record is not None else current.cookie_id
    ended = current.service.destroy(session_id) if session_id else False
    current.start(None, None)
    return ended


def logout_everywhere() -> int:
    """End every session of the signed-in user (this one included); how many were live.

    Raises:
        SignInRequired: no signed-in session (answered 401).
    """
    user_id = current_user()
    current = _current()
    count = current.service.destroy_all_for_user(user_id)
    current.start(None, None)
    return count


def session_user_id() -> str | None:
    """The signed-in user's id (as stored: text), None when signed out. Reads the session."""
    current = _current()
    if not current.loaded:
        _ = current.data
    return current.record.user_id if current.record is not None else None


def current_user() -> str:
    """The signed-in user's id (as stored: text), for views that need one.

    Raises:
        SignInRequired: signed out (`init_app` answers it with 401).
    """
    user_id = session_user_id()
    if user_id is None:
        raise SignInRequired("this needs a signed-in session")
    return user_id


def sign_in_required(error: SignInRequired) -> Response:
    """The handler `init_app` registers: a view that needs a signed-in user answers 401."""
    return problem_response(problems.sign_in_required())
