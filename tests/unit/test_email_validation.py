"""Pure input checks of email jobs: addresses, header values, attachments, context, payload."""

from __future__ import annotations

import datetime as dt

import pytest

from cache.errors import ConfigError
from jobs.email import api, domains
from jobs.email.api import build_request
from jobs.email.payloads import validate_email_payload
from jobs.email.validation import (
    MAX_ATTACHMENT_BYTES,
    Attachment,
    EmailRequest,
    EmailValidationError,
    Mailbox,
    check_address,
    check_attachments,
    check_context,
    check_header_value,
    check_idempotency_key,
    check_locale,
    parse_mailbox,
    parse_recipients,
    parse_sender,
)

pytestmark = pytest.mark.email

SENDER = Mailbox("KRYONIX", "no-reply@kryonix.example")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ana@example.com", Mailbox("", "ana@example.com")),
        ("  ana@example.com ", Mailbox("", "ana@example.com")),
        ("Ana <ana@example.com>", Mailbox("Ana", "ana@example.com")),
        ('"Silva, Ana" <ana@example.com>', Mailbox("Silva, Ana", "ana@example.com")),
        ('"Ana Sílva" <ana@exämple.com>', Mailbox("Ana Sílva", "ana@xn--exmple-cua.com")),
        ("Ana@EXAMPLE.com", Mailbox("", "Ana@example.com")),
        ("José Silva <jose@example.com>", Mailbox("José Silva", "jose@example.com")),
        ("Alice Ü <alice@example.com>", Mailbox("Alice Ü", "alice@example.com")),
        ("Smith, John <john@example.com>", Mailbox("Smith, John", "john@example.com")),
        (r'"He said \"hi\"" <q@example.com>', Mailbox('He said "hi"', "q@example.com")),
        (("Smith, John", "john@example.com"), Mailbox("Smith, John", "john@example.com")),
        (("", "ana@example.com"), Mailbox("", "ana@example.com")),
    ],
)
def test_valid_addresses_are_normalised_to_ascii(raw: str, expected: Mailbox) -> None:
    assert parse_mailbox(raw, "to") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nope", "must have an @-sign"),
        ("ana@example", "should have a period"),
        ("ana@localhost", "should have a period"),
        ("ana@site.local", "special-use or reserved name"),
        ("ü@example.com", "Internationalized characters before the @-sign"),
        ("a@example.com, b@example.com", "is not a valid email address"),
        ("ana@example.com\r\nBcc: x@example.com", "contains a CR character (header injection refused)"),
        ("ana@example.com\nBcc: x@example.com", "contains a LF character"),
        ("ana@example.com\0", "contains a NUL character"),
        (42, "must be a string address or a (name, address) pair, got int"),
        (("Ana", "ana@example.com", "x"), "must be a (display name, address) pair"),
        (("Ana", "nope"), "is not a valid email address"),
        ("Ana <nope>", "is not a valid email address"),
        ("a@example.com, B <b@example.com>", "must be quoted"),
        ('Ana "the boss" <ana@example.com>', "must be quoted"),
    ],
)
def test_invalid_addresses_are_refused_clearly(raw: object, expected: str) -> None:
    with pytest.raises(EmailValidationError) as info:
        parse_mailbox(raw, "to[0]")
    assert expected in str(info.value)
    assert "to[0]" in str(info.value)


