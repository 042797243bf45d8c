"""Completion side effects and error classification, without Redis or a database (marker `reports`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc

from jobs.errors import EnqueueUnavailable, JobValidationError, TransientJobError
from jobs.reports import notify
from jobs.reports.build import ReportFile
from jobs.reports.queries import is_transient_db_error

pytestmark = pytest.mark.reports


def _report(size: int, path: Path = Path("/srv/reports/r-1.csv")) -> ReportFile:
    return ReportFile(
        report_id="r-1",
        report_type="users",
        format="csv",
        path=path,
        rows=3,
        size_bytes=size,
        sha256="ab" * 32,
        filters={"status": "active"},
        generated_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A stand-in `jobs.email` module recording each enqueue_email call."""
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("jobs.email")

    def enqueue_email(to: str, template: str, context: dict[str, Any], **kwargs: Any) -> str:
        if to == "down@example.com":
            raise EnqueueUnavailable("redis is down", role="primary", setting="REDIS_URL")
        if to == "refused@example.com":
            raise JobValidationError("refused")
        calls.append({"to": to, "template": template, "context": context, **kwargs})
        return f"email-{len(calls)}"

    @dataclasses.dataclass(frozen=True)
    class Attachment:
        filename: str
        content: bytes
        content_type: str = "application/octet-stream"

    fake.enqueue_email = enqueue_email  # type: ignore[attr-defined]
    fake.Attachment = Attachment  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jobs.email", fake)
    return calls


