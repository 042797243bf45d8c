"""`render_email` and its MIME writer, checked by parsing the bytes back with the stdlib (pure)."""

from __future__ import annotations

import datetime as dt
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.email.render import address_header, message_id_for, render_email, text_header
from jobs.email.validation import Attachment, EmailRequest, Mailbox

pytestmark = pytest.mark.email

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
SENDER = Mailbox("KRYONIX", "no-reply@kryonix.example")
WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login?a=1&b=2"}


def _request(**overrides: object) -> EmailRequest:
    fields: dict[str, object] = {
        "to": (Mailbox("Ana", "ana@example.com"),),
        "template": "welcome",
        "locale": "en",
        "context": WELCOME,
        "idempotency_key": "welcome-42",
        **overrides,
    }
    return EmailRequest(**fields)  # type: ignore[arg-type]


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    assert all(not part.defects for part in message.walk()), [part.defects for part in message.walk()]
    return message


def _check_wire_format(raw: bytes) -> None:
    assert raw.isascii(), "7-bit on the wire: no SMTPUTF8 or 8BITMIME needed"
    assert b"\n" not in raw.replace(b"\r\n", b""), "CRLF line endings only"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_headers_and_alternative_parts() -> None:
    rendered = render_email(_request(reply_to=Mailbox("", "help@example.com")), sender=SENDER, now=NOW)
    _check_wire_format(rendered.raw)
    message = _parse(rendered.raw)
    assert message["From"] == "KRYONIX <no-reply@kryonix.example>"
    assert message["To"] == "Ana <ana@example.com>"
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == rendered.subject == "Welcome to KRYONIX, Ana"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"] == rendered.message_id == message_id_for("welcome-42", SENDER)
    assert message["MIME-Version"] == "1.0"
    assert message["Content-Language"] == "en"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Kryonix-Template"] == "welcome"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "https://app.example.com/login?a=1&b=2" in text
    assert 'href="https://app.example.com/login?a=1&amp;b=2"' in html
    assert (rendered.envelope_from, rendered.recipients) == ("no-reply@kryonix.example", ("ana@example.com",))


def test_rendering_is_pure() -> None:
    assert render_email(_request(), sender=SENDER, now=NOW) == render_email(
        _request(), sender=SENDER, now=NOW
    )


def test_message_id_is_stable_per_key_and_differs_between_keys() -> None:
    assert message_id_for("k1", SENDER) == message_id_for("k1", SENDER) != message_id_for("k2", SENDER)
    assert re.fullmatch(r"<[0-9a-f]{32}@kryonix\.example>", message_id_for("k1", SENDER))


def test_attachments_make_a_mixed_message() -> None:
    files = (
        Attachment("relatório final.pdf", b"%PDF-1.4\n" + bytes(range(256)), "application/pdf"),
        Attachment('a "quoted"; name.txt', b"", "text/plain"),
    )
    rendered = render_email(_request(attachments=files), sender=SENDER, now=NOW)
    _check_wire_format(rendered.raw)
    message = _parse(rendered.raw)
    assert message.get_content_type() == "multipart/mixed"
    first, *attachments = message.iter_parts()
    assert first.get_content_type() == "multipart/alternative"
    assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [
        ("relatório final.pdf", "application/pdf"),
        ('a "quoted"; name.txt', "text/plain"),
    ]
    assert attachments[0].get_content() == files[0].content
    assert attachments[0].get_content_disposition() == "attachment"


def test_non_ascii_names_and_subjects_are_encoded() -> None:
    rendered = render_email(
        _request(
            to=(Mailbox("Ana Sílva", "ana@example.com"), Mailbox("Silva, Bob", "bob@example.com")),
            locale="pt_BR",
            context={**WELCOME, "name": "Zoë Ünlü " * 8},
        ),
        sender=SENDER,
        now=NOW,
    )
    _check_wire_format(rendered.raw)
    message = _parse(rendered.raw)
    assert message["Subject"] == rendered.subject == "Boas-vindas ao KRYONIX, " + ("Zoë Ünlü " * 8).strip()
    assert message["To"] == 'Ana Sílva <ana@example.com>, "Silva, Bob" <bob@example.com>'
    assert message["Content-Language"] == "pt-BR"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Subject", "plain", b"Subject: plain"),
        ("Subject", "é", b"Subject: =?utf-8?b?w6k=?="),
    ],
)
def test_text_header(name: str, value: str, expected: bytes) -> None:
    assert text_header(name, value) == expected


def test_long_ascii_header_is_folded() -> None:
    subject = " ".join(["word"] * 40)
    header = text_header("Subject", subject)
    assert header.count(b"\r\n ") >= 2 and all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert _parse(header + b"\r\n\r\nx")["Subject"] == subject


