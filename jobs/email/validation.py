"""Input checks for email jobs (pure): addresses, header values, attachments, limits.

These are the building blocks; `jobs.email.payloads` assembles them into the one check
of each job's payload, which the enqueue API runs before anything reaches Redis and the
job runs again in the worker (a job can be written into Redis by hand). The result is
an `EmailRequest`, whose JSON form travels as the job's one argument.
"""

from __future__ import annotations

import base64
import functools
import mimetypes
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any, NamedTuple

from email_validator import EmailNotValidError

from cache.errors import ConfigError
from jobs.email.domains import validated_address
from jobs.errors import JobValidationError
from jobs.serialization import UnserializableArgument, dumps, loads

MAX_RECIPIENTS = 50  # one transactional email; larger audiences go through enqueue_bulk_email
MAX_BULK_RECIPIENTS = 50_000  # one bulk send; split larger campaigns
MAX_ATTACHMENTS = 10
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024  # all attachments of one email, before base64 (which adds a third)
MAX_CONTEXT_BYTES = 64 * 1024  # the template context of one email, as JSON
MAX_RECIPIENT_CONTEXT_BYTES = 8 * 1024  # the per-recipient context of one bulk recipient, as JSON
MAX_FILENAME_LENGTH = 255
MAX_DISPLAY_NAME_LENGTH = 200
MAX_IDEMPOTENCY_KEY_LENGTH = 200  # stays under the job core's 256 with our prefixes
DEFAULT_LOCALE = "en"
PAYLOAD_VERSION = 1

_LOCALE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
# Control characters (C0, DEL, C1), line/paragraph separators and lone surrogates: none
# belongs in a header, and CR/LF/NUL would start a new header or cut the message.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
_CHAR_NAMES = {"\r": "CR", "\n": "LF", "\0": "NUL", "\t": "TAB"}
# `Name <address>`: everything before the last `<...>` is the display name, commas included.
_NAME_ADDR = re.compile(r"(?P<name>.*?)\s*<(?P<address>[^<>]*)>", re.DOTALL)
_SENDER = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


class EmailValidationError(JobValidationError):
    """An email was refused at enqueue (or could not be rendered); nothing was written to Redis."""


class Mailbox(NamedTuple):
    """A display name (may be empty) and an ASCII address usable in the SMTP envelope."""

    name: str
    address: str


@dataclass(frozen=True)
class Attachment:
    """A file attached to an email; `content` travels base64-encoded inside the job payload."""

    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, kw_only=True)
class EmailRequest:
    """One validated email: what the job gets, and what `render_email` turns into a message."""

    to: tuple[Mailbox, ...]
    template: str
    locale: str
    context: Mapping[str, Any]
    idempotency_key: str
    attachments: tuple[Attachment, ...] = ()
    reply_to: Mailbox | None = None
    requested_by: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """The JSON form carried by the job (attachments base64-encoded)."""
        return {
            "v": PAYLOAD_VERSION,
            "to": [list(mailbox) for mailbox in self.to],
            "template": self.template,
            "locale": self.locale,
            "context": dict(self.context),
            "idempotency_key": self.idempotency_key,
            "attachments": [attachment_payload(a) for a in self.attachments],
            "reply_to": list(self.reply_to) if self.reply_to else None,
            "requested_by": self.requested_by,
        }


def attachment_payload(attachment: Attachment) -> dict[str, str]:
    """An attachment's JSON form in the job payload (content base64-encoded)."""
    return {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "data": base64.b64encode(attachment.content).decode("ascii"),
    }


def control_character(value: str) -> str | None:
    """The first control character (C0, DEL, C1, U+2028/9, surrogate) in `value`, or None. Pure."""
    if value.isascii() and value.isprintable():
        return None  # the common case, without a per-character lookup
    return next((char for char in value if unicodedata.category(char) in _CONTROL_CATEGORIES), None)


def describe_character(char: str) -> str:
    """`CR`, `LF`, `NUL`, `TAB` or `U+XXXX`, for error messages."""
    return _CHAR_NAMES.get(char, f"U+{ord(char):04X}")


