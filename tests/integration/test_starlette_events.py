"""`EventStreamResponse` under uvicorn: replay from Last-Event-ID, keep-alive, shutdown; a slow client."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from cache.integrations.starlette import EventStreamResponse, shutdown_event_streams
from cache.realtime.service import RealtimeService
from tests.integration.processes import Processes, log_of
from tests.integration.starlette_fixtures import Served
from tests.integration.test_starlette_sessions import APP, COOKIE, signed_in
from tests.waiting import wait_until
from workers.dev.servers import RedisServer, free_port, wait_for_port

pytestmark = pytest.mark.realtime


@pytest.fixture
def served(redis_env: dict[str, str], uvicorn_app: Callable[..., Served]) -> Served:
    return uvicorn_app(APP, "--timeout-graceful-shutdown", "30")


def frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE frames as {field: value}; comments become {"comment": text}."""
    frame: dict[str, str] = {}
    for line in lines:
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            frame[name] = value.strip()


def test_stream_headers_retry_replay_and_keep_alive(served: Served, redis_env: dict[str, str]) -> None:
    events = RealtimeService()
    first = events.publish_user_event(42, "report.progress", {"percent": 40})
    events.publish_user_event(42, "report.ready", {"id": "r-1"})
    with served.client() as http:
        sid = signed_in(http, "42")
        headers = {"cookie": f"{COOKIE}={sid}", "last-event-id": first}
        with http.stream("GET", "/events", headers=headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            seen = frames(response.iter_lines())
            assert next(seen) == {"retry": "3000"}
            replayed = next(seen)
            assert replayed["event"] == "report.ready" and json.loads(replayed["data"])["data"] == {
                "id": "r-1"
            }
            live_id = events.publish_user_event(42, "email.sent", {"to": 1})
            live, comments = False, 0
            while not (live and comments):  # the app's keep-alive is 0.5 s; pytest-timeout bounds this
                frame = next(seen)
                live = live or frame.get("id") == live_id
                comments += frame == {"comment": "keep-alive"}


def test_query_fallback_and_a_bad_id(served: Served, redis_env: dict[str, str]) -> None:
    events = RealtimeService()
    first = events.publish_user_event(42, "a", {})
    events.publish_user_event(42, "b", {})
    with served.client() as http:
        sid = signed_in(http, "42")
        cookie = {"cookie": f"{COOKIE}={sid}"}
        with http.stream("GET", "/events", params={"last_event_id": first}, headers=cookie) as response:
            seen = frames(response.iter_lines())
            next(seen)
            assert next(seen)["event"] == "b"
        refused = http.get("/events", headers={**cookie, "last-event-id": "junk"})
        assert refused.status_code == 400 and refused.json() == {"error": "bad_last_event_id"}
        assert refused.headers["cache-control"] == "no-store"


def test_redis_down_at_connect_answers_503_events_unavailable(
    redis_env: dict[str, str], uvicorn_app: Callable[..., Served], redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    served = uvicorn_app(APP, REDIS_URL=server.url)
    server.kill()
    with served.client() as http:
        answer = http.get("/demo-events")  # the start position cannot be read
    assert answer.status_code == 503 and answer.json() == {"error": "events_unavailable"}
    assert answer.headers["retry-after"] == "5" and answer.headers["cache-control"] == "no-store"


def test_sigterm_ends_open_streams_and_uvicorn_exits(served: Served) -> None:
    with served.client() as http:
        sid = signed_in(http, "42")
        with http.stream("GET", "/events", headers={"cookie": f"{COOKIE}={sid}"}) as response:
            seen = frames(response.iter_lines())
            assert next(seen) == {"retry": "3000"}
            served.process.send_signal(signal.SIGTERM)
            for _ in seen:  # the stream ends instead of waiting for the graceful timeout
                pass
    # uvicorn re-raises the SIGTERM it handled once it is done: -15 is its clean exit
    assert served.process.wait(timeout=20) in (0, -signal.SIGTERM), served.log()
    assert "Finished server process" in served.log()
    assert "timeout graceful shutdown exceeded" not in served.log()


def test_a_client_that_stops_reading_is_closed(redis_env: dict[str, str]) -> None:
    async def main() -> None:
        scope = {"type": "http", "method": "GET", "path": "/events", "headers": [], "query_string": b""}
        response = EventStreamResponse(Request(scope), 42, buffer=3)
        sent: list[object] = []
        stuck = asyncio.Event()

        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)
            if len(sent) >= 2:  # the start and `retry:` went out, then the socket fills
                await stuck.wait()

        task = asyncio.create_task(response(scope, receive, send))
        while len(sent) < 2:
            await asyncio.sleep(0.01)
        events = RealtimeService()
        for number in range(10):
            events.publish_user_event(42, "tick", {"n": number})
        await asyncio.wait_for(task, timeout=20)
        assert response.overflowed.is_set()
        await shutdown_event_streams()

    asyncio.run(main())


def test_gunicorn_preload_workers_each_stream_and_stop_on_sigterm(
    redis_env: dict[str, str], processes: Processes
) -> None:
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    worker = "uvicorn.workers.UvicornWorker"
    bind = f"127.0.0.1:{port}"
    master = processes.start(
        gunicorn,
        "-k",
        worker,
        "--preload",
        "-w",
        "2",
        "-b",
        bind,
        "--graceful-timeout",
        "30",
        APP,
        name="gunicorn",
    )
    wait_for_port(port, timeout_s=30)
    events = RealtimeService()
    with httpx.Client(base_url=f"http://{bind}", timeout=15) as http:
        sid = signed_in(http, "42")
        streams = [http.stream("GET", "/events", headers={"cookie": f"{COOKIE}={sid}"}) for _ in range(2)]
        readers = [frames(stream.__enter__().iter_lines()) for stream in streams]
        for reader in readers:
            assert next(reader) == {"retry": "3000"}
        wait_until(lambda: events.client.pubsub_numsub("user:42:events")[0][1] >= 1, 15, "a subscriber")
        event_id = events.publish_user_event(42, "report.ready", {})
        for reader in readers:  # whichever worker holds it, each stream gets the event
            assert next(f for f in reader if "id" in f)["id"] == event_id
        master.send_signal(signal.SIGTERM)
        for reader in readers:
            for _ in reader:
                pass
        for stream in streams:
            stream.__exit__(None, None, None)
    assert master.wait(timeout=25) == 0, log_of(master)


def test_a_backlog_beyond_the_buffer_arrives_whole_then_live(
    served: Served, redis_env: dict[str, str]
) -> None:
    events = RealtimeService()
    published = [events.publish_user_event(42, "tick", {"n": n}) for n in range(1000)]  # buffer: 256
    with served.client() as http:
        sid = signed_in(http, "42")
        headers = {"cookie": f"{COOKIE}={sid}", "last-event-id": "0"}
        with http.stream("GET", "/events", headers=headers) as response:
            seen = (frame["id"] for frame in frames(response.iter_lines()) if "id" in frame)
            assert [next(seen) for _ in published] == published  # whole, in order, once
            live = events.publish_user_event(42, "late", {})
            assert next(seen) == live


def test_a_client_gone_mid_replay_ends_its_handler_and_uvicorn_exits(
    served: Served, redis_env: dict[str, str]
) -> None:
    events = RealtimeService()
    for n in range(1000):  # the stream cap; 4 MB: more than the sockets hold
        events.publish_user_event(42, "tick", {"n": n, "pad": "x" * 4000})
    with served.client() as http:
        sid = signed_in(http, "42")
        headers = {"cookie": f"{COOKIE}={sid}", "last-event-id": "0"}
        with http.stream("GET", "/events", headers=headers) as response:
            seen = (frame for frame in frames(response.iter_lines()) if "id" in frame)
            next(seen)
            wait_until(lambda: events.client.pubsub_numsub("user:42:events")[0][1] == 1, 15, "a subscriber")
        # the client left mid-replay: the handler ends and unsubscribes
        wait_until(lambda: events.client.pubsub_numsub("user:42:events")[0][1] == 0, 15, "the unsubscribe")
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=20) in (0, -signal.SIGTERM), served.log()
    assert "timeout graceful shutdown exceeded" not in served.log()


