"""rq-dashboard while the PRIMARY Redis does not answer: a 503 that says why, on pages and JSON."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.dashboard_fixtures import Dashboard
from workers.dev.servers import free_port

pytestmark = [pytest.mark.ops, pytest.mark.timeout(120)]


@pytest.mark.parametrize("path", ["/0/view/job/some-id", "/0/data/queues.json", "/0/data/workers.json"])
def test_every_view_answers_503_saying_redis_did_not_answer(
    start_dashboard: Callable[..., Dashboard], path: str
) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    dashboard = start_dashboard(REDIS_URL=nobody, CACHE_REDIS_URL=nobody)
    reply = dashboard.get(path)
    assert reply.status == 503, reply.text()
    assert reply.text() == (
        "the PRIMARY Redis did not answer (ConnectionError); this page works again once it does\n"
    )
    assert reply.headers["Retry-After"] == "5"
    assert "Traceback" not in reply.text()
