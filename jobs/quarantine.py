"""Queue entries too broken for the failed registry, set aside with a readable reason.

Anyone who can write to Redis can push any bytes onto a queue. RQ raises on an id it
cannot parse or a job hash it cannot read, and a worker that meets one exits; the
entry then stays in the queue's intermediate list and stops every worker after it.
A readable job that must not run fails into the failed registry (it has a hash to
record the failure on); everything else ends here, in `QUARANTINE_KEY`, and is never
handed to a worker or requeued again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq.defaults import RQ_KEY_PREFIX
from rq.exceptions import NoSuchJobError

from cache import keys
from cache.text import printable

log = logging.getLogger("kryonix.quarantine")

QUARANTINE_KEY = keys.quarantine(RQ_KEY_PREFIX)  # on RQ's slot: one MULTI with RQ's lists

MAX_AT = 253402300800.0  # 10000-01-01: later cannot be shown as a date

JOB_ID = re.compile(r"[A-Za-z0-9_-]+")  # RQ's own rule (rq.job.JOB_ID_PATTERN), checked before RQ raises


class UnreadableJob(NoSuchJobError):
    """A queue or registry entry whose id or job hash cannot be read.

    A subclass of RQ's NoSuchJobError, so every RQ code path that skips a vanished job
    skips this one too instead of raising out of the worker's loop.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_id(raw_id: bytes | str) -> str:
    """The job id of a queue or registry entry (`<job id>` or RQ's `<job id>:<execution id>`).

    Raises:
        UnreadableJob: not UTF-8, or not made of RQ's id characters.
    """
    if isinstance(raw_id, bytes):
        try:
            raw_id = raw_id.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableJob(f"job id {printable(raw_id)!r} is not UTF-8 text") from None
    job_id = raw_id.split(":", 1)[0]
    if not JOB_ID.fullmatch(job_id):
        raise UnreadableJob(f"job id {raw_id!r} is malformed: only letters, digits, '_' and '-' are allowed")
    return job_id


def raw_ids(values: Any) -> list[bytes | str]:
    """The members a LRANGE or ZRANGE answered, typed (redis-py types them loosely)."""
    return [value for value in values if isinstance(value, bytes | str)]


def missing_hash_reason(job_id: str) -> str:
    return f"no job hash rq:job:{job_id} (deleted, expired or never written)"


@dataclass(frozen=True)
class Quarantined:
    queue: str
    id: str
    reason: str
    source: str
    at: float | None  # None: unknown (an unreadable entry)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def quarantine(
    client: redis.Redis,
    *,
    queue: str,
    raw_id: bytes | str,
    reason: str,
    source: str | None = None,
    pipeline: Any = None,
) -> None:
    """Record `raw_id` as set aside and remove it from the list `source` (one MULTI).

    Recording twice overwrites: one entry per queue and id.
    """
    entry = Quarantined(queue, printable(raw_id), reason, source or "", time.time())
    pipe = pipeline if pipeline is not None else client.pipeline(transaction=True)
    pipe.hset(QUARANTINE_KEY, f"{queue}/{entry.id}", json.dumps(entry.as_dict()))
    if source:
        pipe.lrem(source, 0, raw_id)  # type: ignore[arg-type]  # bytes are fine on the wire
    if pipeline is None:
        pipe.execute()
    log.error("queue %s: job %r set aside: %s", queue, entry.id, reason)


def list_quarantined(client: redis.Redis, *, queue: str | None = None) -> list[Quarantined]:
    """Entries set aside, newest first (of `queue`, or all)."""
    entries = []
    for raw in client.hvals(QUARANTINE_KEY):
        try:
            entry = _entry(json.loads(raw))
        except (ValueError, TypeError) as exc:  # written by hand too: show it, do not fail
            entry = Quarantined("?", printable(raw)[:80], f"unreadable quarantine entry: {exc}", "", None)
        if queue is None or entry.queue == queue:
            entries.append(entry)
    return sorted(entries, key=lambda entry: entry.at or 0.0, reverse=True)


def _entry(fields: Any) -> Quarantined:
    """One entry as `quarantine` wrote it. Raises TypeError or ValueError for any other shape."""
    if not isinstance(fields, dict):
        raise TypeError(f"JSON {type(fields).__name__}, not an object")
    entry = Quarantined(**fields)
    for name in ("queue", "id", "reason", "source"):
        if not isinstance(getattr(entry, name), str):
            raise TypeError(f"{name} is not text")
    at = entry.at
    if not isinstance(at, int | float) or isinstance(at, bool) or not 0 <= at < MAX_AT:
        raise ValueError(f"at {printable(repr(at))[:40]} is not a time in seconds since the epoch")
    return entry


def purge_quarantined(client: redis.Redis, *, queue: str | None = None) -> int:
    """Forget quarantined entries (of `queue`, or all); returns how many."""
    fields = [
        field for field in client.hkeys(QUARANTINE_KEY) if queue is None or _field_queue(field) == queue
    ]
    if fields:
        client.hdel(QUARANTINE_KEY, *fields)
    return len(fields)


def _field_queue(field: bytes | str) -> str:
    return printable(field).partition("/")[0]