def test_small_report_is_attached_once_per_recipient(sent: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "r-1.csv"
    path.write_bytes(b"id\r\n1\r\n")
    ids = notify.email_ready(["ann@example.com", ("Bob Souza", "bob@example.com")], _report(8, path), "Users")
    assert ids == ["email-1", "email-2"]
    first = sent[0]
    assert first["template"] == "report_ready"
    [attachment] = first["attachments"]
    assert (attachment.filename, attachment.content, attachment.content_type) == (
        "r-1.csv",
        b"id\r\n1\r\n",
        "text/csv",
    )
    context = first["context"]
    assert (context["name"], context["title"], context["download_url"]) == (None, "Users", None)
    assert context["attached"] is True and context["rows"] == 3
    assert not {"subject", "year", "locale", "product_name"} & context.keys(), (
        "keys the email renderer provides"
    )
    assert first["idempotency_key"] == notify.ready_email_key("r-1", "ann@example.com")
    assert first["idempotency_key"] != sent[1]["idempotency_key"]
    assert sent[1]["context"]["name"] == "Bob Souza"  # a display name greets; an address's local part never
    assert sent[1]["to"] == ("Bob Souza", "bob@example.com")
    assert sent[1]["idempotency_key"] == notify.ready_email_key("r-1", "bob@example.com")


def test_large_report_goes_as_a_path(sent: list[dict[str, Any]]) -> None:
    notify.email_ready(["a@example.com"], _report(notify.ATTACH_MAX_BYTES + 1), "Users")
    assert sent[0]["attachments"] == []
    context = sent[0]["context"]
    assert context["attached"] is False and context["download_url"] == "/srv/reports/r-1.csv"


def test_large_report_is_linked_under_the_base_url(sent: list[dict[str, Any]]) -> None:
    big = _report(notify.ATTACH_MAX_BYTES + 1, Path("/srv/reports/r 1.csv"))
    notify.email_ready(["a@example.com"], big, "Users", "https://app.example.com/reports")
    context = sent[0]["context"]
    assert context["download_url"] == "https://app.example.com/reports/r%201.csv", "quoted file name"
    assert sent[0]["attachments"] == []


def test_small_report_stays_attached_with_a_base_url(sent: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "r-1.csv"
    path.write_bytes(b"id\r\n")
    notify.email_ready(["a@example.com"], _report(4, path), "Users", "https://app.example.com/reports")
    assert sent[0]["context"]["download_url"] is None and len(sent[0]["attachments"]) == 1


def test_ready_event_carries_the_link_only_with_a_base_url() -> None:
    report = _report(10)
    assert notify.event_payload(report)["download_url"] is None
    linked = notify.event_payload(report, "https://app.example.com/reports")
    assert linked["download_url"] == "https://app.example.com/reports/r-1.csv"
    assert linked["path"] == "/srv/reports/r-1.csv"


def test_email_queue_down_makes_the_job_retry(sent: list[dict[str, Any]]) -> None:
    with pytest.raises(TransientJobError, match="its email could not be queued"):
        notify.email_ready(["down@example.com"], _report(notify.ATTACH_MAX_BYTES + 1), "Users")


def test_a_refused_address_does_not_fail_the_report(
    sent: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    big = _report(notify.ATTACH_MAX_BYTES + 1)
    assert notify.email_ready(["refused@example.com", "ok@example.com"], big, "Users") == ["email-1"]
    assert "refused" in caplog.text


def test_idempotency_key_is_stable_and_short() -> None:
    key = notify.ready_email_key("x" * 128, "Someone@Example.com")
    assert key == notify.ready_email_key("x" * 128, "someone@example.com")
    assert len(key) <= 256


def test_missing_email_module_is_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "jobs.email", None)  # import raises ImportError
    with caplog.at_level(logging.ERROR):
        assert notify.email_ready(["a@example.com"], _report(10), "Users") == []
    assert "NOT sent" in caplog.text


def test_event_failure_never_fails_the_job(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import cache.realtime.service

    class Broken:
        def publish_user_event(self, *args: Any) -> str:
            raise ConnectionError("redis gone")

    monkeypatch.setattr(cache.realtime.service, "RealtimeService", Broken)
    assert notify.publish_ready("42", _report(10)) is None
    assert "report.ready event for user 42 not sent" in caplog.text


def test_event_payload_carries_no_content() -> None:
    assert notify.event_payload(_report(10)) == {
        "report_id": "r-1",
        "report_type": "users",
        "format": "csv",
        "rows": 3,
        "size_bytes": 10,
        "sha256": "ab" * 32,
        "path": "/srv/reports/r-1.csv",
        "download_url": None,
    }


class _DeadlockDetected(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused")), True),
        (exc.OperationalError("UPDATE x", {}, _DeadlockDetected("deadlock detected")), True),
        (exc.InterfaceError("SELECT 1", {}, Exception("connection closed")), True),
        (exc.TimeoutError("QueuePool limit reached"), True),
        (exc.DBAPIError("SELECT 1", {}, Exception("lost"), connection_invalidated=True), True),
        (exc.ProgrammingError("SELEKT", {}, Exception("syntax error")), False),
        (exc.IntegrityError("INSERT", {}, Exception("duplicate")), False),
    ],
)
def test_transient_database_errors(error: BaseException, transient: bool) -> None:
    assert is_transient_db_error(error) is transient


def test_sigterm_becomes_a_retryable_error_while_writing() -> None:
    import os
    import signal

    from jobs.reports.jobs import ReportInterrupted, _sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ReportInterrupted, match="interrupted by signal 15"), _sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.5)  # give the handler a bytecode boundary to run at
    assert isinstance(ReportInterrupted("x"), TransientJobError)
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handler is restored"


@pytest.mark.parametrize(
    ("name", "greeting"),
    [(None, "Hello,"), ("José Silva", "Hello José Silva,"), ("  ", "Hello,")],
)
def test_the_ready_email_names_the_report_once_and_greets_by_display_name(
    name: str | None, greeting: str
) -> None:
    from jobs.email.templates import default_library

    report = dataclasses.replace(_report(10), rows=45000)
    context = notify.email_context(report, "Activity records", name)
    parts = default_library().render(
        notify.READY_TEMPLATE, "en", context, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    assert parts.subject == 'Your report "Activity records" is ready'
    assert parts.text.splitlines()[0] == greeting
    assert 'Your report "Activity records" is ready (45,000 rows).' in parts.text


def test_progress_events_carry_the_percent_to_one_decimal(monkeypatch: pytest.MonkeyPatch) -> None:
    import cache.realtime.service

    published: list[tuple[Any, ...]] = []

    class Recording:
        def publish_user_event(self, *args: Any) -> str:
            published.append(args)
            return "1-0"

    monkeypatch.setattr(cache.realtime.service, "RealtimeService", Recording)
    notify.publish_progress("42", "r-1", 100 / 9, 1, 9)
    assert published == [
        ("42", "report.progress", {"report_id": "r-1", "percent": 11.1, "rows_done": 1, "rows_total": 9})
    ]
