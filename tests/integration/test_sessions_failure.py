"""Sessions fail closed when the PRIMARY Redis is down, hung or refuses us (marker `sessions`).

Each test runs a private redis-server (`redis_factory`) that it stops and restarts, with
a client built from settings with one retry, so a dead server is reported quickly.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from cache.connections import Role, build_client
from cache.errors import RedisUnavailable
from cache.sessions.service import SessionService, SessionStoreUnavailable
from cache.settings import Settings
from workers.dev.servers import PRIMARY_CONF, RedisServer

pytestmark = pytest.mark.sessions

Factory = Callable[..., RedisServer]


def _service(server: RedisServer, **env: str) -> SessionService:
    settings = Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "1", **env})
    return SessionService(build_client(Role.PRIMARY, settings))


def _every_operation(service: SessionService, sid: str) -> dict[str, Callable[[], object]]:
    return {
        "read a session": lambda: service.get(sid),
        "refresh a session": lambda: service.refresh(sid),
        "update a session": lambda: service.update(sid, {"a": 1}),
        "rotate a session": lambda: service.rotate(sid),
        "destroy a session": lambda: service.destroy(sid),
        "create a session": lambda: service.create("u1"),
        "list a user's sessions": lambda: service.list_for_user("u1"),
        "log a user out everywhere": lambda: service.destroy_all_for_user("u1"),
    }


def test_redis_stopped_then_back(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF, name="sessions-down")
    service = _service(server)
    sid = service.create("u1", {"cart": [1]})
    assert service.get(sid) is not None

    server.stop()
    for action, call in _every_operation(service, sid).items():
        with pytest.raises(SessionStoreUnavailable) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"session store unavailable: could not {action} on the primary Redis")
        assert "REDIS_URL" in message
        assert "not logged in" in message
        assert isinstance(info.value, RedisUnavailable)
        assert info.value.setting == "REDIS_URL"

    server.start()  # same port and data directory; the same service object carries on
    session = service.get(sid)
    assert session is not None
    assert session.data == {"cart": [1]}
    assert service.update(sid, {"back": True}) is True
    assert [s.id for s in service.list_for_user("u1")] == [sid]


def test_redis_killed_then_back(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF, name="sessions-killed")
    service = _service(server)
    service.create("u1")
    server.kill()
    with pytest.raises(SessionStoreUnavailable):
        service.get("A" * 42 + "w")
    server.start()
    sid = service.create("u2", {"x": 1})
    session = service.get(sid)
    assert session is not None
    assert session.data == {"x": 1}


def test_hung_redis_times_out_into_store_unavailable(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF, name="sessions-hung")
    service = _service(server, REDIS_SOCKET_TIMEOUT="0.3")
    sid = service.create("u1")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(SessionStoreUnavailable, match="Timeout"):
            service.get(sid)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert service.get(sid) is not None


def test_refused_password_names_the_setting(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF, "--requirepass", "right-password", name="sessions-auth")
    service = _service(server, REDIS_PASSWORD="wrong-password")
    with pytest.raises(SessionStoreUnavailable) as info:
        service.get("A" * 42 + "w")
    assert info.value.setting == "REDIS_PASSWORD"
    assert "REDIS_PASSWORD" in str(info.value)
    assert "wrong-password" not in str(info.value)
