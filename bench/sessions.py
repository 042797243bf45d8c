"""SessionService round trips against raw redis-py HSET/HGETALL on the same server.

`python -m bench sessions`. Starts its own PRIMARY redis-server (the shipped
redis.conf) in a temporary directory. Two measurements, each interleaved over a few
rounds and reported as the median so a noisy neighbour hurts both sides alike:

- create+get: `create()` then `get()` (2 EVALSHA) vs HSET + PEXPIRE + HGETALL.
- get: `get()` with idle sliding (1 EVALSHA) vs a bare HGETALL.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.typing import EncodableT, FieldT

from cache import keys
from cache.connections import Role, build_client
from cache.sessions.service import SessionService, new_session_id
from cache.settings import Settings
from workers.dev.servers import PRIMARY_CONF, RedisServer

ITERATIONS = 3_000  # per round and side
ROUNDS = 3
MAX_SECONDS_PER_RUN = 10.0  # bounds each timed loop on a very slow machine
WARMUP = 200


def _ops_per_s(step: Callable[[int], Any]) -> float:
    for i in range(WARMUP):
        step(i)
    start = time.perf_counter()
    done = 0
    while done < ITERATIONS and time.perf_counter() - start < MAX_SECONDS_PER_RUN:
        step(done)
        done += 1
    return done / (time.perf_counter() - start)


def _result(metric: str, value: float, baseline: float) -> dict[str, Any]:
    return {
        "bench": "sessions",
        "metric": metric,
        "value": round(value, 1),
        "unit": "ops/s",
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 3),
        "better": "higher",
    }


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kx-bench-sessions-") as tmp:
        server = RedisServer(PRIMARY_CONF, Path(tmp) / "primary").start()
        try:
            client = build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url}))
            service = SessionService(client)
            data = {"cart": [1, 2, 3], "lang": "en", "role": "member"}
            now_ms = int(time.time() * 1000)
            mapping: dict[FieldT, EncodableT] = {
                "uid": "u1",
                "created": now_ms,
                "seen": now_ms,
                "idle": 86_400_000,
                "abs": now_ms,
            }
            mapping |= {f"d:{k}": str(v) for k, v in data.items()}

            def raw_create_get(_: int) -> None:
                key = keys.session(new_session_id())
                client.hset(key, mapping=mapping)
                client.pexpire(key, 86_400_000)
                client.hgetall(key)

            def service_create_get(_: int) -> None:
                service.get(service.create("u1", data))

            sid = service.create("u2", data)
            raw_key = keys.session(new_session_id())
            client.hset(raw_key, mapping=mapping)

            pairs: dict[str, tuple[list[float], list[float]]] = {
                "create+get": ([], []),
                "get": ([], []),
            }
            for _ in range(ROUNDS):
                pairs["create+get"][0].append(_ops_per_s(service_create_get))
                pairs["create+get"][1].append(_ops_per_s(raw_create_get))
                pairs["get"][0].append(_ops_per_s(lambda _: service.get(sid)))
                pairs["get"][1].append(_ops_per_s(lambda _: client.hgetall(raw_key)))
            client.close()
            return [
                _result(metric, statistics.median(ours), statistics.median(raw))
                for metric, (ours, raw) in pairs.items()
            ]
        finally:
            server.stop()


if __name__ == "__main__":
    import json

    for line in run():
        print(json.dumps(line))