def test_recipients_deduplicated_case_insensitively_and_limited() -> None:
    assert parse_recipients(["a@example.com", "A@EXAMPLE.COM", "b@example.com"]) == (
        Mailbox("", "a@example.com"),
        Mailbox("", "b@example.com"),
    )
    assert parse_recipients("a@example.com") == (Mailbox("", "a@example.com"),)
    with pytest.raises(EmailValidationError, match="3 recipients exceed the limit of 2"):
        parse_recipients(["a@example.com", "b@example.com", "c@example.com"], limit=2)
    with pytest.raises(EmailValidationError, match="at least one recipient"):
        parse_recipients([])
    assert parse_recipients(("Smith, John", "john@example.com")) == (
        Mailbox("Smith, John", "john@example.com"),
    )
    assert parse_recipients([("José", "jose@example.com"), "b@example.com"]) == (
        Mailbox("José", "jose@example.com"),
        Mailbox("", "b@example.com"),
    )
    with pytest.raises(EmailValidationError, match="got set"):
        parse_recipients({"a@example.com"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mail_from", "expected"),
    [
        ("KRYONIX <no-reply@kryonix.local>", Mailbox("KRYONIX", "no-reply@kryonix.local")),
        ("alerts@example.com", Mailbox("", "alerts@example.com")),
    ],
)
def test_sender_allows_local_domains(mail_from: str, expected: Mailbox) -> None:
    assert parse_sender(mail_from) == expected


@pytest.mark.parametrize("mail_from", ["not an address", "KRYONIX <>", "a@b\r\nBcc: c@d", "ü@example.com"])
def test_bad_sender_is_a_config_error_naming_mail_from(mail_from: str) -> None:
    with pytest.raises(ConfigError, match="MAIL_FROM"):
        parse_sender(mail_from)


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\0b"])
def test_header_values_refuse_line_breaks(value: str) -> None:
    with pytest.raises(EmailValidationError, match="header injection refused"):
        check_header_value(value, "subject")


@pytest.mark.parametrize(
    ("locale", "ok"),
    [
        ("en", True),
        ("pt_BR", True),
        ("fil", True),
        ("pt-BR", False),
        ("PT", False),
        ("en_us", False),
        ("", False),
    ],
)
def test_locale_shape(locale: str, ok: bool) -> None:
    if ok:
        assert check_locale(locale) == locale
    else:
        with pytest.raises(EmailValidationError, match="locale must look like"):
            check_locale(locale)


def test_attachment_limits_are_inclusive() -> None:
    exactly = [Attachment("a.bin", b"\0" * MAX_ATTACHMENT_BYTES)]
    assert check_attachments(exactly)[0].content_type == "application/octet-stream"
    with pytest.raises(EmailValidationError, match="attachments total 5242881 bytes"):
        check_attachments([Attachment("a.bin", b"\0" * MAX_ATTACHMENT_BYTES), Attachment("b", b"x")])


def test_attachment_mappings_guess_the_type_and_read_paths(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "report.pdf"
    path.write_bytes(b"%PDF")
    [from_path, from_bytes] = check_attachments(
        [{"path": str(path)}, {"filename": "Notes.TXT", "content": b"hi", "content_type": "Text/Plain"}]
    )
    assert from_path == Attachment("report.pdf", b"%PDF", "application/pdf")
    assert from_bytes == Attachment("Notes.TXT", b"hi", "text/plain")


def test_a_path_over_the_limit_is_refused_without_reading_it(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "huge.bin"
    with open(path, "wb") as handle:
        handle.truncate(MAX_ATTACHMENT_BYTES + 1)  # sparse: nothing to read
    with pytest.raises(EmailValidationError, match="over the limit"):
        check_attachments([{"path": str(path)}])


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ([("a", 1)], "must be a mapping"),
        ({"not-an-identifier": 1}, "keys must be identifiers"),
        ({1: "x"}, "keys must be identifiers"),
        ({"subject": "x"}, "'subject' is reserved"),
        ({"x": {1, 2}}, "builtins.set"),
        ({"x": "y" * 100}, "over the limit of 50 bytes"),
    ],
)
def test_bad_context(context: object, expected: str) -> None:
    with pytest.raises(EmailValidationError, match=expected.replace("(", r"\(")):
        check_context(context, limit=50, reserved={"subject"})


def test_context_comes_back_as_the_worker_will_see_it() -> None:
    import datetime as dt

    moment = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
    assert check_context({"at": moment, "pair": (1, 2), "nested": {"k": None}}) == {
        "at": moment,
        "pair": [1, 2],
        "nested": {"k": None},
    }


@pytest.mark.parametrize(
    ("key", "ok"), [("welcome-42", True), ("", False), (" ", False), ("a b", False), ("x" * 201, False)]
)
def test_idempotency_key(key: str, ok: bool) -> None:
    if ok:
        assert check_idempotency_key(key) == key
    else:
        with pytest.raises(EmailValidationError, match="idempotency_key"):
            check_idempotency_key(key)


def test_payload_round_trip_keeps_everything() -> None:
    request = EmailRequest(
        to=(Mailbox("Ana", "ana@example.com"), Mailbox("", "bob@example.com")),
        template="welcome",
        locale="pt_BR",
        context={"name": "Ana", "login_url": "https://x"},
        idempotency_key="k",
        attachments=(Attachment("a.bin", bytes(range(256)), "application/octet-stream"),),
        reply_to=Mailbox("", "help@example.com"),
        requested_by="42",
    )
    assert validate_email_payload(request.to_payload(), sender=SENDER, now=NOW).request == request


@pytest.mark.parametrize(
    "payload",
    [{}, {"v": 2}, {"v": 1, "to": "x"}, {"v": 1, "to": [], "template": "t", "locale": "en", "context": {}}],
)
def test_malformed_payload_is_refused(payload: dict[str, object]) -> None:
    with pytest.raises(EmailValidationError):
        validate_email_payload(payload, sender=SENDER, now=NOW)


@pytest.mark.parametrize(
    "raw",
    [
        "ana@example.com",
        "Ana <ana@example.com>",
        '"Ana Sílva" <ana@exämple.com>',
        "Ana@EXAMPLE.com",
        "ana+tag@sub.example.co.uk",
    ],
)
def test_a_parsed_address_validates_to_itself(raw: str) -> None:
    """Why the payload check may skip re-parsing what `parse_mailbox` returned at enqueue."""
    address = parse_mailbox(raw, "to").address
    assert check_address(address, "to") == address


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = domains.validate_email

    def counting(address: str, **kwargs: object) -> object:
        calls.append(address)
        return real(address, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(domains, "validate_email", counting)
    return calls


def test_enqueue_parses_each_address_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_parses(monkeypatch)
    request = build_request(
        ["Ana <ana@example.com>", "bob@example.com"],
        "welcome",
        {"name": "Ana", "login_url": "https://x"},
        reply_to="help@example.com",
    )
    assert request.to == (Mailbox("Ana", "ana@example.com"), Mailbox("", "bob@example.com"))
    assert sorted(calls) == ["ana@example.com", "bob@example.com", "help@example.com"]


def test_the_worker_check_parses_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_parses(monkeypatch)
    payload = {
        "v": 1,
        "to": [["Ana", "ana@example.com"], ["", "bob@example.com"]],
        "template": "welcome",
        "locale": "en",
        "context": {"name": "Ana", "login_url": "https://x"},
        "idempotency_key": "k",
        "attachments": [],
        "reply_to": ["", "help@example.com"],
        "requested_by": None,
    }
    validate_email_payload(payload, sender=SENDER, now=NOW)
    assert sorted(calls) == ["ana@example.com", "bob@example.com", "help@example.com"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (["Ana\r\nBcc: x@evil.example", "ana@example.com"], "display name contains a CR character"),
        (["", "ana@example.com\r\nBcc: x@evil.example"], "contains a CR character"),
        (["", "other@example.com\0"], "contains a NUL character"),
        (["", "nope"], "is not a valid email address"),
    ],
)
def test_validated_addresses_keep_the_other_checks(entry: list[str], expected: str) -> None:
    """Only an address in the set skips email-validator; names and header checks still run."""
    payload = {
        "v": 1,
        "to": [entry],
        "template": "welcome",
        "locale": "en",
        "context": {"name": "Ana", "login_url": "https://x"},
        "idempotency_key": "k",
        "attachments": [],
        "reply_to": None,
        "requested_by": None,
    }
    with pytest.raises(EmailValidationError, match=expected):
        validate_email_payload(payload, sender=SENDER, now=NOW, validated_addresses={"ana@example.com"})


def test_bulk_enqueue_parses_each_address_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk check at enqueue shares `plan_recipients`' parse; nothing is written here."""
    monkeypatch.setattr(api, "_enqueue_chunks", lambda chunks, *a, **k: [f"j{n}" for n in range(len(chunks))])
    monkeypatch.setattr(api, "store_info", lambda *a, **k: None)
    calls = _count_parses(monkeypatch)
    recipients = [{"to": f"u{i}@example.com", "context": {"name": f"U{i}"}} for i in range(5)]
    bulk = api.enqueue_bulk_email(
        "welcome", [*recipients, "U0@example.com"], context={"login_url": "https://x"}, chunk_size=2
    )
    assert (bulk.recipients, bulk.duplicates, len(bulk.job_ids)) == (5, 1, 3)
    assert sorted(calls) == sorted(["U0@example.com", *(f"u{i}@example.com" for i in range(5))])
