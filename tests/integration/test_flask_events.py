"""`event_stream` under a real gunicorn (gthread workers), read with httpx; the buffer directly.

Events are published with `RealtimeService` on the test PRIMARY; the stream replays from
`Last-Event-ID` (or `?last_event_id=`) and then follows live events.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from flask import Response

from cache.integrations import flask_events
from cache.integrations.flask_events import EventStream, close_event_streams
from cache.realtime.envelope import Event
from cache.realtime.service import RealtimeService
from tests.integration.flask_app import create_app
from tests.integration.flask_fixtures import COOKIE, TIMEOUT_S, Serve, call, sign_in
from tests.integration.processes import Processes
from tests.waiting import wait_until
from workers.dev.servers import PROJECT_ROOT, RedisServer

pytestmark = pytest.mark.realtime

GTHREAD = ("-k", "gthread", "--threads", "4")


def frames(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Each SSE frame as field -> value; a comment line comes as {"comment": text}."""
    frame: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            name, _, value = line.partition(": ")
            frame[name] = value
        elif frame:
            yield frame
            frame = {}


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_replay_then_live_then_resume_from_last_event_id(
    serve: Serve, primary: redis.Redis, preload: bool
) -> None:
    base = serve(*GTHREAD, *(["--preload"] if preload else []))
    sid = sign_in(base, "alice")
    events = RealtimeService(primary)
    first = events.publish_user_event("alice", "report.progress", {"percent": 40})
    events.publish_user_event("bob", "report.ready", {})  # someone else's: never shown
    with httpx.Client(timeout=TIMEOUT_S, headers={"Cookie": f"{COOKIE}={sid}"}) as client:
        with client.stream("GET", f"{base}/events", params={"last_event_id": "0-0"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            reader = frames(response)
            assert next(reader) == {"retry": "3000"}
            replayed = next(reader)
            assert replayed["id"] == first and replayed["event"] == "report.progress"
            second = events.publish_user_event("alice", "report.ready", {"report_id": "r-1"})
            live = next(reader)
            assert live["id"] == second and '"report_id":"r-1"' in live["data"]
        third = events.publish_user_event("alice", "email.sent", {})
        with client.stream("GET", f"{base}/events", headers={"Last-Event-ID": second}) as response:
            reader = frames(response)
            assert next(reader) == {"retry": "3000"}
            assert next(reader)["id"] == third  # only what came after the last one seen


def test_keepalive_comments_and_refusals(serve: Serve) -> None:
    base = serve(*GTHREAD, TEST_KEEPALIVE_S="0.2")
    sid = sign_in(base, "alice")
    with httpx.Client(timeout=TIMEOUT_S, headers={"Cookie": f"{COOKIE}={sid}"}) as client:
        with client.stream("GET", f"{base}/events") as response:
            reader = frames(response)
            assert next(reader) == {"retry": "3000"}
            assert next(reader) == {"comment": "keep-alive"}
        for bad in ({"headers": {"Last-Event-ID": "not-an-id"}}, {"params": {"last_event_id": "1-0; x"}}):
            refused = client.get(f"{base}/events", **bad)  # type: ignore[arg-type]
            assert refused.status_code == 400 and refused.json() == {"error": "bad_last_event_id"}
            assert refused.headers["Cache-Control"] == "no-store"
    assert call("GET", f"{base}/events").status_code == 401


def test_redis_down_at_connect_answers_503_events_unavailable(
    serve: Serve, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(name="flask-events")
    base = serve(*GTHREAD, REDIS_URL=server.url)
    server.stop()
    response = call("GET", f"{base}/demo-events")  # the start position cannot be read
    assert response.status_code == 503 and response.json() == {"error": "events_unavailable"}
    assert response.headers["Retry-After"] == "5" and response.headers["Cache-Control"] == "no-store"


def test_after_close_event_streams_new_streams_answer_503_shutting_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flask_events, "_closed_in", None)  # restored after the test
    close_event_streams()
    response = create_app().test_client().get("/demo-events")
    assert response.status_code == 503 and response.json == {"error": "shutting_down"}
    assert response.headers["Retry-After"] == "1" and response.headers["Cache-Control"] == "no-store"


def _event(n: int) -> Event:
    return Event(id=f"{n}-0", channel="user:a:events", event="tick", data={"n": n}, timestamp="t")


def test_a_client_that_stops_reading_is_closed_not_buffered() -> None:
    stream = EventStream(buffer_events=2, keepalive_s=5, retry_ms=1000)
    for n in range(1, 4):
        stream.offer(_event(n))  # the third does not fit
    assert stream.queue.qsize() == 2 and stream.ended
    assert list(stream.frames()) == ["retry: 1000\n\n"]  # ended: the browser reconnects and replays


def test_close_ends_a_waiting_stream() -> None:
    stream = EventStream(buffer_events=4, keepalive_s=30, retry_ms=1000)
    reader = stream.frames()
    assert next(reader) == "retry: 1000\n\n"
    stream.offer(_event(1))
    assert next(reader).startswith("id: 1-0\nevent: tick\n")
    closer = threading.Timer(0.05, stream.close)
    closer.start()
    assert list(reader) == []  # woken by close(), not by the 30 s keep-alive
    closer.join()


def test_streams_end_when_gunicorn_shuts_down(serve: Serve, processes: Processes) -> None:
    config = str(PROJECT_ROOT / "tests/integration/gunicorn_flask.conf.py")
    base = serve(*GTHREAD, "-c", config, "--graceful-timeout", "120")
    sid = sign_in(base, "alice")
    with httpx.Client(timeout=TIMEOUT_S, headers={"Cookie": f"{COOKIE}={sid}"}) as client:
        with client.stream("GET", f"{base}/events") as response:
            reader = frames(response)
            assert next(reader) == {"retry": "3000"}
            master = processes.started[-1]
            os.kill(master.pid, signal.SIGTERM)
            assert list(reader) == []  # the stream ended, long before the 120 s graceful timeout
    master.wait(timeout=60)


def test_a_backlog_beyond_the_buffer_arrives_whole_in_one_connection(
    serve: Serve, primary: redis.Redis
) -> None:
    base = serve(*GTHREAD)
    sid = sign_in(base, "alice")
    events = RealtimeService(primary)
    published = [events.publish_user_event("alice", "tick", {"n": n}) for n in range(1000)]  # buffer: 256
    with httpx.Client(timeout=TIMEOUT_S, headers={"Cookie": f"{COOKIE}={sid}"}) as client:
        with client.stream("GET", f"{base}/events", headers={"Last-Event-ID": "0"}) as response:
            seen = (frame["id"] for frame in frames(response) if "id" in frame)
            assert [next(seen) for _ in published] == published  # whole, in order, once
            live = events.publish_user_event("alice", "late", {})
            assert next(seen) == live


def test_a_client_gone_mid_replay_ends_its_stream(serve: Serve, primary: redis.Redis) -> None:
    base = serve(*GTHREAD)
    sid = sign_in(base, "alice")
    events = RealtimeService(primary)
    for n in range(1000):  # the stream cap; 4 MB: more than the sockets hold
        events.publish_user_event("alice", "tick", {"n": n, "pad": "x" * 4000})
    with httpx.Client(timeout=TIMEOUT_S, headers={"Cookie": f"{COOKIE}={sid}"}) as client:
        with client.stream("GET", f"{base}/events", headers={"Last-Event-ID": "0"}) as response:
            seen = (
                frame for frame in frames(response) if "id" in frame
            )  # kept: dropping it closes the socket
            next(seen)
            wait_until(lambda: primary.pubsub_numsub("user:alice:events")[0][1] == 1, 15, "a subscriber")
    wait_until(lambda: primary.pubsub_numsub("user:alice:events")[0][1] == 0, 15, "the unsubscribe")


def test_an_id_beyond_the_newest_resumes_at_the_newest(serve: Serve, primary: redis.Redis) -> None:
    base = serve(*GTHREAD)
    sid = sign_in(base, "alice")
    events = RealtimeService(primary)
    events.publish_user_event("alice", "old", {})
    with httpx.Client(timeout=TIMEOUT_S, headers={"Cookie": f"{COOKIE}={sid}"}) as client:
        headers = {"Last-Event-ID": "99999999999999-0"}
        with client.stream("GET", f"{base}/events", headers=headers) as response:
            seen = (frame for frame in frames(response) if "id" in frame)
            wait_until(lambda: primary.pubsub_numsub("user:alice:events")[0][1] == 1, 15, "a subscriber")
            live = events.publish_user_event("alice", "late", {})
            assert next(seen)["id"] == live  # clamped, not waiting for the year 5138


def test_a_user_beyond_max_streams_gets_429_until_one_closes(
    primary: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flask_events, "_closed_in", None)  # restored after the test
    app = create_app()

    def open_stream() -> Response:
        with app.test_request_context("/events"):
            return flask_events.event_stream("alice", max_streams=2)

    first, second = open_stream(), open_stream()
    refused = open_stream()
    assert refused.status_code == 429 and refused.json == {"error": "too_many_streams", "max_streams": 2}
    assert refused.headers["Cache-Control"] == "no-store"
    first.close()  # the server closes the body when the client goes, even one never read
    third = open_stream()
    assert third.status_code == 200
    for response in (second, third):
        response.close()
    close_event_streams()
