"""The one payload check of each email and report job, fed every hostile input of issue 14 (pure).

The enqueue API and the job function call the same functions, so a payload refused here
is refused in the worker too (tests/integration/test_payload_worker.py runs them there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cache.errors import ConfigError
from cache.settings import Settings
from jobs.email.payloads import validate_bulk_chunk, validate_email_payload
from jobs.email.templates import TemplateLibrary, TemplatesMissing
from jobs.email.validation import EmailValidationError, Mailbox, check_header_value
from jobs.reports.api import in_domains, validate_request
from jobs.reports.output import InvalidReportId, check_report_id
from jobs.reports.queries import FORMULA_PREFIXES, FORMULA_STARTS, IGNORED_LEADING
from jobs.reports.registry import ReportDefinitionError
from tests.hostile_payloads import (
    HOSTILE_CHUNKS,
    HOSTILE_EMAILS,
    HOSTILE_REPORTS,
    NOW,
    PDF,
    SENDER,
    chunk_payload,
    email_payload,
)

pytestmark = pytest.mark.security


@pytest.mark.parametrize(("label", "payload", "expected"), HOSTILE_EMAILS, ids=[h[0] for h in HOSTILE_EMAILS])
def test_hostile_email_payload_is_refused(label: str, payload: dict[str, Any], expected: str) -> None:
    with pytest.raises(EmailValidationError) as info:
        validate_email_payload(payload, sender=SENDER, now=NOW)
    assert expected in str(info.value), label


@pytest.mark.parametrize(("label", "payload", "expected"), HOSTILE_CHUNKS, ids=[h[0] for h in HOSTILE_CHUNKS])
def test_hostile_bulk_chunk_is_refused(label: str, payload: dict[str, Any], expected: str) -> None:
    with pytest.raises(EmailValidationError) as info:
        validate_bulk_chunk(payload, sender=SENDER, now=NOW)
    assert expected in str(info.value), label


def test_good_payloads_pass_and_printable_display_names_stay() -> None:
    name = 'Ana "<img src=x onerror=alert(1)>", Bcc: x@evil.example'  # printable: quoted, not a header
    valid = validate_email_payload(
        email_payload(to=[[name, "ana@example.com"]], attachments=[PDF], reply_to=["Help", "h@example.com"]),
        sender=SENDER,
        now=NOW,
    )
    assert valid.request.to == (Mailbox(name, "ana@example.com"),)
    message = valid.message.as_message()
    assert message["To"].addresses[0].display_name == name and message["Bcc"] is None
    assert valid.message.recipients == ("ana@example.com",)
    chunk = validate_bulk_chunk(chunk_payload(), sender=SENDER, now=NOW)
    assert validate_bulk_chunk(chunk.to_payload(), sender=SENDER, now=NOW) == chunk


def test_missing_templates_directory_is_a_configuration_error(tmp_path: Path) -> None:
    library = TemplateLibrary(tmp_path / "not-installed")
    with pytest.raises(TemplatesMissing, match=r"email templates directory .* is missing") as info:
        validate_email_payload(email_payload(), sender=SENDER, now=NOW, library=library)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    "value", ["a\rb", "a\nb", "a\0b", "a\tb", "a\x7fb", "a\x85b", "a\u2028b", "a\u2029b", "a\ud800b"]
)
def test_header_values_refuse_every_control_character(value: str) -> None:
    with pytest.raises(EmailValidationError, match="header injection refused"):
        check_header_value(value, "x")


# --- reports -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "args", "kwargs", "expected"), HOSTILE_REPORTS, ids=[h[0] for h in HOSTILE_REPORTS]
)
def test_hostile_report_request_is_refused(
    label: str, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ReportDefinitionError) as info:
        validate_request(*args, **kwargs)
    assert expected in str(info.value), label


@pytest.mark.parametrize("report_id", ["x\n", "x\r", "../etc", ".hidden", "a/b", "", "x" * 129, "a\0b"])
def test_report_ids_are_matched_whole(report_id: str) -> None:
    with pytest.raises(InvalidReportId):
        check_report_id(report_id)


def test_notify_domains_setting(settings_env: Callable[..., None]) -> None:
    settings_env(REPORTS_NOTIFY_DOMAINS="Example.com, corp.example")
    assert validate_request("users", {}, notify_email="a@sub.example.com").recipients == (
        Mailbox("", "a@sub.example.com"),
    )
    for outside in ("eve@evil.example", "eve@example.com.evil.example", "eve@notexample.com"):
        with pytest.raises(ReportDefinitionError, match="outside REPORTS_NOTIFY_DOMAINS"):
            validate_request("users", {}, notify_email=["a@corp.example", outside])


def test_internationalized_notify_domains_compare_in_their_idna_form(
    settings_env: Callable[..., None],
) -> None:
    """email-validator gives an address's domain as xn--; the setting is converted the same way."""
    assert Settings.from_env(
        {"REPORTS_NOTIFY_DOMAINS": "Bücher.example, a.example"}
    ).reports_notify_domains == (
        "xn--bcher-kva.example",
        "a.example",
    )
    settings_env(REPORTS_NOTIFY_DOMAINS="bücher.example")
    for address in ("ana@bücher.example", "ana@shop.xn--bcher-kva.example", "ana@BÜCHER.example"):
        assert (
            validate_request("users", {}, notify_email=address)
            .recipients[0]
            .address.endswith("xn--bcher-kva.example")
        )
    with pytest.raises(ReportDefinitionError, match="outside REPORTS_NOTIFY_DOMAINS"):
        validate_request("users", {}, notify_email="ana@bucher.example")
    with pytest.raises(
        ConfigError,
        match=r"REPORTS_NOTIFY_DOMAINS item .+ is not a valid internationalized domain name: Joiner",
    ):
        Settings.from_env({"REPORTS_NOTIFY_DOMAINS": "a\u200db.example"})


@pytest.mark.parametrize("raw", ["exa mple.com", "localhost", "-a.example", "a..example", "a.example/x"])
def test_bad_notify_domains_are_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="REPORTS_NOTIFY_DOMAINS"):
        Settings.from_env({"REPORTS_NOTIFY_DOMAINS": raw})


def test_in_domains() -> None:
    assert in_domains("a@x.example.com", ["example.com"]) and in_domains("a@EXAMPLE.com", ["example.com"])
    assert not in_domains("a@badexample.com", ["example.com"])


def test_formula_guard_sets_cover_owasp() -> None:
    assert set("=+-@\t\r\n") <= set(FORMULA_PREFIXES) and set(FORMULA_STARTS) == set("=+-@")
    assert {" ", "\n", "\x0b", "\x0c", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u3000"} <= set(
        IGNORED_LEADING
    )
