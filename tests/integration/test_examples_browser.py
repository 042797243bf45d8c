"""The example apps' live page in headless Chromium: live, across a restart and a reload.

Both `examples/flask_app.py` (gunicorn, `examples/gunicorn.conf.py`) and
`examples/fastapi_app.py` (uvicorn) serve `examples/live.html`; every test runs against
each. Events are published straight to the test Redis with `RealtimeService`; what the
page rendered is read back from its `<li>` items and compared with what was published,
in order and without duplicates. The last event published in a test is the barrier: once
it is shown, everything before it has arrived.
"""

from __future__ import annotations

import signal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.examples_browser_fixtures import ExampleServer, LivePage, Publisher
from tests.waiting import wait_until

pytestmark = pytest.mark.realtime

HOSTILE = "<img src=x onerror=alert(1)>"
UVICORN_GRACE_EXCEEDED = "timeout graceful shutdown exceeded"  # uvicorn/server.py, Server.shutdown


def _stop_cleanly(server: ExampleServer) -> None:
    """SIGTERM the server and check it ended its streams itself instead of running out of time.

    uvicorn logs UVICORN_GRACE_EXCEEDED when it has to cancel what still runs; having
    handled SIGTERM it raises it again, so -SIGTERM is its clean exit. gunicorn's master
    logs a worker that was killed while it still reaps; each worker that returned by
    itself logs "Worker exiting".
    """
    code = server.terminate()
    log = server.log()
    if server.kind == "fastapi":
        assert code in (0, -signal.SIGTERM), log
        assert UVICORN_GRACE_EXCEEDED not in log, log
        return
    assert code == 0, log
    assert "WORKER TIMEOUT" not in log, log
    assert "was sent" not in log, log  # "Worker (pid:N) was sent SIGKILL!"
    assert log.count("Worker exiting") == log.count("Booting worker") == 2, log


def _resume_position(url: str, headers: dict[str, str]) -> str | None:
    """Where an `/events` request asks to resume: the browser's header, else the page's query."""
    return headers.get("last-event-id") or parse_qs(urlsplit(url).query).get("last_event_id", [None])[0]


@pytest.mark.security
def test_events_after_connecting_are_shown_in_order_and_as_text(
    example_server: ExampleServer, browser_context: Any, publish: Publisher
) -> None:
    server = example_server.start()
    page = LivePage(browser_context, server.url).sign_in(server.kind)
    assert page.shown() == []

    publish(3)
    publish(1, text=HOSTILE)
    page.wait_shown(publish(2))

    assert page.shown() == publish.events
    assert HOSTILE in page.page.inner_text("#events")  # as text, escaped nowhere else
    assert page.page.locator("img").count() == 0
    assert page.page.locator("#events li *").count() == 0  # text nodes only
    assert page.dialogs == []


def test_a_signed_out_page_is_refused_its_stream(
    example_server: ExampleServer, browser_context: Any, publish: Publisher
) -> None:
    server = example_server.start()
    page = LivePage(browser_context, server.url).sign_in(server.kind)
    signed_out = LivePage(browser_context.browser.new_context(), server.url)
    try:
        signed_out.page.goto(f"{server.url}/")
        wait_until(lambda: signed_out.state() == "reconnecting", 30, "the signed-out page refused")
        (request,) = signed_out.event_requests[:1]
        assert request.response().status == 401
        page.wait_shown(publish(1))  # the signed-in page got it; the signed-out one has no stream
        assert signed_out.shown() == []
    finally:
        signed_out.page.context.close()