@pytest.mark.parametrize("name", ["José Silva", "Alice Ü", "Smith, John", 'He said "hi"', "Silva, José"])
def test_display_names_are_quoted_or_encoded_and_decode_back(name: str) -> None:
    to, sender = Mailbox(name, "ana@example.com"), Mailbox(name, "x@example.com")
    rendered = render_email(_request(to=(to,)), sender=sender, now=NOW)
    _check_wire_format(rendered.raw)
    message = _parse(rendered.raw)
    for header, mailbox in (("To", to), ("From", sender)):
        (address,) = message[header].addresses
        assert (address.display_name, address.addr_spec) == mailbox
    assert rendered.recipients == ("ana@example.com",)
    assert rendered.envelope_from == "x@example.com"


SPOOF_NAME = "=?utf-8?b?QWRtaW4gPGFkbWluQGJhbmsuY29tPg==?="  # decodes to 'Admin <admin@bank.com>'
SPOOF_SUBJECT = "=?utf-8?b?WW91ciBhY2NvdW50IGlzIGxvY2tlZA==?="  # decodes to 'Your account is locked'


@pytest.mark.parametrize(
    "name", [SPOOF_NAME, "=?utf-8?q?Admin_=3Cadmin=40bank.com=3E?=", "Ana =?x?=", "Zoë =?", "a=?b", '"=?" x']
)
def test_text_that_looks_encoded_decodes_back_to_itself(name: str) -> None:
    """`=?...?=` written raw, or quoted, is decoded by readers into the text it spells: encode it."""
    to, sender, reply_to = (Mailbox(name, f"{who}@example.com") for who in ("ana", "x", "r"))
    others = (Mailbox("Bob", "bob@example.com"), Mailbox("Silva, Bob", "sb@example.com"))
    rendered = render_email(
        _request(to=(to, *others), reply_to=reply_to, context={**WELCOME, "name": name}),
        sender=sender,
        now=NOW,
    )
    _check_wire_format(rendered.raw)
    message = _parse(rendered.raw)
    for header, mailboxes in (("To", (to, *others)), ("From", (sender,)), ("Reply-To", (reply_to,))):
        assert [(a.display_name, a.addr_spec) for a in message[header].addresses] == list(mailboxes)
    assert message["Subject"] == rendered.subject == f"Welcome to KRYONIX, {name}"


def test_an_encoded_looking_subject_is_encoded() -> None:
    header = text_header("Subject", SPOOF_SUBJECT)
    assert header.startswith(b"Subject: =?utf-8?") and b"=?utf-8?b?WW91" not in header
    assert _parse(header + b"\r\n\r\nx")["Subject"] == SPOOF_SUBJECT


def test_return_path_is_the_envelope_sender() -> None:
    rendered = render_email(_request(), sender=SENDER, now=NOW, return_path="bounces@example.com")
    assert rendered.envelope_from == "bounces@example.com"
    assert _parse(rendered.raw)["From"].addresses[0].addr_spec == SENDER.address


def test_address_list_one_per_line() -> None:
    header = address_header("To", [Mailbox("", f"u{i}@example.com") for i in range(3)])
    assert header == b"To: u0@example.com,\r\n u1@example.com,\r\n u2@example.com"


BODY_TEXT = st.lists(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029")
    )
    | st.sampled_from(["\n", "\r\n", "\r", "\t", ".", "=", "From ", "--=_kx_a_", " ", "x" * 120]),
    max_size=30,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(name=BODY_TEXT)
def test_any_text_survives_the_round_trip(name: str) -> None:
    """Whatever the context holds, both parts decode to what jinja2 rendered (newlines normalised)."""
    from jobs.email.templates import TemplateLibrary

    class Echo(TemplateLibrary):
        def render(self, name_: str, locale: str, context: object, *, now: dt.datetime) -> object:  # type: ignore[override]
            from jobs.email.templates import RenderedParts

            return RenderedParts(subject="s", text=str(context["v"]), html=str(context["v"]), locale="en")  # type: ignore[index]

    rendered = render_email(_request(context={"v": name}), sender=SENDER, now=NOW, library=Echo())
    _check_wire_format(rendered.raw)
    message = _parse(rendered.raw)
    expected = name.replace("\r\n", "\n").replace("\r", "\n")
    expected = expected if expected.endswith("\n") else expected + "\n"
    for kind in ("plain", "html"):
        # CRLF is the wire form of a line break; readers turn it back into their own.
        decoded = message.get_body((kind,)).get_content()  # type: ignore[union-attr]
        assert decoded.replace("\r\n", "\n") == expected
