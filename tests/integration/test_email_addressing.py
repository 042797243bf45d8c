"""Addressing on the wire: display names, the EHLO name, the envelope sender, test domains.

Each test sends through the real aiosmtpd server of `email_fixtures` with the job
function a worker runs, and reads what the server received.
"""

from __future__ import annotations

from email.headerregistry import Address

import pytest

from cache.errors import ConfigError
from jobs.email import enqueue_bulk_email, enqueue_email
from jobs.email.api import build_request
from jobs.email.jobs import send_bulk_chunk, send_email
from jobs.email.validation import EmailValidationError
from jobs.enqueue import fetch_job
from jobs.errors import PermanentJobError
from tests.integration.email_fixtures import SmtpServer, use_smtp

pytestmark = pytest.mark.email

WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}
NAMES = ["José Silva", "Alice Ü", "Smith, John"]


def _only_address(message_header: object) -> Address:
    addresses = message_header.addresses  # type: ignore[attr-defined]
    assert len(addresses) == 1
    return addresses[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("form", ["string", "pair"])
def test_display_names_reach_the_server_encoded_and_decode_back(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch, name: str, form: str
) -> None:
    monkeypatch.setenv("MAIL_FROM", f'"{name}" <no-reply@kryonix.example>')  # a comma is quoted in settings
    use_smtp(monkeypatch, email_env)
    to = f"{name} <ana@example.com>" if form == "string" else (name, "ana@example.com")
    send_email(build_request(to, "welcome", WELCOME).to_payload())
    [received] = email_env.received
    assert received.rcpt_tos == ["ana@example.com"]  # the envelope has the bare address
    assert received.mail_from == "no-reply@kryonix.example"
    assert received.data.isascii()  # quoted or RFC 2047-encoded: no SMTPUTF8 needed
    message = received.message
    assert (_only_address(message["To"]).display_name, _only_address(message["To"]).addr_spec) == (
        name,
        "ana@example.com",
    )
    assert _only_address(message["From"]).display_name == name


SPOOF_NAME = "=?utf-8?b?QWRtaW4gPGFkbWluQGJhbmsuY29tPg==?="  # spells 'Admin <admin@bank.com>'
SPOOF_SUBJECT = "=?utf-8?b?WW91ciBhY2NvdW50IGlzIGxvY2tlZA==?="  # spells 'Your account is locked'


def test_names_and_subjects_that_look_encoded_arrive_as_the_literal_text(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a raw encoded-word in a name or subject is decoded by readers into spoofed text."""
    monkeypatch.setenv("MAIL_FROM", f"{SPOOF_NAME} <no-reply@kryonix.example>")
    use_smtp(monkeypatch, email_env)
    job_id = enqueue_email(
        (SPOOF_NAME, "x@example.com"),
        "welcome",
        {"name": SPOOF_SUBJECT, "login_url": "https://app.example.com/login"},
        reply_to=f"{SPOOF_NAME} <help@example.com>",
    )
    job = fetch_job(job_id=job_id)
    assert job is not None
    send_email(*job.args)
    [received] = email_env.received
    assert received.data.isascii() and SPOOF_NAME.encode() not in received.data
    message = received.message  # parsed with email.policy.default
    for header, address in (
        ("To", "x@example.com"),
        ("From", "no-reply@kryonix.example"),
        ("Reply-To", "help@example.com"),
    ):
        assert (_only_address(message[header]).display_name, _only_address(message[header]).addr_spec) == (
            SPOOF_NAME,
            address,
        )
    assert message["Subject"] == f"Welcome to KRYONIX, {SPOOF_SUBJECT}"


def test_bulk_recipients_take_pairs_and_names(email_env: SmtpServer) -> None:
    bulk = enqueue_bulk_email(
        "welcome",
        [("Smith, John", "john@example.com"), {"to": "José Silva <jose@example.com>"}],
        context=WELCOME,
    )
    for job_id in bulk.job_ids:
        job = fetch_job(job_id=job_id)
        assert job is not None
        send_bulk_chunk(*job.args)
    names = {r.rcpt_tos[0]: _only_address(r.message["To"]).display_name for r in email_env.received}
    assert names == {"john@example.com": "Smith, John", "jose@example.com": "José Silva"}


def test_bulk_and_single_recipients_take_the_json_pair_form(email_env: SmtpServer) -> None:
    """`[name, address]` (how a pair comes out of JSON) is a pair wherever a tuple is, as in notify_email."""
    bulk = enqueue_bulk_email(
        "welcome",
        [["Dan", "dan@example.com"], {"to": ["Smith, Eve", "eve@example.com"], "context": {"name": "Eve"}}],
        context=WELCOME,
    )
    for job_id in bulk.job_ids:
        job = fetch_job(job_id=job_id)
        assert job is not None
        send_bulk_chunk(*job.args)
    job = fetch_job(
        job_id=enqueue_email([["Fay Ü", "fay@example.com"], "gil@example.com"], "welcome", WELCOME)
    )
    assert job is not None
    send_email(*job.args)
    names = {r.rcpt_tos[0]: [a.display_name for a in r.message["To"].addresses] for r in email_env.received}
    assert names == {
        "dan@example.com": ["Dan"],
        "eve@example.com": ["Smith, Eve"],
        "fay@example.com": ["Fay Ü", ""],
    }
    for entry in (["Dan", "dan@example.com", "x"], {"to": ["dan@example.com"]}):
        with pytest.raises(
            EmailValidationError, match=r"recipients\[0\] must be a \(display name, address\) pair"
        ):
            enqueue_bulk_email("welcome", [entry], context=WELCOME)


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("José Silva <jose@>", "is not a valid email address"),
        (("José Silva", "not-an-address"), "is not a valid email address"),
        ("Smith, John <john@example.com>, x@example.com", "is not a valid email address"),
        ("a@example.com, Bob <b@example.com>", "must be quoted"),
        (("José", "jose@example.com", "extra"), "must be a (display name, address) pair"),
    ],
)
def test_bad_addresses_still_fail_clearly(email_env: SmtpServer, to: object, expected: str) -> None:
    with pytest.raises(EmailValidationError) as info:
        build_request(to, "welcome", WELCOME)  # type: ignore[arg-type]
    assert expected in str(info.value)
    assert "to[0]" in str(info.value)


def test_a_refused_ehlo_name_is_a_configuration_error_naming_the_setting(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's case: no SMTP_HELO_NAME, and this host's name is not fully qualified."""
    monkeypatch.setattr("jobs.email.smtp._fqdn", lambda: "worker1")
    use_smtp(monkeypatch, email_env)
    email_env.handler.refuse_non_fqdn_helo = "helo"
    with pytest.raises(PermanentJobError) as info:
        send_email(build_request("ana@example.com", "welcome", WELCOME).to_payload())
    assert "SMTP_HELO_NAME" in str(info.value)
    assert "'worker1'" in str(info.value)
    assert "Helo command rejected" in str(info.value)
    assert email_env.handler.helo_names[0] == "worker1"
    assert email_env.received == []


def test_a_helo_refusal_delayed_to_rcpt_is_a_configuration_error_too(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postfix refuses the name at RCPT (smtpd_delay_reject): not "every recipient was refused"."""
    monkeypatch.setattr("jobs.email.smtp._fqdn", lambda: "worker1")
    use_smtp(monkeypatch, email_env)
    email_env.handler.refuse_non_fqdn_helo = "rcpt"
    with pytest.raises(PermanentJobError) as info:
        send_email(build_request("ana@example.com", "welcome", WELCOME).to_payload())
    assert "SMTP_HELO_NAME" in str(info.value)
    assert "every recipient was refused" not in str(info.value)


@pytest.mark.parametrize("refused_at", ["helo", "rcpt"])
def test_smtp_helo_name_is_sent_and_accepted(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    monkeypatch.setattr("jobs.email.smtp._fqdn", lambda: "worker1")
    use_smtp(monkeypatch, email_env, SMTP_HELO_NAME="worker1.example.com")
    email_env.handler.refuse_non_fqdn_helo = refused_at
    assert send_email(build_request("ana@example.com", "welcome", WELCOME).to_payload())["status"] == "sent"
    assert email_env.handler.helo_names == ["worker1.example.com"]


def test_the_default_ehlo_name_is_the_fully_qualified_name(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobs.email.smtp._fqdn", lambda: "vm.lan.example.com")
    use_smtp(monkeypatch, email_env)
    send_email(build_request("ana@example.com", "welcome", WELCOME).to_payload())
    assert email_env.handler.helo_names == ["vm.lan.example.com"]


def test_mail_return_path_is_the_envelope_sender(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_smtp(monkeypatch, email_env, MAIL_RETURN_PATH="bounces@mail.example.com")
    send_email(build_request("ana@example.com", "welcome", WELCOME).to_payload())
    [received] = email_env.received
    assert received.mail_from == "bounces@mail.example.com"
    assert _only_address(received.message["From"]).addr_spec == "no-reply@kryonix.local"


def test_without_mail_return_path_the_envelope_sender_is_mail_from(email_env: SmtpServer) -> None:
    send_email(build_request("ana@example.com", "welcome", WELCOME).to_payload())
    assert [r.mail_from for r in email_env.received] == ["no-reply@kryonix.local"]


TEST_DOMAIN_ADDRESSES = [  # `shop.example` passes email-validator anyway
    "ana@app.test",
    "ana@example",  # the bare reserved name itself
    "ana@nowhere.invalid",
    "ana@localhost",
    "ana@box.local",
]


@pytest.mark.parametrize("address", TEST_DOMAIN_ADDRESSES)
def test_reserved_test_domains_are_refused_by_default(email_env: SmtpServer, address: str) -> None:
    with pytest.raises(EmailValidationError, match="is not a valid email address"):
        build_request(address, "welcome", WELCOME)


@pytest.mark.parametrize("address", TEST_DOMAIN_ADDRESSES)
def test_mail_allow_test_domains_lets_them_through(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    use_smtp(monkeypatch, email_env, MAIL_ALLOW_TEST_DOMAINS="true", KRYONIX_ENV="staging")
    send_email(build_request(f"Ana <{address}>", "welcome", WELCOME).to_payload())
    assert [r.rcpt_tos for r in email_env.received] == [[address]]
    for bad in ("ana@bad..test", "ana@.local", "ana@-x.test", "a b@x.test"):  # the rest is still checked
        with pytest.raises(EmailValidationError, match="is not a valid email address"):
            build_request(bad, "welcome", WELCOME)
    assert build_request("Ana@Box.LOCAL", "welcome", WELCOME).to[0].address == "Ana@box.local"


def test_mail_allow_test_domains_is_refused_in_production(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_smtp(monkeypatch, email_env, MAIL_ALLOW_TEST_DOMAINS="true", KRYONIX_ENV="production")
    with pytest.raises(
        ConfigError, match="MAIL_ALLOW_TEST_DOMAINS=true is refused when KRYONIX_ENV=production"
    ):
        build_request("ana@app.test", "welcome", WELCOME)