def test_an_id_beyond_the_newest_resumes_at_the_newest(served: Served, redis_env: dict[str, str]) -> None:
    events = RealtimeService()
    events.publish_user_event(42, "old", {})
    with served.client() as http:
        sid = signed_in(http, "42")
        headers = {"cookie": f"{COOKIE}={sid}", "last-event-id": "99999999999999-0"}
        with http.stream("GET", "/events", headers=headers) as response:
            seen = (frame for frame in frames(response.iter_lines()) if "id" in frame)
            wait_until(lambda: events.client.pubsub_numsub("user:42:events")[0][1] == 1, 15, "a subscriber")
            live = events.publish_user_event(42, "late", {})
            assert next(seen)["id"] == live  # clamped, not waiting for the year 5138


def test_a_user_beyond_max_streams_gets_429_until_one_closes(served: Served) -> None:
    with served.client() as http:
        sid = signed_in(http, "42")
        cookie = {"cookie": f"{COOKIE}={sid}"}
        streams = [http.stream("GET", "/events", headers=cookie) for _ in range(4)]  # the default cap
        readers = [frames(stream.__enter__().iter_lines()) for stream in streams]
        for reader in readers:
            assert next(reader) == {"retry": "3000"}
        refused = http.get("/events", headers=cookie)
        assert refused.status_code == 429 and refused.json() == {
            "error": "too_many_streams",
            "max_streams": 4,
        }
        assert refused.headers["cache-control"] == "no-store"
        streams.pop().__exit__(None, None, None)

        def opens() -> bool:
            with http.stream("GET", "/events", headers=cookie) as response:
                return response.status_code == 200

        wait_until(opens, 15, "a free slot once a stream closed")
        for stream in streams:
            stream.__exit__(None, None, None)
