"""Hostile queue entries, written straight into Redis as an attacker with write access would.

Each `Poison` writes one entry (LPUSH/RPUSH of an id, HSET of a job hash with bad
fields) and says where it must end up: the failed registry (its hash is usable, so RQ
can record the failure) or the quarantine (nothing usable to record), with a fragment
of the readable reason.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

FAILED = "failed"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Context:
    canary_dir: Path  # a pickle or os.system that ran would create a file here
    webhook_url: str  # a loopback listener that must receive nothing


@dataclass(frozen=True)
class Poison:
    name: str
    expect: str  # FAILED or QUARANTINE
    reason: str  # a fragment of the reason it is reported with
    write: Callable[[redis.Redis, str, Context], bytes]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _data(func: str, *args: object) -> bytes:
    return json.dumps([func, None, list(args), {}]).encode()


def job_hash(client: redis.Redis, job_id: str, queue: str, **fields: object) -> None:
    """HSET a job hash with RQ's fields; `fields` override or add (None drops a field)."""
    mapping: dict[str, object] = {
        "data": _data("jobs.diagnostics.noop"),
        "origin": queue,
        "status": "queued",
        "created_at": _now(),
        "enqueued_at": _now(),
        "description": "hand-written",
        "timeout": 30,
    }
    mapping.update(fields)
    client.hset(f"rq:job:{job_id}", mapping={k: v for k, v in mapping.items() if v is not None})  # type: ignore[arg-type]


def push(client: redis.Redis, queue: str, job_id: bytes) -> bytes:
    client.sadd("rq:queues", f"rq:queue:{queue}")
    client.rpush(f"rq:queue:{queue}", job_id)
    return job_id


class PickleCanary:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _id_only(job_id: bytes) -> Callable[[redis.Redis, str, Context], bytes]:
    def write(client: redis.Redis, queue: str, ctx: Context) -> bytes:
        text = job_id.decode(errors="replace")
        if job_id and "\ufffd" not in text:
            job_hash(client, text, queue)  # a well-formed hash does not make the id usable
        return push(client, queue, job_id)

    return write


def _hash(**fields: object) -> Callable[[redis.Redis, str, Context], bytes]:
    def write(client: redis.Redis, queue: str, ctx: Context) -> bytes:
        job_id = f"poison-{uuid.uuid4().hex}"
        resolved = {k: (v(ctx) if callable(v) else v) for k, v in fields.items()}
        job_hash(client, job_id, queue, **resolved)
        return push(client, queue, job_id.encode())

    return write


def _missing_hash(client: redis.Redis, queue: str, ctx: Context) -> bytes:
    return push(client, queue, f"ghost-{uuid.uuid4().hex}".encode())


def _webhooks(status: str) -> Callable[[Context], bytes]:
    def value(ctx: Context) -> bytes:
        hook = {"url": ctx.webhook_url, "job_status": status, "method": "POST", "headers": {"X-Evil": "1"}}
        return json.dumps([hook]).encode()

    return value


def _pickle(ctx: Context) -> bytes:
    return pickle.dumps(("jobs.diagnostics.noop", None, [PickleCanary(ctx.canary_dir / "pickle")], {}))


def _pickle_meta(ctx: Context) -> bytes:
    return pickle.dumps({"progress": PickleCanary(ctx.canary_dir / "meta")})


def _system(ctx: Context) -> bytes:
    return _data("os.system", f"touch {ctx.canary_dir / 'system'}")


POISONS = [
    Poison("slash id", QUARANTINE, "malformed", _id_only(b"../../etc/passwd")),
    Poison("dot id", QUARANTINE, "malformed", _id_only(b"job.with.dots")),
    Poison("empty id", QUARANTINE, "malformed", _id_only(b"")),
    Poison("binary id", QUARANTINE, "not UTF-8", _id_only(b"\xff\xfe\x00bad")),
    Poison("terminal escapes in the id", QUARANTINE, "malformed", _id_only(b"\x1b[2J\x1b]0;owned\x07")),
    Poison("missing hash", QUARANTINE, "no job hash", _missing_hash),
    Poison("hash without data", QUARANTINE, "unreadable", _hash(data=None)),
    Poison("garbage data", FAILED, "not a JSON job", _hash(data=b"\x00\xff not json")),
    Poison("JSON of the wrong shape", FAILED, "not a JSON job", _hash(data=b'{"a": 1}')),
    Poison("pickle data", FAILED, "not a JSON job", _hash(data=_pickle)),
    Poison("pickle meta", FAILED, "meta is not JSON", _hash(meta=_pickle_meta)),
    Poison("bad created_at", QUARANTINE, "unreadable", _hash(created_at="yesterday")),
    Poison("bad status", QUARANTINE, "unreadable", _hash(status="exploded")),
    Poison("bad timeout", QUARANTINE, "unreadable", _hash(timeout="soon")),
    Poison("bad dependency_ids", QUARANTINE, "unreadable", _hash(dependency_ids="[not json")),
    Poison("success callback os.system", FAILED, "allow-list", _hash(success_callback_name="os.system")),
    Poison(
        "failure callback builtins.eval",
        FAILED,
        "allow-list",
        _hash(data=_data("jobs.diagnostics.crash", "x"), failure_callback_name="builtins.eval"),
    ),
    Poison("webhook on success", FAILED, "webhooks", _hash(webhooks=_webhooks("finished"))),
    Poison("webhook on a refused job", FAILED, "webhooks", _hash(data=_system, webhooks=_webhooks("failed"))),
    Poison("no timeout", FAILED, "job timeout", _hash(timeout=-1)),
    Poison("timeout past the queue's", FAILED, "job timeout", _hash(timeout=86400)),
    Poison("timeout past any bound", QUARANTINE, "timeout", _hash(timeout=10**20)),
    Poison("fractional timeout", QUARANTINE, "a field RQ cannot parse", _hash(timeout=1.5)),
    Poison("dependency on a missing job", FAILED, "depends on", _hash(dependency_ids='["no-such-job"]')),
]


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list[str]

    def _record(self) -> None:
        self.received.append(f"{self.command} {self.path}")
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Listener:
    url: str
    received: list[str]


@pytest.fixture
def webhook_listener() -> Iterator[Listener]:
    """A loopback HTTP server recording every request; poison tests assert it stays empty."""
    received: list[str] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Listener(f"http://127.0.0.1:{server.server_address[1]}/hook", received)
    server.shutdown()
    server.server_close()