def test_the_page_resumes_by_itself_after_the_server_restarts(
    example_server: ExampleServer, browser_context: Any, publish: Publisher
) -> None:
    server = example_server.start()
    page = LivePage(browser_context, server.url).sign_in(server.kind)
    page.wait_shown(publish(2))
    before_stop = page.shown()[-1].id

    _stop_cleanly(server)
    wait_until(lambda: page.state() == "reconnecting", 30, "the page noticing its stream ended")
    requests_before = len(page.event_requests)
    missed = publish(3)  # while the server is down
    server.start()  # on the same port

    page.wait_shown(missed)
    page.wait_live()
    page.wait_shown(publish(2))
    assert page.shown() == publish.events
    # Every request that reached a server asked to resume after the last event shown (Chromium
    # reports the headers it sent only for those): never from scratch, never past a gap.
    answered = [r for r in page.event_requests[requests_before:] if r.response() is not None]
    resumes = [_resume_position(r.url, r.all_headers()) for r in answered]
    assert resumes and set(resumes) == {before_stop}, resumes


def test_a_reloaded_page_gets_exactly_the_events_after_the_last_it_showed(
    example_server: ExampleServer, browser_context: Any, publish: Publisher
) -> None:
    server = example_server.start()
    page = LivePage(browser_context, server.url).sign_in(server.kind)
    page.wait_shown(publish(2))

    def publish_while_reloading(route: Any) -> None:
        publish(2)  # the old page may or may not get these before it is unloaded
        route.continue_()

    page.page.route(f"{server.url}/", publish_while_reloading)
    publish(1)  # just before the reload
    page.page.reload()
    page.page.unroute(f"{server.url}/")
    page.wait_live()
    page.wait_shown(publish(2))

    before, after = page.shown_before_unload(), page.shown()
    assert len(before) >= 2
    assert before + after == publish.events
    first_stream = page.streams_opened()[0]  # a new document sends no Last-Event-ID header
    assert _resume_position(first_stream, {}) == before[-1].id  # what the page had kept


def test_sigterm_with_the_page_connected_ends_its_stream_and_the_server_exits(
    example_server: ExampleServer, browser_context: Any, publish: Publisher
) -> None:
    """The server exits by itself well before its graceful timeout runs out.

    uvicorn gets `--timeout-graceful-shutdown 10` and must not log running out of it.
    gunicorn logs nothing when it SIGKILLs workers at its graceful timeout, so it gets
    `--graceful-timeout 120` on top of the production config: a stream that held its
    worker would keep gunicorn up past the 60 s the test waits.
    """
    flask = example_server.kind == "flask"
    server = example_server.start(
        *(("--graceful-timeout", "120") if flask else ("--timeout-graceful-shutdown", "10"))
    )
    page = LivePage(browser_context, server.url).sign_in(server.kind)
    page.wait_shown(publish(1))

    _stop_cleanly(server)
    wait_until(lambda: page.state() == "reconnecting", 30, "the page noticing its stream ended")
    assert page.shown() == publish.events


def test_after_a_non_stream_answer_the_page_opens_a_new_stream_from_its_last_event(
    example_server: ExampleServer, browser_context: Any, publish: Publisher
) -> None:
    """A 503 (a proxy while the app is down) closes an EventSource for good; the page reopens it.

    The browser's own reconnects after a refused connection never reach this code, so a
    route in front of `/events` answers 503 while the server is down.
    """
    server = example_server.start()
    page = LivePage(browser_context, server.url).sign_in(server.kind)
    page.wait_shown(publish(2))
    before_stop = page.shown()[-1].id
    refused: list[str] = []

    def unavailable(route: Any) -> None:
        refused.append(route.request.url)
        route.fulfill(status=503, body="down for a deploy\n")

    page.page.route(f"{server.url}/events*", unavailable)
    _stop_cleanly(server)
    missed = publish(2)  # while the server is down
    # The first 503 answers the browser's reconnect; only the page opens the second stream.
    # The route runs while Playwright is called: the predicate reads the page to let it.
    wait_until(lambda: page.state() and len(refused) >= 2, 60, "the page opening a new stream after a 503")
    page.page.unroute(f"{server.url}/events*")
    server.start()

    page.wait_shown(missed)
    page.wait_shown(publish(2))
    assert page.shown() == publish.events
    assert _resume_position(refused[1], {}) == before_stop, refused
