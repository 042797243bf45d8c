"""Real-time events against raw redis-py pub/sub on the same PRIMARY redis-server.

`python -m bench realtime`. Starts its own redis-server (the shipped redis.conf) in a
temporary directory and measures, in one run:

- publish: `publish_user_event` (one EVALSHA: XADD MAXLEN ~ + PEXPIRE + PUBLISH) vs a
  bare `PUBLISH` of the same JSON envelope (the at-most-once original). Interleaved
  rounds; medians.
- delivery: events/s from the first publish to the last event in a handler, through
  `Subscriber` (decode, dedupe, handler call) vs a raw redis-py `get_message` loop that
  `orjson.loads` each payload; both sides publish with `publish_user_event`, so the
  ratio is the subscriber's own cost. Rounds alternate; medians.
- delivered_while_away: the fraction of events published while the subscriber was
  disconnected (Redis restarted) that reach the handler: `Subscriber` (replay) vs raw
  redis-py pub/sub (auto-resubscribe only).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.common import row
from cache.connections import Role, build_client
from cache.realtime.envelope import Event
from cache.realtime.service import RealtimeService
from cache.realtime.subscriber import Subscriber
from cache.settings import Settings
from workers.dev.servers import PRIMARY_CONF, RedisServer

BENCH = "realtime"
PUBLISH_OPS = 3_000  # per round and side
DELIVERY_EVENTS = 5_000  # per round and side
ROUNDS = 3
AWAY_EVENTS = 500
MAX_S = 20.0  # bound on any one timed loop or wait
DATA = {"job_id": "8d7c1f0e-report", "percent": 42, "stage": "rendering", "rows": 12_345}


def _timed(step: Callable[[int], Any], count: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < count and time.perf_counter() - start < MAX_S:
        step(done)
        done += 1
    return done / (time.perf_counter() - start)


def _publish_rates(service: RealtimeService) -> tuple[float, float]:
    raw = service.client
    envelope = orjson.dumps(
        {"id": "0-0", "event": "progress", "data": DATA, "timestamp": "2024-05-01T11:00:00.000Z"}
    )
    ours, base = [], []
    for _ in range(ROUNDS):
        ours.append(_timed(lambda i: service.publish_user_event("bench", "progress", DATA), PUBLISH_OPS))
        base.append(_timed(lambda i: raw.publish("user:bench:events", envelope), PUBLISH_OPS))
    return statistics.median(ours), statistics.median(base)


def _delivery_ours(service: RealtimeService, settings: Settings) -> float:
    done = threading.Event()
    count = [0]

    def handler(event: Event) -> None:
        count[0] += 1
        if count[0] >= DELIVERY_EVENTS:
            done.set()

    client = build_client(Role.PRIMARY, settings, pubsub=True, decode_responses=True)
    with Subscriber(client, service=service) as subscriber:
        subscriber.subscribe_user("delivery", handler)
        subscriber.wait_ready(MAX_S)
        start = time.perf_counter()
        for _ in range(DELIVERY_EVENTS):
            service.publish_user_event("delivery", "progress", DATA)
        done.wait(MAX_S)
        return count[0] / (time.perf_counter() - start)


def _delivery_raw(service: RealtimeService, settings: Settings) -> float:
    client = build_client(Role.PRIMARY, settings, pubsub=True, decode_responses=True)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("user:raw:events")
    pubsub.get_message(timeout=5)
    count = [0]
    done = threading.Event()

    def read() -> None:
        deadline = time.monotonic() + MAX_S
        while count[0] < DELIVERY_EVENTS and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                orjson.loads(message["data"])
                count[0] += 1
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    start = time.perf_counter()
    for _ in range(DELIVERY_EVENTS):
        service.publish_user_event("raw", "progress", DATA)
    done.wait(MAX_S)
    rate = count[0] / (time.perf_counter() - start)
    reader.join(MAX_S)
    pubsub.close()
    client.close()
    return rate


def _away_ours(server: RedisServer, service: RealtimeService, settings: Settings) -> float:
    entered, release = threading.Event(), threading.Event()

    def gate(attempt: int) -> float:
        entered.set()
        release.wait(MAX_S)
        return 0.01

    got = [0]
    client = build_client(Role.PRIMARY, settings, pubsub=True, decode_responses=True)
    with Subscriber(client, service=service, backoff=gate) as subscriber:
        subscriber.subscribe_user("away", lambda event: got.__setitem__(0, got[0] + 1))
        subscriber.wait_ready(MAX_S)
        server.kill()
        entered.wait(MAX_S)
        server.start()
        for _ in range(AWAY_EVENTS):
            service.publish_user_event("away", "progress", DATA)
        release.set()
        deadline = time.monotonic() + MAX_S
        while got[0] < AWAY_EVENTS and time.monotonic() < deadline:
            time.sleep(0.01)
    return got[0] / AWAY_EVENTS


def _away_raw(server: RedisServer, service: RealtimeService, settings: Settings) -> float:
    client = build_client(Role.PRIMARY, settings, pubsub=True, decode_responses=True)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("user:away-raw:events")
    pubsub.get_message(timeout=5)
    server.kill()
    server.start()
    for _ in range(AWAY_EVENTS):
        service.publish_user_event("away-raw", "progress", DATA)
    got = 0
    deadline = time.monotonic() + 2.0  # redis-py reconnects and resubscribes on the first read
    while time.monotonic() < deadline:
        try:
            message = pubsub.get_message(timeout=0.1)
        except Exception:  # the first read may find the old socket dead; the next reconnects
            continue
        if message and message["type"] == "message":
            got += 1
    pubsub.close()
    client.close()
    return got / AWAY_EVENTS


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kx-bench-realtime-") as tmp:
        server = RedisServer(PRIMARY_CONF, Path(tmp) / "primary").start()
        try:
            settings = Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "2"})
            service = RealtimeService(build_client(Role.PRIMARY, settings))
            publish, publish_base = _publish_rates(service)
            ours, raw = [], []
            for _ in range(ROUNDS):
                ours.append(_delivery_ours(service, settings))
                raw.append(_delivery_raw(service, settings))
            away = _away_ours(server, service, settings)
            away_base = _away_raw(server, service, settings)
        finally:
            server.stop()
    return [
        row(
            BENCH, "publish", publish, "ops/s", publish_base, "higher", note="EVALSHA XADD+PUBLISH vs PUBLISH"
        ),
        row(BENCH, "delivery", statistics.median(ours), "events/s", statistics.median(raw), "higher"),
        row(BENCH, "delivered_while_away", away, "fraction", away_base, "higher", events=AWAY_EVENTS),
    ]
