"""Markers that stop an email from being sent twice, on the PRIMARY Redis.

- A transactional email's marker `kx:email:{idem:<idempotency key>}:sent` is written only
  after the SMTP server accepted the message (250 after DATA), with a TTL. A retry or
  a duplicate job finds it and sends nothing.
- Before each SMTP transaction a claim `kx:email:{idem:<idempotency key>}:sending` is set, and
  it is removed with the marker write, or when the server's answer proves it did not
  take the message. An attempt that finds a claim left behind knows the previous one
  died (or lost its connection) mid-transaction: it still sends, since an email lost
  would be worse, but it flags the send as a possible duplicate (log, job result, and
  once accepted the counter `kx:email:possible_duplicates`).
- A bulk send keeps one hash `kx:email:bulk:{<id>}:outcomes`, recipient -> outcome;
  `sent` and `refused` are final and never sent again, `deferred` and `failed` are
  retried.

The window that remains (the process dies after the server's 250 and before the
marker write) cannot be closed over SMTP; the claim makes every send that may fall in
it visible. See docs/email.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from cache import keys
from cache.connections import Role, primary, translate_errors
from cache.text import as_text

DAY_S = 24 * 3600
MARKER_TTL_S = 7 * DAY_S  # longer than any retry schedule and than a job's 1-day unique window
BULK_TTL_S = 7 * DAY_S  # how long a bulk's per-recipient outcomes stay inspectable

SENT = "sent"
REFUSED = "refused"
DEFERRED = "deferred"
FAILED = "failed"
FINAL = (SENT, REFUSED)


def begin_send(
    client: redis.Redis | None = None, *, idempotency_key: str, attempt: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Check the sent marker and claim the SMTP transaction for `attempt`, in one round trip.

    Returns:
        `(sent, earlier)`: what was recorded when the email was accepted (None if it was
        not; then there is nothing to send and no claim is kept), and the claim an earlier
        attempt left behind (None if none). A claim left behind means that attempt may have
        been accepted: the caller flags its send as a possible duplicate.

    Raises:
        RedisUnavailable: the PRIMARY cannot be used; do not send without knowing.
    """
    client = client or primary()
    claim = keys.email_sending_claim(idempotency_key)
    with translate_errors(Role.PRIMARY):
        with client.pipeline(transaction=False) as pipe:
            pipe.get(keys.email_sent_marker(idempotency_key))
            pipe.set(claim, json.dumps(dict(attempt)), ex=MARKER_TTL_S, get=True)
            sent, earlier = pipe.execute()
        if sent is not None:
            client.delete(claim)  # the marker is written in one MULTI with the claim's removal
            return _record(sent), None
    if earlier is None:
        return None, None
    found = _record(earlier)
    if "nonce" in attempt and found.get("nonce") == attempt["nonce"]:
        return None, None  # our own claim: the client resent the pipeline after a lost reply
    return None, found


def mark_sent(
    client: redis.Redis | None = None,
    *,
    idempotency_key: str,
    record: Mapping[str, Any],
    ttl_s: int = MARKER_TTL_S,
) -> None:
    """Record that the SMTP server accepted the email with this key, and drop its claim.

    A send flagged `possible_duplicate` in `record` is counted right after.

    Raises:
        RedisUnavailable: the marker could not be written (the caller decides; see jobs.py).
    """
    client = client or primary()
    with translate_errors(Role.PRIMARY):
        with client.pipeline(transaction=True) as pipe:  # marker and claim share a hash tag: one slot
            pipe.set(keys.email_sent_marker(idempotency_key), json.dumps(dict(record)), ex=ttl_s)
            pipe.delete(keys.email_sending_claim(idempotency_key))
            pipe.execute()
        if record.get("possible_duplicate"):
            # A statistic, not state: outside the MULTI, since on a Cluster the one counter
            # lives on another slot than the marker. Lost only if Redis fails between the two.
            client.incr(keys.EMAIL_POSSIBLE_DUPLICATES)


def release_claim(
    client: redis.Redis | None = None, *, idempotency_key: str, earlier: Mapping[str, Any] | None = None
) -> None:
    """This attempt proved it left no copy (a refusal, a render error): undo its claim.

    The claim goes back to `earlier`, the one this attempt found: that attempt is still
    unresolved, so the next attempt must still find it (and flag its send).
    """
    client = client or primary()
    claim = keys.email_sending_claim(idempotency_key)
    with translate_errors(Role.PRIMARY):
        if earlier is None:
            client.delete(claim)
        else:
            client.set(claim, json.dumps(dict(earlier)), keepttl=True)


def possible_duplicates(client: redis.Redis | None = None) -> int:
    """Accepted sends flagged as possible duplicates (ever, not reset): a counter for metrics."""
    client = client or primary()
    with translate_errors(Role.PRIMARY):
        raw = client.get(keys.EMAIL_POSSIBLE_DUPLICATES)
    return int(raw or 0)


def _record(raw: bytes | str) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(raw)
    except ValueError:
        record = {"raw": raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)}
    return record


def outcome(value: str | bytes | None) -> tuple[str | None, str]:
    """Split a stored outcome `kind` or `kind:reason` (pure)."""
    if value is None:
        return None, ""
    text = value.decode() if isinstance(value, bytes) else value
    kind, _, reason = text.partition(":")
    return kind, reason


def is_final(value: str | bytes | None) -> bool:
    """A recipient whose outcome is final is never sent to again."""
    return outcome(value)[0] in FINAL


def bulk_outcomes(
    client: redis.Redis | None = None, *, bulk_id: str, recipients: Sequence[str]
) -> dict[str, str | None]:
    """The stored outcome of each recipient (None: not attempted yet); refreshes the TTL."""
    client = client or primary()
    key = keys.email_bulk_outcomes(bulk_id)
    with translate_errors(Role.PRIMARY), client.pipeline(transaction=False) as pipe:
        pipe.hmget(key, list(recipients))
        pipe.expire(key, BULK_TTL_S)
        values = pipe.execute()[0]
    return {r: (v.decode() if isinstance(v, bytes) else v) for r, v in zip(recipients, values, strict=True)}


def record_outcomes(client: redis.Redis | None = None, *, bulk_id: str, outcomes: Mapping[str, str]) -> None:
    """Store recipient -> `kind[:reason]`; one HSET (no TTL reset, `bulk_outcomes` does that)."""
    if not outcomes:
        return
    client = client or primary()
    with translate_errors(Role.PRIMARY):
        client.hset(keys.email_bulk_outcomes(bulk_id), mapping={k: v for k, v in outcomes.items()})


def all_outcomes(client: redis.Redis | None = None, *, bulk_id: str) -> dict[str, str]:
    client = client or primary()
    with translate_errors(Role.PRIMARY):
        raw = client.hgetall(keys.email_bulk_outcomes(bulk_id))
    return {as_text(k): as_text(v) for k, v in raw.items()}
