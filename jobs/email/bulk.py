"""Bulk sending: plan the chunks and lanes (pure), send a chunk concurrently (asyncio), report.

A bulk send is split into chunk jobs (`plan_chunk_size`: at least `AUTO_CHUNKS` of them
when the send is big enough, so every worker and several of its job slots get work). A
chunk job sends to its recipients with as many SMTP transactions at once as the worker's
pool allows (`plan_lanes`: SMTP_MAX_CONNECTIONS, or the caller's smaller cap), each
through `SmtpPool.deliver`, so the pool's process-wide bound holds whatever runs beside
it. Each recipient's outcome goes into the bulk's outcome hash as soon as the server
answered. A retried chunk skips every recipient whose outcome is final (`sent`,
`refused`), so only the deferred ones are tried again.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from cache import keys
from cache.connections import Role, primary, translate_errors
from jobs.email import idempotency
from jobs.email.render import RenderedEmail
from jobs.email.smtp import Delivery, SmtpConfigError, SmtpPool, Verdict
from jobs.email.templates import PROVIDED, TemplateLibrary
from jobs.email.validation import (
    MAX_BULK_RECIPIENTS,
    MAX_RECIPIENT_CONTEXT_BYTES,
    EmailValidationError,
    Mailbox,
    Recipient,
    check_context,
    check_locale,
    parse_mailbox,
)

AUTO_CHUNKS = 8  # a send is cut into at least this many jobs: 4 per worker of the default 2
MIN_AUTO_CHUNK_SIZE = 25  # below this a job's own cost (a few Redis round trips) outweighs the spread
MAX_AUTO_CHUNK_SIZE = 250  # keeps one job short: a retry or a lost worker redoes little
MAX_CHUNK_SIZE = 1000
UNREACHABLE_AFTER = 3  # server failures in a row (not a recipient's own reply): stop the chunk


@dataclass(frozen=True)
class BulkEmail:
    """What `enqueue_bulk_email` returns: the id to ask `bulk_status` about, and the chunk jobs."""

    bulk_id: str
    job_ids: tuple[str, ...]
    recipients: int
    duplicates: int = 0


@dataclass(frozen=True)
class BulkStatus:
    """Per-recipient outcomes of a bulk send, read from Redis."""

    bulk_id: str
    template: str
    total: int
    job_ids: tuple[str, ...]
    sent: int
    refused: dict[str, str]
    deferred: dict[str, str]
    failed: dict[str, str]

    @property
    def pending(self) -> int:
        """Recipients with no final outcome yet (not attempted, deferred or failed)."""
        return self.total - self.sent - len(self.refused)

    @property
    def complete(self) -> bool:
        return self.pending == 0


@dataclass
class ChunkReport:
    sent: int = 0
    skipped: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)
    aborted: str | None = None


@dataclass(frozen=True)
class Item:
    """One recipient of a chunk: mailbox, its own context and locale (already validated)."""

    mailbox: Mailbox
    context: Mapping[str, Any]
    locale: str

    @property
    def address(self) -> str:
        return self.mailbox.address


def chunked(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive slices of at most `size` (pure)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def plan_chunk_size(recipients: int) -> int:
    """Recipients per chunk job when the caller names none (pure, so a repeated call chunks alike)."""
    return min(MAX_AUTO_CHUNK_SIZE, max(MIN_AUTO_CHUNK_SIZE, math.ceil(recipients / AUTO_CHUNKS)))


def plan_lanes(pending: int, *, cap: int | None, max_connections: int) -> int:
    """SMTP transactions one chunk job keeps in flight (pure).

    As many as the worker's pool opens (`max_connections`), so one chunk alone can use
    the whole pool; no more than the recipients left, nor than the caller's `cap`.
    """
    limit = max_connections if cap is None else min(cap, max_connections)
    return max(1, min(limit, pending))


def plan_recipients(
    template: str,
    recipients: Iterable[Recipient | Sequence[str] | Mapping[str, Any]],
    *,
    shared: Mapping[str, Any],
    locale: str,
    library: TemplateLibrary,
) -> tuple[list[dict[str, Any]], int]:
    """Validate every recipient and return (payload items, duplicates dropped). Pure apart from templates.

    A recipient is an address (`a@b.example`, `Name <a@b.example>`, a `(name, address)`
    pair or its JSON form `[name, address]`) or `{"to": address, "context": {...}, "locale": "pt_BR"}`;
    its context is merged over the shared one. Repeated addresses (case-insensitive)
    get one message.

    Raises:
        EmailValidationError: names the recipient (index and address) and the problem.
    """
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates = 0
    for index, entry in enumerate(recipients):
        if index >= MAX_BULK_RECIPIENTS:
            raise EmailValidationError(
                f"more than {MAX_BULK_RECIPIENTS} recipients in one bulk send; split it"
            )
        what = f"recipients[{index}]"
        address, own, own_locale = _recipient_parts(entry, what, locale)
        mailbox = parse_mailbox(address, what)
        if mailbox.address.lower() in seen:
            duplicates += 1
            continue
        seen.add(mailbox.address.lower())
        own = check_context(own, f"{what}.context", MAX_RECIPIENT_CONTEXT_BYTES, PROVIDED)
        library.check_context(
            template, own_locale, {**shared, **own}, f"context of {what} ({mailbox.address})"
        )
        item: dict[str, Any] = {"to": list(mailbox)}
        if own:
            item["context"] = own
        if own_locale != locale:
            item["locale"] = own_locale
        items.append(item)
    if not items:
        raise EmailValidationError("recipients must name at least one address")
    return items, duplicates


def _recipient_parts(entry: object, what: str, locale: str) -> tuple[object, object, str]:
    """(address, own context, locale) of one bulk recipient, the address still to be parsed."""
    if isinstance(entry, str | tuple | list):
        return entry, {}, locale
    if not isinstance(entry, Mapping):
        raise EmailValidationError(
            f"{what} must be an address, a (name, address) pair or a mapping, got {type(entry).__name__}"
        )
    if set(entry) - {"to", "context", "locale"} or "to" not in entry:
        raise EmailValidationError(
            f"{what} must be an address or a mapping with 'to' and optional 'context'/'locale', "
            f"got keys {sorted(map(str, entry))}"
        )
    return entry["to"], entry.get("context") or {}, check_locale(entry.get("locale", locale))


async def deliver_all(
    pool: SmtpPool,
    items: Sequence[Item],
    render: Callable[[Item], RenderedEmail],
    record: Callable[[Mapping[str, str]], None],
    *,
    lanes: int,
) -> ChunkReport:
    """Send one message per item, `lanes` at a time, recording each outcome as soon as it is known.

    Every message goes through `pool.deliver`, which picks the connection and applies
    the pool's own bound; a lane is one coroutine taking the next item.

    `record({address: outcome, ...})` is a group commit: a recorder task writes, in one
    call, every answer that arrived since its last write, i.e. within one turn of the
    event loop. The window between the server's answer and its record stays one loop
    turn plus one round trip, at one write per batch instead of one per message.

    A configuration error (credentials, TLS) stops every lane; so do `UNREACHABLE_AFTER`
    deferrals in a row that are not a recipient's own RCPT reply (connection refused or
    lost, `421`, `4xx` to MAIL or DATA): the server is down or throttling. What was not
    attempted is reported deferred.
    """
    run = _BulkRun(pool, items, render, record, lanes)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(run.recorder())
            for _ in range(run.lanes_left):
                group.create_task(run.lane())
    except BaseExceptionGroup as errors:  # e.g. Redis down while recording: surface the error itself
        raise errors.exceptions[0] from None
    reason = run.report.aborted or run.gave_up or "not attempted"
    for item in run.todo:
        run.report.deferred[item.address] = reason
    return run.report


class _BulkRun:
    """What the lanes and the recorder of one `deliver_all` share: one event loop, so no lock."""

    def __init__(
        self,
        pool: SmtpPool,
        items: Sequence[Item],
        render: Callable[[Item], RenderedEmail],
        record: Callable[[Mapping[str, str]], None],
        lanes: int,
    ) -> None:
        self.pool, self.render, self.record = pool, render, record
        self.todo = deque(items)
        self.report = ChunkReport()
        self.pending: dict[str, str] = {}  # outcomes not recorded yet
        self.wake = asyncio.Event()
        self.lanes_left = max(1, min(lanes, len(items)))
        self.failures = 0  # server failures in a row, across the lanes
        self.gave_up: str | None = None  # why the lanes stopped after too many of them

    def note(self, address: str, outcome: str) -> None:
        self.pending[address] = outcome
        self.wake.set()

    async def recorder(self) -> None:
        while self.lanes_left or self.pending:
            await self.wake.wait()
            self.wake.clear()
            if self.pending:
                batch = dict(self.pending)
                self.pending.clear()
                self.record(batch)

    def go_on(self) -> bool:
        return bool(self.todo) and self.report.aborted is None and self.gave_up is None

    async def lane(self) -> None:
        try:
            while self.go_on():
                item = self.todo.popleft()
                try:
                    message = self.render(item)
                except EmailValidationError as exc:
                    self.report.refused[item.address] = f"invalid message: {exc}"
                    self.note(item.address, f"{idempotency.REFUSED}:invalid message: {exc}")
                    continue
                try:
                    delivery = await self.pool.deliver(message.envelope_from, message.recipients, message.raw)
                except SmtpConfigError as exc:
                    self.report.aborted = str(exc)
                    self.todo.appendleft(item)
                    return
                self.count(item, delivery)
        finally:
            self.lanes_left -= 1
            self.wake.set()

    def count(self, item: Item, delivery: Delivery) -> None:
        """Report and record the server's answer for one item; count a failure of the server itself."""
        reason = delivery.refused.get(item.address, delivery.reason)  # the RCPT reply, if that was it
        server_failed = delivery.verdict is Verdict.DEFERRED and item.address not in delivery.refused
        self.failures = self.failures + 1 if server_failed else 0
        if self.failures >= UNREACHABLE_AFTER and self.gave_up is None:
            self.gave_up = (
                f"not attempted: the SMTP server failed {self.failures} transactions in a row ({reason})"
            )
        if delivery.verdict is Verdict.ACCEPTED:
            self.report.sent += 1
            self.note(item.address, idempotency.SENT)
        elif delivery.verdict is Verdict.REFUSED:
            self.report.refused[item.address] = reason
            self.note(item.address, f"{idempotency.REFUSED}:{reason}")
        else:
            self.report.deferred[item.address] = reason
            self.note(item.address, f"{idempotency.DEFERRED}:{reason}")