def check_header_value(value: str, what: str) -> str:
    """Refuse control characters: CR, LF and NUL would start a new header (header injection)."""
    if not isinstance(value, str):
        raise EmailValidationError(f"{what} must be a string, got {type(value).__name__}")
    char = control_character(value)
    if char is not None:
        raise EmailValidationError(
            f"{what} contains a {describe_character(char)} character (header injection refused): {value!r}"
        )
    return value


def check_address(address: object, what: str, *, validated: Set[str] = frozenset()) -> str:
    """One bare address (no display name), validated by email-validator, in its ASCII form.

    Args:
        validated: addresses `parse_mailbox` has just returned at enqueue: email-validator's
            ASCII form, which validates to itself, so it is not parsed a second time. The worker
            passes none and validates every address of the payload it reads.

    Raises:
        EmailValidationError: not a string, control characters, or not a valid address.
    """
    if not isinstance(address, str):
        raise EmailValidationError(f"{what} must be a string address, got {type(address).__name__}")
    check_header_value(address, what)
    if address in validated:
        return address
    try:
        return validated_address(address.strip())
    except EmailNotValidError as exc:
        raise EmailValidationError(f"{what} {address!r} is not a valid email address: {exc}") from None


def check_mailbox(name: object, address: object, what: str, *, validated: Set[str] = frozenset()) -> Mailbox:
    """A (display name, address) pair as the job payload carries it; the one mailbox check.

    The name may hold anything printable (it is quoted or RFC 2047-encoded in the header),
    never a control character.

    Raises:
        EmailValidationError: names the field and the problem.
    """
    return Mailbox(_display_name(name, what), check_address(address, what, validated=validated))


def _display_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise EmailValidationError(f"{what}: display name must be a string, got {type(name).__name__}")
    check_header_value(name, f"{what} display name")
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        raise EmailValidationError(f"{what}: display name longer than {MAX_DISPLAY_NAME_LENGTH} characters")
    return name.strip()


def mailbox_from_payload(entry: object, what: str, *, validated: Set[str] = frozenset()) -> Mailbox:
    """`[name, address]` from a job payload, checked by `check_mailbox`."""
    if not isinstance(entry, list | tuple) or len(entry) != 2:
        raise EmailValidationError(f"{what} must be a [display name, address] pair, got {entry!r}")
    return check_mailbox(entry[0], entry[1], what, validated=validated)


def parse_mailbox(value: object, what: str) -> Mailbox:
    """One recipient: `a@b.example`, `Name <a@b.example>` or a `(name, address)` pair; no DNS.

    A two-item list is a pair too: `[name, address]` is a pair's JSON form.

    The display name is what a person typed: any Unicode, commas and quotes are fine
    (`José Silva`, `Smith, John`, `"Smith, John"`); the header writer quotes or RFC
    2047-encodes it. The address is validated by email-validator and comes back in its
    ASCII form (IDNA domain), so the SMTP envelope needs no SMTPUTF8; non-ASCII local
    parts are refused for the same reason.

    Raises:
        EmailValidationError: not a single valid address; the message says why.
    """
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise EmailValidationError(f"{what} must be a (display name, address) pair, got {value!r}")
        return check_mailbox(value[0], value[1], what)
    if not isinstance(value, str):
        raise EmailValidationError(
            f"{what} must be a string address or a (name, address) pair, got {type(value).__name__}"
        )
    check_header_value(value, what)
    match = _NAME_ADDR.fullmatch(value.strip())
    if match is None:
        return Mailbox("", check_address(value, what))
    name = _unquoted(match["name"].strip(), value, what)
    # The worker's payload check (`check_mailbox`) validates the address again; at enqueue the
    # payload check is told this result is already validated (`check_address(validated=...)`).
    return check_mailbox(name, match["address"], what)


