"""The one check of each email job's payload, run by the enqueue API and again by the job.

Whoever can write to Redis can write a `send_email` or `send_bulk_chunk` job by hand,
bypassing the enqueue API. So the worker trusts nothing in the payload: it runs the same
function the enqueue API ran on the same JSON form, down to the trial render, and a
refusal becomes a permanent job failure before any SMTP connection is made.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from cache.realtime.envelope import InvalidEvent, validate_user_id
from jobs.email.bulk import MAX_CHUNK_SIZE, Item
from jobs.email.render import RenderedEmail, render_email
from jobs.email.templates import PROVIDED, TemplateLibrary, default_library
from jobs.email.validation import (
    MAX_RECIPIENT_CONTEXT_BYTES,
    MAX_RECIPIENTS,
    PAYLOAD_VERSION,
    Attachment,
    EmailRequest,
    EmailValidationError,
    Mailbox,
    check_attachments,
    check_context,
    check_idempotency_key,
    check_locale,
    mailbox_from_payload,
)

MAX_BULK_CONNECTIONS = 1000  # the largest SMTP_MAX_CONNECTIONS; a cap above the worker's own does nothing
_BULK_ID = re.compile(r"[0-9a-f]{32}")  # a uuid4 hex or a sha256 prefix: it names Redis keys
EMAIL_KEYS = frozenset(
    {"v", "to", "template", "locale", "context", "idempotency_key", "attachments", "reply_to", "requested_by"}
)
CHUNK_KEYS = frozenset(
    {"v", "bulk_id", "template", "locale", "context", "recipients", "connections", "requested_by"}
)
_ITEM_KEYS = frozenset({"to", "context", "locale"})


@dataclass(frozen=True, kw_only=True)
class ValidEmail:
    """A checked `send_email` payload and the message its trial render produced."""

    request: EmailRequest
    message: RenderedEmail


@dataclass(frozen=True, kw_only=True)
class BulkChunk:
    """A checked `send_bulk_chunk` payload."""

    bulk_id: str
    template: str
    locale: str
    context: dict[str, Any]
    items: tuple[Item, ...]
    connections: int | None  # the caller's cap on the job's concurrent transactions; None: the worker's
    requested_by: str | None

    def to_payload(self) -> dict[str, Any]:
        """The JSON form carried by the chunk job."""
        recipients = []
        for item in self.items:
            entry: dict[str, Any] = {"to": list(item.mailbox)}
            if item.context:
                entry["context"] = dict(item.context)
            if item.locale != self.locale:
                entry["locale"] = item.locale
            recipients.append(entry)
        return {
            "v": PAYLOAD_VERSION,
            "bulk_id": self.bulk_id,
            "template": self.template,
            "locale": self.locale,
            "context": dict(self.context),
            "recipients": recipients,
            "connections": self.connections,
            "requested_by": self.requested_by,
        }

    def request_for(self, item: Item) -> EmailRequest:
        """The one-recipient email of `item` (its context merged over the shared one)."""
        return EmailRequest(
            to=(item.mailbox,),
            template=self.template,
            locale=item.locale,
            context={**self.context, **item.context},
            idempotency_key=f"bulk:{self.bulk_id}:{item.address}",
        )


def check_requester(requested_by: object) -> str | None:
    """The user id that receives the job's events, or None."""
    if requested_by is None:
        return None
    try:
        return validate_user_id(requested_by)  # type: ignore[arg-type]
    except (InvalidEvent, TypeError, ValueError) as exc:
        raise EmailValidationError(f"requested_by: {exc}") from None


