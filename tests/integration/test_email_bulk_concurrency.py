"""One bulk chunk job keeps many SMTP transactions in flight, through a relay that answers DATA late.

The sink (aiosmtpd) holds every DATA answer, as a remote relay does, and counts the DATA
commands it is holding at once; the tests assert on that count and on what arrived,
never on time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cache import connections
from cache.settings import reset_settings
from jobs.email import bulk_status, enqueue_bulk_email
from jobs.email.jobs import send_bulk_chunk
from jobs.email.runtime import reset_process_runtime
from jobs.enqueue import fetch_job
from tests.integration.email_fixtures import ScriptedHandler, SmtpServer, use_smtp

pytestmark = pytest.mark.email

LOGIN = {"login_url": "https://app.example.com/login"}
DATA_DELAY_S = 0.2
MAX_CONNECTIONS = 16


class DelayedHandler(ScriptedHandler):
    """Answers each DATA after `DATA_DELAY_S`; `max_in_flight` is the most DATA held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(DATA_DELAY_S)
            return await super().handle_DATA(server, session, envelope)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def relay(redis_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """A slow relay, and this process's settings pointed at it with SMTP_MAX_CONNECTIONS=16."""
    server = SmtpServer()
    server.handler = DelayedHandler()
    server.start()
    monkeypatch.setenv("MAIL_FROM", "KRYONIX <no-reply@kryonix.local>")
    use_smtp(monkeypatch, server, SMTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    connections.reset_clients()
    yield server
    reset_process_runtime()
    server.stop()
    reset_settings()


def _one_chunk(count: int, **kwargs: Any) -> tuple[str, dict[str, Any], list[str]]:
    addresses = [f"user{i}@example.com" for i in range(count)]
    recipients = [{"to": a, "context": {"name": f"User {i}"}} for i, a in enumerate(addresses)]
    handle = enqueue_bulk_email("welcome", recipients, context=LOGIN, chunk_size=count, **kwargs)
    [job_id] = handle.job_ids
    job = fetch_job(job_id=job_id)
    assert job is not None
    return handle.bulk_id, job.args[0], addresses


def _handler(relay: SmtpServer) -> DelayedHandler:
    assert isinstance(relay.handler, DelayedHandler)
    return relay.handler


def test_one_chunk_job_sends_over_the_whole_pool_once_per_recipient(
    relay: SmtpServer, primary: redis.Redis
) -> None:
    bulk_id, payload, addresses = _one_chunk(64)
    assert payload["connections"] is None, "no cap: the worker's SMTP_MAX_CONNECTIONS"
    assert send_bulk_chunk(payload) == {"sent": 64, "refused": 0, "skipped": 0}
    observed = _handler(relay).max_in_flight
    assert 4 < observed <= MAX_CONNECTIONS, f"{observed} DATA held at once"
    delivered = Counter(r for message in relay.received for r in message.rcpt_tos)
    assert delivered == Counter(addresses), "every recipient got exactly one message"
    status = bulk_status(bulk_id=bulk_id)
    assert status is not None and (status.sent, status.complete) == (64, True)
    assert send_bulk_chunk(payload) == {"sent": 0, "refused": 0, "skipped": 64}, "a re-run sends nothing"
    assert len(relay.received) == 64


def test_the_callers_cap_bounds_one_chunk_job(relay: SmtpServer, primary: redis.Redis) -> None:
    _, payload, addresses = _one_chunk(12, connections=3)
    assert send_bulk_chunk(payload) == {"sent": 12, "refused": 0, "skipped": 0}
    assert _handler(relay).max_in_flight <= 3
    assert Counter(r for message in relay.received for r in message.rcpt_tos) == Counter(addresses)