def _unquoted(name: str, value: str, what: str) -> str:
    """A display name as typed: `"..."` loses its quotes and backslash escapes, anything else stays."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    if any(char in name for char in '<>"@'):
        raise EmailValidationError(
            f"{what} {value!r}: a display name with '<', '>', '\"' or '@' must be quoted "
            '(e.g. "Ana @ Sales" <ana@example.com>), or pass a (name, address) pair'
        )
    return name


@functools.lru_cache(maxsize=8)  # called with the one MAIL_FROM of each enqueue; a refusal is not cached
def parse_sender(mail_from: str) -> Mailbox:
    """MAIL_FROM as a mailbox.

    Operator configuration, not user input: checked for shape only, so local domains
    such as `kryonix.local` (refused by email-validator as special-use) work in development.

    Raises:
        ConfigError: MAIL_FROM is not `address` or `Name <address>` with an ASCII address.
    """
    if any(char in mail_from for char in _FORBIDDEN_IN_HEADERS):
        raise ConfigError(f"MAIL_FROM must be one line, got {mail_from!r}")
    name, address = parseaddr(mail_from)
    if not _SENDER.fullmatch(address):
        raise ConfigError(f"MAIL_FROM must be 'address' or 'Name <address>', got {mail_from!r}")
    return Mailbox(name.strip(), address)


Recipient = str | tuple[str, str]  # `Name <address>` or a bare address, or (name, address)


def parse_recipients(
    to: Recipient | Sequence[Recipient], *, limit: int = MAX_RECIPIENTS
) -> tuple[Mailbox, ...]:
    """The `to` of a transactional email: one recipient or a list, deduplicated, at most `limit`.

    A tuple is one `(name, address)` recipient; several recipients come as a list, in which a
    two-item list is a pair as well (`[[name, address], ...]`, the JSON form).
    """
    items = [to] if isinstance(to, str | tuple) else to
    if not isinstance(items, Sequence):
        raise EmailValidationError(f"to must be an address or a list of addresses, got {type(to).__name__}")
    if not items:
        raise EmailValidationError("to must name at least one recipient")
    if len(items) > limit:
        raise EmailValidationError(
            f"{len(items)} recipients exceed the limit of {limit} per email; use enqueue_bulk_email"
        )
    seen: dict[str, Mailbox] = {}
    for index, item in enumerate(items):
        mailbox = parse_mailbox(item, f"to[{index}]")
        seen.setdefault(mailbox.address.lower(), mailbox)
    return tuple(seen.values())


def check_locale(locale: object) -> str:
    if not isinstance(locale, str) or not _LOCALE.fullmatch(locale):
        raise EmailValidationError(f"locale must look like 'en' or 'pt_BR', got {locale!r}")
    return locale


def check_attachments(attachments: Iterable[Attachment | Mapping[str, Any]] | None) -> tuple[Attachment, ...]:
    """At most MAX_ATTACHMENTS files of MAX_ATTACHMENT_BYTES in total, with safe names and types.

    Each item is an `Attachment`, or a mapping with `filename`, `content_type` and either
    `content` (bytes) or `path` (read now: the bytes travel in the job payload).
    """
    if isinstance(attachments, Mapping | str | bytes):
        raise EmailValidationError("attachments must be a list of attachments")
    items = tuple(attachments or ())
    if len(items) > MAX_ATTACHMENTS:
        raise EmailValidationError(f"{len(items)} attachments exceed the limit of {MAX_ATTACHMENTS}")
    total = 0
    checked = []
    for index, item in enumerate(items):
        what = f"attachments[{index}]"
        attachment = _attachment(item, what, MAX_ATTACHMENT_BYTES - total)
        name = check_header_value(attachment.filename, f"{what}.filename")
        if not name.strip() or len(name) > MAX_FILENAME_LENGTH or "/" in name or "\\" in name:
            raise EmailValidationError(
                f"{what}.filename must be a plain file name of 1-{MAX_FILENAME_LENGTH} characters "
                f"without '/' or '\\', got {name!r}"
            )
        content_type = check_header_value(attachment.content_type, f"{what}.content_type").strip().lower()
        if not _CONTENT_TYPE.fullmatch(content_type) or content_type.startswith("multipart/"):
            raise EmailValidationError(
                f"{what}.content_type must be a media type like 'application/pdf', got {content_type!r}"
            )
        total += len(attachment.content)
        checked.append(Attachment(name, attachment.content, content_type))
    if total > MAX_ATTACHMENT_BYTES:
        raise EmailValidationError(_too_big(total))
    return tuple(checked)


def _too_big(total: int) -> str:
    return (
        f"attachments total {total} bytes or more, over the limit of {MAX_ATTACHMENT_BYTES} bytes "
        f"({MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB); send a download link instead"
    )


def _attachment(item: object, what: str, room: int) -> Attachment:
    """An `Attachment` from an `Attachment` or a mapping; a `path` is read only if it fits in `room`."""
    if isinstance(item, Attachment):
        if not isinstance(item.content, bytes | bytearray):
            raise EmailValidationError(f"{what}.content must be bytes, got {type(item.content).__name__}")
        return Attachment(item.filename, bytes(item.content), item.content_type)
    if not isinstance(item, Mapping):
        raise EmailValidationError(
            f"{what} must be an Attachment(filename, content, content_type) or a mapping, "
            f"got {type(item).__name__}"
        )
    unknown = set(item) - {"filename", "content", "path", "content_type"}
    if unknown or ("content" in item) == ("path" in item):
        raise EmailValidationError(
            f"{what} needs exactly one of 'content' or 'path' (and may have 'filename', 'content_type'); "
            f"got keys {sorted(map(str, item))}"
        )
    if "path" in item:
        path = Path(item["path"])
        try:
            size = path.stat().st_size
            if size > room:
                raise EmailValidationError(_too_big(MAX_ATTACHMENT_BYTES - room + size))
            content = path.read_bytes()
        except OSError as exc:
            raise EmailValidationError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
        filename = item.get("filename") or path.name
    else:
        content, filename = item["content"], item.get("filename")
    if not isinstance(content, bytes | bytearray):
        raise EmailValidationError(f"{what}.content must be bytes, got {type(content).__name__}")
    if not isinstance(filename, str):
        raise EmailValidationError(f"{what}.filename must be a string, got {filename!r}")
    content_type = item.get("content_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return Attachment(filename, bytes(content), str(content_type))


def check_context(
    context: object, what: str = "context", limit: int = MAX_CONTEXT_BYTES, reserved: Iterable[str] = ()
) -> dict[str, Any]:
    """A mapping of identifier keys to JSON-able values, at most `limit` bytes as JSON.

    Returns the context as the worker will see it (after the JSON round trip), so a trial
    render at enqueue sees exactly what the job will.
    """
    if not isinstance(context, Mapping):
        raise EmailValidationError(
            f"{what} must be a mapping of template variables, got {type(context).__name__}"
        )
    for key in context:
        if not isinstance(key, str) or not key.isidentifier():
            raise EmailValidationError(
                f"{what} keys must be identifiers (template variable names), got {key!r}"
            )
        if key in reserved:
            raise EmailValidationError(f"{what} key {key!r} is reserved: the renderer provides it")
    try:
        encoded = dumps(dict(context))
    except UnserializableArgument as exc:
        raise EmailValidationError(f"{what}: {exc}") from None
    if len(encoded) > limit:
        raise EmailValidationError(f"{what} is {len(encoded)} bytes as JSON, over the limit of {limit} bytes")
    result: dict[str, Any] = loads(encoded)
    return result


def check_idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise EmailValidationError("idempotency_key must be a non-empty string")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise EmailValidationError(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    # Every whitespace character but " " is unprintable to Python, so this is "no whitespace or
    # control character" in two C-level scans instead of a Python loop over the key.
    if not key.isprintable() or " " in key:
        raise EmailValidationError(
            f"idempotency_key must not contain whitespace or control characters, got {key!r}"
        )
    return key
