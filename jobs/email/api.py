"""`enqueue_email` and `enqueue_bulk_email`: validate everything, then enqueue on `email`.

Nothing reaches Redis before the input is known good: addresses (email-validator, no
DNS), header values (no CR/LF), the template and every variable it needs, a trial
render, attachment and recipient limits. The checks run on the job's JSON form, in
`jobs.email.payloads`, and the job runs the same function again in the worker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from cache.settings import get_settings
from jobs.email.bulk import (
    MAX_CHUNK_SIZE,
    BulkEmail,
    chunked,
    new_bulk_info,
    plan_chunk_size,
    plan_recipients,
    store_info,
)
from jobs.email.payloads import BulkChunk, check_connections, validate_bulk_chunk, validate_email_payload
from jobs.email.templates import PROVIDED, TemplateLibrary, default_library
from jobs.email.validation import (
    PAYLOAD_VERSION,
    Attachment,
    EmailRequest,
    EmailValidationError,
    Recipient,
    attachment_payload,
    check_attachments,
    check_context,
    check_idempotency_key,
    check_locale,
    parse_mailbox,
    parse_recipients,
    parse_sender,
)
from jobs.enqueue import enqueue
from jobs.retry import RetryPolicy

SEND_EMAIL = "jobs.email.jobs.send_email"
SEND_BULK_CHUNK = "jobs.email.jobs.send_bulk_chunk"


def build_request(
    to: Recipient | Sequence[Recipient],
    template: str,
    context: Mapping[str, Any],
    *,
    locale: str = "en",
    attachments: Iterable[Attachment | Mapping[str, Any]] | None = None,
    reply_to: Recipient | None = None,
    idempotency_key: str | None = None,
    requested_by: str | int | None = None,
    library: TemplateLibrary | None = None,
) -> EmailRequest:
    """Validate one email completely, including a trial render; no I/O.

    The input is put into the job's JSON form and checked by `validate_email_payload`,
    the function the job runs again in the worker.

    Raises:
        EmailValidationError: the first problem found, named clearly.
    """
    attached = check_attachments(attachments)  # reads `path` attachments, within the size limit
    recipients = parse_recipients(to)
    reply = parse_mailbox(reply_to, "reply_to") if reply_to is not None else None
    payload = {
        "v": PAYLOAD_VERSION,
        "to": [list(mailbox) for mailbox in recipients],
        "template": template,
        "locale": locale,
        "context": context,
        "idempotency_key": f"auto-{uuid.uuid4().hex}" if idempotency_key is None else idempotency_key,
        "attachments": [attachment_payload(a) for a in attached],
        "reply_to": list(reply) if reply is not None else None,
        "requested_by": requested_by,
    }
    parsed = {mailbox.address for mailbox in (*recipients, *([reply] if reply is not None else []))}
    sender = parse_sender(get_settings().mail_from)
    return validate_email_payload(
        payload, sender=sender, now=dt.datetime.now(dt.UTC), library=library, validated_addresses=parsed
    ).request


def enqueue_email(
    to: Recipient | Sequence[Recipient],
    template: str,
    context: Mapping[str, Any],
    *,
    locale: str = "en",
    attachments: Iterable[Attachment | Mapping[str, Any]] | None = None,
    reply_to: Recipient | None = None,
    idempotency_key: str | None = None,
    requested_by: str | int | None = None,
    at: dt.datetime | None = None,
    in_: dt.timedelta | float | None = None,
    retry: RetryPolicy | None = None,
    client: redis.Redis | None = None,
) -> str:
    """Validate an email and enqueue its job on `email`; return the job id.

    Args:
        to: a recipient or a list of at most 50: `a@b.example`, `Name <a@b.example>` (any Unicode,
            commas, quotes in the name) or one `(name, address)` tuple; the envelope gets the address.
        template: a directory under jobs/templates/email/<locale>/.
        context: every variable the template uses (None is a value): JSON, datetime, date, UUID, Decimal.
        locale: e.g. `pt_BR`; falls back to `pt`, then `en`.
        attachments: `Attachment(filename, content, content_type)` or mappings with `filename`,
            `content_type` and `content` (bytes) or `path` (read at enqueue); at most 10 files,
            5 MiB in all (the bytes travel base64-encoded inside the job payload).
        reply_to: one recipient, in any of the forms of `to`.
        idempotency_key: identifies the email: the same key gives the same job, and once the
            SMTP server accepted the email it is never sent again under this key. Without
            one, each call is a new email (a fresh key, kept by its retries).
        requested_by: a user id; `email.sent` / `email.failed` events go to that user.
        at, in_: send later (an aware datetime, or a delay).
        retry: override the queue's retry policy (tests).
        client: the PRIMARY client (default from settings).

    Raises:
        EmailValidationError: bad input; nothing was written.
        EnqueueUnavailable: the PRIMARY Redis is down or full.
    """
    request = build_request(
        to,
        template,
        context,
        locale=locale,
        attachments=attachments,
        reply_to=reply_to,
        idempotency_key=idempotency_key,
        requested_by=requested_by,
    )
    return enqueue(
        "email",
        SEND_EMAIL,
        request.to_payload(),
        idempotency_key=f"email:{request.idempotency_key}",
        at=at,
        in_=in_,
        retry=retry,
        meta={"email": {"template": template, "recipients": len(request.to)}},
        client=client,
    )


def enqueue_bulk_email(
    template: str,
    recipients: Iterable[Recipient | Sequence[str] | Mapping[str, Any]],
    *,
    context: Mapping[str, Any] | None = None,
    locale: str = "en",
    idempotency_key: str | None = None,
    requested_by: str | int | None = None,
    chunk_size: int | None = None,
    connections: int | None = None,
    at: dt.datetime | None = None,
    in_: dt.timedelta | float | None = None,
    retry: RetryPolicy | None = None,
    client: redis.Redis | None = None,
) -> BulkEmail:
    """Validate a send to many recipients, one personalised message each, and enqueue its chunk jobs.

    Args:
        template: as for `enqueue_email`.
        recipients: recipients as for `enqueue_email`'s `to` (a `[name, address]` list is a
            pair, as a tuple is), or mappings
            `{"to": recipient, "context": {...}, "locale": "pt_BR"}` whose
            context is merged over `context`; at most 50,000; repeats get one message.
        context: variables shared by every recipient.
        idempotency_key: identifies the bulk send: calling again with the same key enqueues only
            chunks not yet queued, and no recipient that was sent to is ever sent to again.
        chunk_size: recipients per job (1-1000); None: 1/8 of the send, within 25-250 (see
            `plan_chunk_size`), so the chunks spread over every worker and its job slots.
        connections: at most this many SMTP transactions at once per chunk job (1-1000); None:
            as many as the worker's SMTP_MAX_CONNECTIONS, the bound of its whole SMTP pool.

    Returns:
        The bulk id (for `bulk_status`), the chunk job ids, the recipient count.

    Raises:
        EmailValidationError: bad input, naming the recipient; nothing was written.
        EnqueueUnavailable: the PRIMARY Redis is down or full. Chunks enqueued before it
            stay queued: call again with the same idempotency_key to enqueue the rest.
    """
    library = default_library()
    connections = _check_bulk_shape(recipients, chunk_size, connections)
    locale = check_locale(locale)
    library.resolve_locale(template, locale)
    shared = check_context(context or {}, reserved=PROVIDED)
    items, duplicates = plan_recipients(template, recipients, shared=shared, locale=locale, library=library)
    bulk_id = _bulk_id(idempotency_key)
    chunk_size = chunk_size or plan_chunk_size(len(items))
    common = {"v": PAYLOAD_VERSION, "bulk_id": bulk_id, "template": template, "locale": locale}
    common.update(context=shared, connections=connections, requested_by=requested_by)
    payloads = [{**common, "recipients": chunk} for chunk in chunked(items, chunk_size)]
    parsed = frozenset(item["to"][1] for item in items)  # by plan_recipients: parse once
    checked = _checked_chunks(payloads, chunk_size, library, parsed)
    job_ids = _enqueue_chunks(checked, template, bulk_id, at=at, in_=in_, retry=retry, client=client)
    store_info(client, bulk_id=bulk_id, info=new_bulk_info(template, locale, len(items), job_ids))
    return BulkEmail(bulk_id=bulk_id, job_ids=tuple(job_ids), recipients=len(items), duplicates=duplicates)


def _check_bulk_shape(recipients: object, chunk_size: object, connections: object) -> int | None:
    """The checked `connections` cap.

    Raises:
        EmailValidationError: a single string as `recipients`, or chunk size or cap out of range.
    """
    if isinstance(recipients, str | bytes) or not isinstance(recipients, Iterable):
        raise EmailValidationError("recipients must be a list of addresses or mappings, not a single string")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not 1 <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise EmailValidationError(
            f"chunk_size must be None (chosen from the send's size) or an integer "
            f"from 1 to {MAX_CHUNK_SIZE}, got {chunk_size!r}"
        )
    return check_connections(connections)


def _bulk_id(idempotency_key: str | None) -> str:
    """Derived from the idempotency key, so a repeated call finds the same bulk; else random."""
    if idempotency_key is not None:
        return hashlib.sha256(check_idempotency_key(idempotency_key).encode()).hexdigest()[:32]
    return uuid.uuid4().hex


def _checked_chunks(
    payloads: list[dict[str, Any]], chunk_size: int, library: TemplateLibrary, parsed: frozenset[str]
) -> list[BulkChunk]:
    """Every chunk checked, as its job will check it, before the first is enqueued.

    `parsed`: the addresses `plan_recipients` validated; the job validates them again.
    """
    sender, now = parse_sender(get_settings().mail_from), dt.datetime.now(dt.UTC)
    return [
        validate_bulk_chunk(
            payload,
            sender=sender,
            now=now,
            library=library,
            first_index=number * chunk_size,
            validated_addresses=parsed,
        )
        for number, payload in enumerate(payloads)
    ]


def _enqueue_chunks(
    chunks: list[BulkChunk],
    template: str,
    bulk_id: str,
    *,
    at: dt.datetime | None,
    in_: dt.timedelta | float | None,
    retry: RetryPolicy | None,
    client: redis.Redis | None,
) -> list[str]:
    """One job per chunk, in order; chunk `n`'s idempotency key makes a repeated call skip it."""
    return [
        enqueue(
            "email",
            SEND_BULK_CHUNK,
            chunk.to_payload(),
            idempotency_key=f"bulk:{bulk_id}:{number}",
            at=at,
            in_=in_,
            retry=retry,
            meta={"email": {"template": template, "bulk_id": bulk_id, "chunk": number}},
            client=client,
        )
        for number, chunk in enumerate(chunks)
    ]
