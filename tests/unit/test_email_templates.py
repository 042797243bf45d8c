"""The shipped email templates and the template library (pure: no Redis, no SMTP)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from jobs.email.templates import (
    PARTS,
    TEMPLATE_ROOT,
    TemplateLibrary,
    default_library,
    format_count,
    locale_chain,
)
from jobs.email.validation import EmailValidationError

pytestmark = pytest.mark.email

NOW = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC)
SAMPLES: dict[str, dict[str, Any]] = {
    "welcome": {"name": "Ana", "login_url": "https://app.example.com/login"},
    "password_reset": {"name": "Ana", "reset_url": "https://app.example.com/r/abc", "expires_minutes": 30},
    "report_ready": {"title": "Activity", "filename": "activity.csv", "attached": False},
    "failed_jobs_digest": {
        "failures": [
            {
                "id": "j1",
                "queue": "email",
                "func": "jobs.email.jobs.send_email",
                "kind": "permanent",
                "reason": "550 <rejected>",
                "attempts": 1,
                "failed_at": NOW,
            }
        ],
        "total": 3,
        "since_hours": 24,
    },
}


@pytest.mark.parametrize(
    ("locale", "chain"),
    [("en", ("en",)), ("pt_BR", ("pt_BR", "pt", "en")), ("pt", ("pt", "en")), ("en_GB", ("en_GB", "en"))],
)
def test_locale_chain(locale: str, chain: tuple[str, ...]) -> None:
    assert locale_chain(locale) == chain


def test_shipped_templates() -> None:
    assert default_library().names() == ["failed_jobs_digest", "password_reset", "report_ready", "welcome"]


@pytest.mark.parametrize("locale_dir", sorted(p.name for p in TEMPLATE_ROOT.iterdir() if p.is_dir()))
def test_every_locale_variant_is_complete(locale_dir: str) -> None:
    """A variant supplies all three parts, so an email never mixes two languages."""
    root = TEMPLATE_ROOT / locale_dir
    assert (root / "layout.html").is_file() and (root / "layout.txt").is_file()
    for template in (p for p in root.iterdir() if p.is_dir()):
        assert sorted(p.name for p in template.iterdir()) == sorted(PARTS), template


@pytest.mark.parametrize("template", sorted(SAMPLES))
@pytest.mark.parametrize("locale", ["en", "pt_BR", "pt", "fr"])
def test_every_template_renders_with_exactly_its_required_variables(template: str, locale: str) -> None:
    library = default_library()
    assert library.required_variables(template, locale) == set(SAMPLES[template])
    parts = library.render(template, locale, SAMPLES[template], now=NOW)
    assert parts.subject and "\n" not in parts.subject
    assert parts.text.strip() and "<html" not in parts.text
    assert parts.html.lstrip().startswith("<!DOCTYPE html>")
    assert "© 2026 KRYONIX" in parts.html.replace("&copy;", "©")


@pytest.mark.parametrize(
    ("template", "locale", "resolved", "subject"),
    [
        ("welcome", "pt_BR", "pt_BR", "Boas-vindas ao KRYONIX, Ana"),
        ("welcome", "pt", "en", "Welcome to KRYONIX, Ana"),
        ("welcome", "fr", "en", "Welcome to KRYONIX, Ana"),
        ("password_reset", "pt_BR", "pt_BR", "Redefina sua senha do KRYONIX"),
        ("failed_jobs_digest", "pt_BR", "en", "[KRYONIX] 3 failed job(s) in the last 24 h"),
    ],
)
def test_locale_fallback(template: str, locale: str, resolved: str, subject: str) -> None:
    parts = default_library().render(template, locale, SAMPLES[template], now=NOW)
    assert (parts.locale, parts.subject) == (resolved, subject)


def test_fallback_layout_follows_the_content_language() -> None:
    parts = default_library().render("failed_jobs_digest", "pt_BR", SAMPLES["failed_jobs_digest"], now=NOW)
    assert 'lang="en"' in parts.html and "Você" not in parts.html


def test_html_is_autoescaped_and_text_is_not() -> None:
    parts = default_library().render(
        "welcome", "en", {**SAMPLES["welcome"], "name": "<script>x</script>"}, now=NOW
    )
    assert "&lt;script&gt;x&lt;/script&gt;" in parts.html and "<script>" not in parts.html
    assert "Hello <script>x</script>," in parts.text


def test_optional_variables_default_to_none() -> None:
    library = default_library()
    assert library.optional_variables("report_ready", "en") == {"name", "download_url", "rows", "note"}
    plain = library.render("report_ready", "en", SAMPLES["report_ready"], now=NOW)
    assert "Hello," in plain.text and "Reports page" in plain.text
    linked = library.render(
        "report_ready",
        "en",
        {**SAMPLES["report_ready"], "download_url": "https://x/r.csv", "rows": 12},
        now=NOW,
    )
    assert "https://x/r.csv" in linked.text and "(12 rows)" in linked.text


@pytest.mark.parametrize(
    ("locale", "rows", "expected"),
    [
        ("en", 45000, "(45,000 rows)"),
        ("en", 1, "(1 row)"),
        ("en", 0, "(0 rows)"),
        ("en", 1234567, "(1,234,567 rows)"),
        ("pt_BR", 45000, "(45.000 linhas)"),
        ("pt_BR", 1, "(1 linha)"),
    ],
)
def test_report_rows_are_grouped_and_pluralised(locale: str, rows: int, expected: str) -> None:
    context = {**SAMPLES["report_ready"], "rows": rows}
    parts = default_library().render("report_ready", locale, context, now=NOW)
    assert expected in parts.text
    assert expected in parts.html


def test_the_count_filter_refuses_what_is_not_an_integer() -> None:
    with pytest.raises(EmailValidationError, match="the count filter needs an integer, got '12'"):
        format_count("12", "row", "rows")
    with pytest.raises(EmailValidationError, match="got True"):
        format_count(True, "row", "rows")


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("nope", {}, "unknown email template 'nope'"),
        ("../en/welcome", {}, "template name must be lowercase"),
        ("welcome", {"name": "Ana"}, "'login_url' is undefined"),
        (
            "failed_jobs_digest",
            {**SAMPLES["failed_jobs_digest"], "failures": [{"id": 1}]},
            "no attribute 'failed_at'",
        ),
        ("welcome", {**SAMPLES["welcome"], "name": "A\r\nBcc: x"}, "spans several lines"),
        ("welcome", {**SAMPLES["welcome"], "name": "x" * 300}, "over 255"),
        ("failed_jobs_digest", {**SAMPLES["failed_jobs_digest"], "total": "3"}, "cannot be rendered"),
    ],
)
def test_render_errors_are_clear(template: str, context: dict[str, Any], expected: str) -> None:
    with pytest.raises(EmailValidationError, match=expected.replace("(", r"\(")):
        default_library().render(template, "en", context, now=NOW)


def test_missing_variables_are_named(tmp_path: Path) -> None:
    with pytest.raises(EmailValidationError) as info:
        default_library().check_context("password_reset", "pt_BR", {"name": "Ana"})
    assert str(info.value) == (
        "context for template 'password_reset' (pt_BR) is missing variable(s): expires_minutes, reset_url "
        "(pass None for an empty optional value)"
    )


def test_a_new_template_is_a_directory(tmp_path: Path) -> None:
    """How to add a template: three files under <locale>/<name>/ next to a layout."""
    for locale in ("en", "de"):
        (tmp_path / locale / "invoice").mkdir(parents=True)
        (tmp_path / locale / "layout.txt").write_text(
            "{% block content %}{% endblock %}\n\n-- {{ product_name }}\n"
        )
        (tmp_path / locale / "layout.html").write_text("<html>{% block content %}{% endblock %}</html>")
    (tmp_path / "en/invoice/subject.txt").write_text("Invoice {{ number }}")
    (tmp_path / "en/invoice/body.txt").write_text(
        '{% extends "layout.txt" %}{% block content %}Total {{ total }}{% endblock %}'
    )
    (tmp_path / "en/invoice/body.html").write_text(
        '{% extends "layout.html" %}{% block content %}<b>{{ total }}</b>{% endblock %}'
    )
    (tmp_path / "de/invoice/subject.txt").write_text("Rechnung {{ number }}")
    (tmp_path / "de/invoice/body.txt").write_text(
        '{% extends "layout.txt" %}{% block content %}Summe {{ total }}{% endblock %}'
    )
    (tmp_path / "de/invoice/body.html").write_text(
        '{% extends "layout.html" %}{% block content %}<b>{{ total }}</b>{% endblock %}'
    )
    library = TemplateLibrary(tmp_path)
    assert library.names() == ["invoice"]
    assert library.required_variables("invoice", "de_AT") == {"number", "total"}
    parts = library.render("invoice", "de_AT", {"number": 7, "total": "9 €"}, now=NOW)
    assert (parts.locale, parts.subject, parts.text) == ("de", "Rechnung 7", "Summe 9 €\n-- KRYONIX")