def validate_email_payload(
    payload: object,
    *,
    sender: Mailbox,
    now: dt.datetime,
    library: TemplateLibrary | None = None,
    validated_addresses: Set[str] = frozenset(),
    return_path: str | None = None,
) -> ValidEmail:
    """Check a `send_email` payload completely, including a trial render.

    Args:
        payload: the JSON form (`EmailRequest.to_payload()`), as enqueued or as read from Redis.
        sender: the From mailbox; now: the Date header.
        library: the templates (default: the shipped ones).
        validated_addresses: addresses the enqueue API has just parsed (`parse_mailbox`), so
            email-validator does not parse them twice; the worker passes none.
        return_path: the envelope sender of the rendered message (default: the sender's address).

    Returns:
        The request and its rendered message.

    Raises:
        EmailValidationError: the first problem found, named clearly.
    """
    library = library or default_library()
    fields = _fields(payload, EMAIL_KEYS, "email payload")
    to = _sequence(fields.get("to"), "to", MAX_RECIPIENTS)
    if not to:
        raise EmailValidationError("to must name at least one recipient")
    recipients: dict[str, Mailbox] = {}
    for index, entry in enumerate(to):
        mailbox = mailbox_from_payload(entry, f"to[{index}]", validated=validated_addresses)
        recipients.setdefault(mailbox.address.lower(), mailbox)
    template, locale, context = _template(fields, library)
    library.check_context(template, locale, context)
    reply_to = fields.get("reply_to")
    request = EmailRequest(
        to=tuple(recipients.values()),
        template=template,
        locale=locale,
        context=context,
        idempotency_key=check_idempotency_key(fields.get("idempotency_key")),
        attachments=check_attachments(_attachments(fields.get("attachments"))),
        reply_to=(
            mailbox_from_payload(reply_to, "reply_to", validated=validated_addresses)
            if reply_to is not None
            else None
        ),
        requested_by=check_requester(fields.get("requested_by")),
    )
    # Catches what the variable list cannot: a missing attribute, a bad type, a subject
    # that spans lines or holds a control character.
    message = render_email(request, sender=sender, now=now, return_path=return_path, library=library)
    return ValidEmail(request=request, message=message)


def validate_bulk_chunk(
    payload: object,
    *,
    sender: Mailbox,
    now: dt.datetime,
    library: TemplateLibrary | None = None,
    first_index: int = 0,
    validated_addresses: Set[str] = frozenset(),
) -> BulkChunk:
    """Check a `send_bulk_chunk` payload completely, with a trial render of each locale.

    Args:
        payload: the JSON form, as enqueued or as read from Redis.
        sender: the From mailbox; now: the Date header of the trial render.
        library: the templates (default: the shipped ones).
        first_index: the position of the chunk's first recipient in the whole send (for messages).
        validated_addresses: addresses the enqueue API has just parsed (`parse_mailbox`), so
            email-validator does not parse them twice; the worker passes none.

    Raises:
        EmailValidationError: the first problem found, naming the recipient.
    """
    library = library or default_library()
    fields = _fields(payload, CHUNK_KEYS, "bulk chunk payload")
    bulk_id = fields.get("bulk_id")
    if not isinstance(bulk_id, str) or not _BULK_ID.fullmatch(bulk_id):
        raise EmailValidationError(f"bulk_id must be 32 lowercase hex digits, got {bulk_id!r}")
    connections = check_connections(fields.get("connections"))
    template, locale, shared = _template(fields, library)
    entries = _sequence(fields.get("recipients"), "recipients", MAX_CHUNK_SIZE)
    if not entries:
        raise EmailValidationError("recipients must name at least one address")
    chunk = BulkChunk(
        bulk_id=bulk_id,
        template=template,
        locale=locale,
        context=shared,
        items=_items(entries, template, locale, shared, library, first_index, validated_addresses),
        connections=connections,
        requested_by=check_requester(fields.get("requested_by")),
    )
    _trial_render(chunk, sender, now, library)
    return chunk


def check_connections(connections: object) -> int | None:
    """None (the worker's SMTP_MAX_CONNECTIONS) or a cap from 1 to `MAX_BULK_CONNECTIONS`."""
    if connections is None:
        return None
    if isinstance(connections, bool) or not isinstance(connections, int):
        raise EmailValidationError(
            f"connections must be None (the worker's SMTP_MAX_CONNECTIONS) or an integer, got {connections!r}"
        )
    if not 1 <= connections <= MAX_BULK_CONNECTIONS:
        raise EmailValidationError(f"connections must be from 1 to {MAX_BULK_CONNECTIONS}, got {connections}")
    return connections