def store_info(client: redis.Redis | None = None, *, bulk_id: str, info: Mapping[str, Any]) -> None:
    client = client or primary()
    with translate_errors(Role.PRIMARY):
        client.set(keys.email_bulk_info(bulk_id), json.dumps(dict(info)), ex=idempotency.BULK_TTL_S)


def bulk_status(client: redis.Redis | None = None, *, bulk_id: str) -> BulkStatus | None:
    """Counts and per-recipient reasons of a bulk send; None when unknown or expired.

    Raises:
        RedisUnavailable: the PRIMARY cannot be read.
    """
    client = client or primary()
    with translate_errors(Role.PRIMARY):
        raw = client.get(keys.email_bulk_info(bulk_id))
    if raw is None:
        return None
    info = json.loads(raw)
    sent = 0
    buckets: dict[str, dict[str, str]] = {
        idempotency.REFUSED: {},
        idempotency.DEFERRED: {},
        idempotency.FAILED: {},
    }
    for recipient, value in idempotency.all_outcomes(client, bulk_id=bulk_id).items():
        kind, reason = idempotency.outcome(value)
        if kind == idempotency.SENT:
            sent += 1
        elif kind in buckets:
            buckets[kind][recipient] = reason
    return BulkStatus(
        bulk_id=bulk_id,
        template=str(info["template"]),
        total=int(info["recipients"]),
        job_ids=tuple(info["job_ids"]),
        sent=sent,
        refused=buckets[idempotency.REFUSED],
        deferred=buckets[idempotency.DEFERRED],
        failed=buckets[idempotency.FAILED],
    )


def new_bulk_info(template: str, locale: str, recipients: int, job_ids: Sequence[str]) -> dict[str, Any]:
    return {
        "template": template,
        "locale": locale,
        "recipients": recipients,
        "job_ids": list(job_ids),
        "created_at": time.time(),
    }
