"""`render_email`: a validated request becomes the exact bytes sent over SMTP (pure).

The MIME is written directly rather than through `email.message.EmailMessage`: the
stdlib builder costs about 0.9 ms per message (measured), 80 times this writer, which
would cap bulk sending well below what the SMTP connections carry. The structure is
plain and fixed, and the tests parse every shape back with the stdlib parser:

    multipart/mixed                       (only when there are attachments)
      multipart/alternative
        text/plain; charset=utf-8         quoted-printable
        text/html; charset=utf-8          quoted-printable
      <attachment>                        base64, Content-Disposition: attachment

Quoted-printable and base64 never produce `=_`, so boundaries starting with `=_` cannot
occur in any body. Headers are ASCII: non-ASCII text is RFC 2047-encoded, file names
RFC 2231-encoded, addresses are the IDNA form validated at enqueue. Text holding `=?` (which
a reader would take for an encoded-word, even inside quotes) is RFC 2047-encoded too, so it
decodes back to itself and not to text it spells.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.policy
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import encode_rfc2231, format_datetime

from jobs.email.templates import TemplateLibrary, default_library
from jobs.email.validation import Attachment, EmailRequest, Mailbox

CRLF = b"\r\n"
MAX_LINE = 78  # RFC 5322 recommends at most 78 characters per header line
_EW_LINE = 76  # RFC 2047: a header line holding an encoded-word has at most 76 characters
_TSPECIALS = set('()<>@,;:\\"/[]?= ')
_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+( [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_HEADER_POLICY = email.policy.SMTP.clone(max_line_length=MAX_LINE)


@dataclass(frozen=True, kw_only=True)
class RenderedEmail:
    """A message ready for SMTP: envelope, identifying headers and the raw bytes."""

    message_id: str
    subject: str
    locale: str
    envelope_from: str
    recipients: tuple[str, ...]
    raw: bytes

    def as_message(self) -> EmailMessage:
        """The message parsed by the stdlib (for inspection and tests; not used to send)."""
        message = BytesParser(policy=email.policy.default).parsebytes(self.raw)
        assert isinstance(message, EmailMessage)
        return message


def message_id_for(idempotency_key: str, sender: Mailbox) -> str:
    """A Message-ID stable for one idempotency key: a duplicate send carries the same id.

    Mail systems that deduplicate by Message-ID then collapse the copy from the window
    documented in docs/email.md (crash after the server accepted, before the marker).
    """
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    domain = sender.address.rpartition("@")[2] or "kryonix.local"
    return f"<{digest}@{domain}>"


def render_email(
    request: EmailRequest,
    *,
    sender: Mailbox,
    now: dt.datetime,
    return_path: str | None = None,
    library: TemplateLibrary | None = None,
) -> RenderedEmail:
    """Render the templates and write the message. Pure: same input, same bytes.

    Args:
        request: the validated email.
        sender: the From mailbox (MAIL_FROM).
        now: the Date header (an aware datetime).
        return_path: the envelope sender (MAIL FROM, MAIL_RETURN_PATH), where bounces go;
            default: the sender's address.
        library: the templates; defaults to the shipped ones.

    Raises:
        EmailValidationError: unknown template, missing variable, or an invalid subject.
    """
    parts = (library or default_library()).render(request.template, request.locale, request.context, now=now)
    message_id = message_id_for(request.idempotency_key, sender)
    headers = [
        address_header("From", [sender]),
        address_header("To", request.to),
    ]
    if request.reply_to is not None:
        headers.append(address_header("Reply-To", [request.reply_to]))
    headers += [
        text_header("Subject", parts.subject),
        text_header("Date", format_datetime(now.astimezone(dt.UTC))),
        text_header("Message-ID", message_id),
        b"MIME-Version: 1.0",
        text_header("Content-Language", parts.locale.replace("_", "-")),
        b"Auto-Submitted: auto-generated",  # RFC 3834: no auto-replies to this message
        text_header("X-Kryonix-Template", request.template),
    ]
    seed = hashlib.sha256(message_id.encode()).hexdigest()[:24]
    body = _alternative(parts.text, parts.html, f"=_kx_a_{seed}")
    if request.attachments:
        body = _mixed(body, request.attachments, f"=_kx_m_{seed}")
    raw = CRLF.join(headers) + CRLF + body
    return RenderedEmail(
        message_id=message_id,
        subject=parts.subject,
        locale=parts.locale,
        envelope_from=return_path or sender.address,
        recipients=tuple(mailbox.address for mailbox in request.to),
        raw=raw,
    )


def text_header(name: str, value: str) -> bytes:
    """`Name: value`, folded at 78 characters; RFC 2047-encoded when not ASCII or holding `=?`.

    A raw `=?utf-8?b?...?=` would be decoded by the reader into whatever text it spells.
    """
    literal = value.isascii() and "=?" not in value
    if literal and len(name) + 2 + len(value) <= MAX_LINE:
        return f"{name}: {value}".encode("ascii")
    charset = "us-ascii" if literal else "utf-8"
    encoded = Header(value, charset=charset, header_name=name, maxlinelen=MAX_LINE).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii")


def address_header(name: str, mailboxes: Sequence[Mailbox]) -> bytes:
    """An address list, one address per folded line; display names quoted or encoded.

    Names of plain words are written as they are; any other (non-ASCII, commas, quotes)
    goes through the stdlib's header registry, which quotes it (RFC 5322) or writes
    RFC 2047 encoded-words. The registry costs ~0.3 ms per header (measured), so it is
    kept for the names that need it, and the one sender's header is cached. A name holding
    `=?` is always encoded here: readers (the stdlib too) decode encoded-words even inside
    a quoted name, and the registry itself decodes such a name before it quotes it.
    """
    if all(_plain_name(mailbox.name) for mailbox in mailboxes):
        rendered = [f"{mb.name} <{mb.address}>" if mb.name else mb.address for mb in mailboxes]
        return f"{name}: ".encode() + ",\r\n ".join(rendered).encode("ascii")
    if any("=?" in mailbox.name for mailbox in mailboxes):
        return _encoded_header(name, mailboxes)
    return _registry_header(name, tuple(mailboxes))


def _encoded_header(name: str, mailboxes: Sequence[Mailbox]) -> bytes:
    """An address list whose names that need it are whole RFC 2047 encoded-words (RFC 2047 5(3)).

    Lines holding encoded-words stay within RFC 2047's 76 characters, folding after the
    colon rather than splitting a name that fits one encoded-word: the stdlib parser keeps
    the space between two encoded-words of a name (RFC 2047 6.2 says drop it).
    """
    lines = [f"{name}:"]
    for index, mailbox in enumerate(mailboxes):
        if index:
            lines[-1] += ","
            lines.append("")
        for piece in _mailbox_pieces(mailbox):
            if lines[-1] and len(lines[-1]) + 1 + len(piece) > _EW_LINE:
                lines.append("")
            lines[-1] += " " + piece
    return "\r\n".join(lines).encode("ascii")


def _mailbox_pieces(mailbox: Mailbox) -> list[str]:
    """The words of `name <address>`, a name that is not plain as encoded-words (utf-8 always encodes)."""
    if not mailbox.name:
        return [mailbox.address]
    if _plain_name(mailbox.name):
        return [mailbox.name, f"<{mailbox.address}>"]
    # Q-encoding's safe characters are all allowed in a phrase; base64's too.
    words = Header(mailbox.name, charset="utf-8", maxlinelen=_EW_LINE - 1).encode(linesep="\r\n")
    return [*words.split(), f"<{mailbox.address}>"]


@functools.lru_cache(maxsize=64)  # the From (MAIL_FROM) and Reply-To of every message of a process
def _registry_header(name: str, mailboxes: tuple[Mailbox, ...]) -> bytes:
    addresses = [Address(display_name=mailbox.name, addr_spec=mailbox.address) for mailbox in mailboxes]
    header = _HEADER_POLICY.header_factory(name, addresses)
    return _HEADER_POLICY.fold_binary(name, header).rstrip(CRLF)


def _plain_name(display_name: str) -> bool:
    """Printable ASCII words that RFC 5322 allows unquoted (atext and spaces), no `=?`. Pure."""
    if "=?" in display_name:
        return False
    return not display_name or (display_name.isascii() and _PHRASE.fullmatch(display_name) is not None)


def _qp(text: str) -> bytes:
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    if not normalized.endswith("\n"):
        normalized += "\n"
    return binascii.b2a_qp(normalized.encode("utf-8"), istext=True).replace(b"\n", CRLF)


def _text_part(subtype: str, text: str) -> bytes:
    return (
        f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + _qp(text)


def _multipart(subtype: str, boundary: str, parts: Sequence[bytes]) -> bytes:
    delimiter = f"--{boundary}".encode()
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    for part in parts:
        out += [delimiter, CRLF, part, CRLF]
    out += [delimiter, b"--", CRLF]
    return b"".join(out)


def _alternative(text: str, html: str, boundary: str) -> bytes:
    return _multipart("alternative", boundary, [_text_part("plain", text), _text_part("html", html)])


def _mixed(alternative: bytes, attachments: Sequence[Attachment], boundary: str) -> bytes:
    return _multipart("mixed", boundary, [alternative, *(_attachment_part(a) for a in attachments)])


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted when ASCII, RFC 2231 (`name*=utf-8''...`) otherwise."""
    if value.isascii() and value.isprintable():
        if any(char in _TSPECIALS for char in value):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name}={value}"
    return f"{name}*={encode_rfc2231(value, 'utf-8')}"


def _attachment_part(attachment: Attachment) -> bytes:
    encoded = base64.encodebytes(attachment.content).replace(b"\n", CRLF)
    return (
        f"Content-Type: {attachment.content_type}; {_param('name', attachment.filename)}\r\n"
        f"Content-Disposition: attachment; {_param('filename', attachment.filename)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii") + encoded