def _fields(payload: object, known: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise EmailValidationError(f"{what} must be a mapping, got {type(payload).__name__}")
    if payload.get("v") != PAYLOAD_VERSION:
        raise EmailValidationError(f"unsupported {what} version {payload.get('v')!r}")
    unknown = set(payload) - known
    if unknown:
        raise EmailValidationError(f"{what} has unknown field(s) {sorted(map(str, unknown))}")
    return payload


def _sequence(value: object, what: str, limit: int) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise EmailValidationError(f"{what} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise EmailValidationError(f"{what} has {len(value)} entries, over the limit of {limit} per job")
    return value


def _template(fields: Mapping[str, Any], library: TemplateLibrary) -> tuple[str, str, dict[str, Any]]:
    """(template, locale, context): the locale resolves, the context is JSON-able and reserves nothing."""
    template, locale = fields.get("template"), check_locale(fields.get("locale"))
    library.resolve_locale(template, locale)  # type: ignore[arg-type]  # it checks the type
    assert isinstance(template, str)
    return template, locale, check_context(fields.get("context"), reserved=PROVIDED)


def _attachments(value: object) -> list[Attachment]:
    """The payload's base64 attachments decoded; `check_attachments` then checks them as at enqueue."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise EmailValidationError(f"attachments must be a list, got {type(value).__name__}")
    decoded = []
    for index, entry in enumerate(value):
        what = f"attachments[{index}]"
        if not isinstance(entry, Mapping) or set(entry) != {"filename", "content_type", "data"}:
            raise EmailValidationError(f"{what} must have exactly filename, content_type and data")
        if not isinstance(entry["data"], str):
            raise EmailValidationError(f"{what}.data must be a base64 string")
        try:
            content = base64.b64decode(entry["data"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EmailValidationError(f"{what}.data is not valid base64: {exc}") from None
        decoded.append(Attachment(entry["filename"], content, entry["content_type"]))
    return decoded


def _items(
    entries: Sequence[Any],
    template: str,
    locale: str,
    shared: Mapping[str, Any],
    library: TemplateLibrary,
    first_index: int,
    validated: Set[str],
) -> tuple[Item, ...]:
    items: list[Item] = []
    seen: set[str] = set()
    for offset, entry in enumerate(entries):
        what = f"recipients[{first_index + offset}]"
        if not isinstance(entry, Mapping) or "to" not in entry or set(entry) - _ITEM_KEYS:
            raise EmailValidationError(f"{what} must be a mapping with 'to' and optional 'context'/'locale'")
        mailbox = mailbox_from_payload(entry["to"], what, validated=validated)
        if mailbox.address.lower() in seen:
            raise EmailValidationError(f"{what}: {mailbox.address} appears twice in one chunk")
        seen.add(mailbox.address.lower())
        own_locale = check_locale(entry.get("locale", locale))
        own = check_context(
            entry.get("context") or {}, f"{what}.context", MAX_RECIPIENT_CONTEXT_BYTES, PROVIDED
        )
        library.check_context(
            template, own_locale, {**shared, **own}, f"context of {what} ({mailbox.address})"
        )
        items.append(Item(mailbox, own, own_locale))
    return tuple(items)


def _trial_render(chunk: BulkChunk, sender: Mailbox, now: dt.datetime, library: TemplateLibrary) -> None:
    """Render the first recipient of each locale: variables alone cannot catch a missing attribute."""
    done: set[str] = set()
    for item in chunk.items:
        if item.locale in done:
            continue
        done.add(item.locale)
        try:
            render_email(chunk.request_for(item), sender=sender, now=now, library=library)
        except EmailValidationError as exc:
            raise EmailValidationError(f"recipient {item.address}: {exc}") from None
