"""Helpers for the real-time tests: private servers, recorders, a reconnect gate."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from cache.connections import Role, build_async_client, build_client
from cache.realtime.async_service import AsyncRealtimeService, AsyncSubscriber
from cache.realtime.envelope import Event
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from cache.settings import Settings
from tests.waiting import wait_until
from workers.dev.servers import PRIMARY_CONF, RedisServer

WAIT_S = 30.0  # generous: a loaded CI machine is slow; tests wait for behaviour, never assert speed


class Recorder:
    """A handler that remembers what it was given (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def ids(self) -> list[str]:
        with self._lock:
            return [e.id for e in self.events]

    def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[str]:
        wait_until(lambda: len(self.events) >= count, timeout_s, f"{count} events; got {self.ids()}")
        return self.ids()


class ReconnectGate:
    """A subscriber backoff that holds the subscriber disconnected until `release()`.

    `entered` is set once the subscriber has noticed the lost connection, so a test can
    publish while it is provably away and the events can only arrive through replay.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()
        self.calls = 0

    def __call__(self, attempt: int) -> float:
        self.calls += 1
        self.entered.set()
        self._release.wait(WAIT_S)
        return 0.01

    def release(self) -> None:
        self._release.set()


@dataclass
class PrivateRedis:
    server: RedisServer
    settings: Settings

    def service(self, **kwargs: object) -> RealtimeService:
        return RealtimeService(build_client(Role.PRIMARY, self.settings), **kwargs)  # type: ignore[arg-type]

    def subscriber(self, service: RealtimeService | None = None, **kwargs: object) -> Subscriber:
        client = build_client(Role.PRIMARY, self.settings, pubsub=True, decode_responses=True)
        return Subscriber(client, service=service or self.service(), **kwargs)  # type: ignore[arg-type]

    def async_service(self) -> AsyncRealtimeService:
        return AsyncRealtimeService(build_async_client(Role.PRIMARY, self.settings))

    def async_subscriber(self, service: AsyncRealtimeService, **kwargs: object) -> AsyncSubscriber:
        client = build_async_client(Role.PRIMARY, self.settings, pubsub=True)
        return AsyncSubscriber(client, service=service, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def private_redis(redis_factory: Callable[..., RedisServer]) -> Iterator[PrivateRedis]:
    """A PRIMARY-config server of this test's own, free to kill and restart.

    One retry per command, so a subscriber notices a dead server at once and its own
    backoff (which tests can gate) takes over.
    """
    server = redis_factory(PRIMARY_CONF, name="realtime")
    yield PrivateRedis(server, Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "1"}))
