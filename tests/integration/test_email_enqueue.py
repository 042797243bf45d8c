"""`enqueue_email` / `enqueue_bulk_email` against a real Redis: bad input writes nothing; events; digest."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from cache.realtime.service import RealtimeService
from jobs.email import Attachment, EmailValidationError, bulk_status, enqueue_bulk_email, enqueue_email
from jobs.email.api import build_request
from jobs.email.digest import collect_failures, send_failed_jobs_digest
from jobs.email.jobs import send_bulk_chunk, send_email
from jobs.email.validation import MAX_ATTACHMENT_BYTES
from jobs.enqueue import enqueue, fetch_job
from jobs.errors import JobValidationError, PermanentJobError
from jobs.queues import KryonixQueue
from tests.integration.email_fixtures import SmtpServer
from tests.integration.processes import Processes

pytestmark = pytest.mark.email

WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}
REPORT = {"title": "Activity", "filename": "activity.csv", "attached": True}


def _welcome(**overrides: Any) -> Callable[[], object]:
    args: dict[str, Any] = {"to": "ana@example.com", "template": "welcome", "context": WELCOME, **overrides}
    return lambda: enqueue_email(args.pop("to"), args.pop("template"), args.pop("context"), **args)


BAD_EMAILS = [
    (_welcome(to="not-an-address"), "to[0] 'not-an-address' is not a valid email address"),
    (_welcome(to="ana@example"), "is not a valid email address"),
    (_welcome(to=[]), "at least one recipient"),
    (_welcome(to=[f"u{i}@example.com" for i in range(51)]), "51 recipients exceed the limit of 50"),
    (_welcome(to="ana@example.com\r\nBcc: all@example.com"), "contains a CR character (header injection"),
    (_welcome(to="Ana\n <ana@example.com>"), "header injection"),
    (_welcome(reply_to="help@example.com\nBcc: x@example.com"), "reply_to contains a LF character"),
    (
        _welcome(context={**WELCOME, "name": "Ana\r\nBcc: x@example.com"}),
        "spans several lines (header injection",
    ),
    (
        _welcome(template="nope"),
        "unknown email template 'nope'; available: failed_jobs_digest, password_reset",
    ),
    (_welcome(template="../en/welcome"), "template name must be lowercase letters"),
    (_welcome(context={"name": "Ana"}), "is missing variable(s): login_url"),
    (_welcome(context={}), "missing variable(s): login_url, name"),
    (
        lambda: enqueue_email(
            "ana@example.com", "failed_jobs_digest", {"failures": [{}], "total": 1, "since_hours": 24}
        ),
        "has no attribute 'failed_at'",
    ),
    (_welcome(context={**WELCOME, "locale": "en"}), "context key 'locale' is reserved"),
    (_welcome(context={**WELCOME, "when": object()}), "builtins.object"),
    (_welcome(context={**WELCOME, "blob": "x" * 70_000}), "over the limit of 65536 bytes"),
    (_welcome(locale="pt-BR"), "locale must look like 'en' or 'pt_BR'"),
    (
        _welcome(
            template="report_ready",
            context=REPORT,
            attachments=[Attachment("big.bin", b"\0" * (MAX_ATTACHMENT_BYTES + 1))],
        ),
        "over the limit of 5242880 bytes (5 MiB)",
    ),
    (
        _welcome(attachments=[Attachment("a.txt", b"a"), Attachment("b.txt", b"\0" * MAX_ATTACHMENT_BYTES)]),
        "attachments total 5242881 bytes",
    ),
    (
        _welcome(attachments=[Attachment(f"{i}.txt", b"x") for i in range(11)]),
        "11 attachments exceed the limit of 10",
    ),
    (_welcome(attachments=[Attachment("x\r\n.txt", b"x")]), "attachments[0].filename contains a CR"),
    (_welcome(attachments=[Attachment("../etc/passwd", b"x")]), "must be a plain file name"),
    (
        _welcome(attachments=[Attachment("a.txt", b"x", "text/html\r\nX-Evil: 1")]),
        "content_type contains a CR",
    ),
    (_welcome(attachments=[Attachment("a.txt", b"x", "not a type")]), "must be a media type"),
    (_welcome(attachments=[Attachment("a.txt", "text")]), "content must be bytes"),  # type: ignore[arg-type]
    (_welcome(attachments=[{"path": "/nonexistent/file.pdf"}]), "cannot read '/nonexistent/file.pdf'"),
    (_welcome(attachments=[{"filename": "a.txt"}]), "exactly one of 'content' or 'path'"),
    (_welcome(idempotency_key=""), "idempotency_key must be a non-empty string"),
    (_welcome(idempotency_key="a b"), "must not contain whitespace"),
    (_welcome(requested_by="user:1"), "requested_by: user_id must be"),
    (_welcome(in_=-1), "must not be negative"),
]


@pytest.mark.parametrize(("call", "expected"), BAD_EMAILS)
def test_bad_email_is_refused_before_redis(
    primary: redis.Redis, call: Callable[[], object], expected: str
) -> None:
    with pytest.raises(JobValidationError) as info:  # EmailValidationError, or the job core's own
        call()
    assert expected in str(info.value)
    assert primary.dbsize() == 0, "nothing may reach Redis"


RECIPIENTS = [{"to": f"u{i}@example.com", "context": {"name": f"U{i}"}} for i in range(3)]
LOGIN = {"login_url": "https://app.example.com/login"}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"recipients": "a@example.com"}, "not a single string"),
        ({"recipients": []}, "at least one address"),
        ({"recipients": [*RECIPIENTS, {"to": "bad"}]}, "recipients[3] 'bad' is not a valid email address"),
        ({"recipients": [*RECIPIENTS, {"to": "x@example.com"}]}, "context of recipients[3] (x@example.com)"),
        ({"recipients": [{"to": "x@example.com", "name": "X"}]}, "got keys ['name', 'to']"),
        ({"recipients": [{"to": "x@example.com", "context": {"name": "A\nB"}}]}, "header injection"),
        (
            {"recipients": [*RECIPIENTS, 42]},
            "recipients[3] must be an address, a (name, address) pair or a mapping",
        ),
        (
            {"recipients": RECIPIENTS, "chunk_size": 0},
            "chunk_size must be None (chosen from the send's size)",
        ),
        ({"recipients": RECIPIENTS, "chunk_size": 1001}, "an integer from 1 to 1000, got 1001"),
        ({"recipients": RECIPIENTS, "chunk_size": True}, "chunk_size must be None"),
        ({"recipients": RECIPIENTS, "connections": 0}, "connections must be from 1 to 1000, got 0"),
        ({"recipients": RECIPIENTS, "connections": "8"}, "connections must be None (the worker's SMTP_MAX"),
        ({"recipients": RECIPIENTS, "template": "nope"}, "unknown email template 'nope'"),
        (
            {"recipients": [{"to": "x@example.com", "context": {"name": "x" * 9000}}]},
            "over the limit of 8192",
        ),
    ],
)
def test_bad_bulk_is_refused_before_redis(
    primary: redis.Redis, kwargs: dict[str, Any], expected: str
) -> None:
    args = {"template": "welcome", "context": LOGIN, **kwargs}
    with pytest.raises(EmailValidationError) as info:
        enqueue_bulk_email(args.pop("template"), args.pop("recipients"), **args)
    assert expected in str(info.value)
    assert primary.dbsize() == 0


def test_bulk_is_chunked_deduplicated_and_idempotent(primary: redis.Redis) -> None:
    recipients = [f"user{i}@example.com" for i in range(25)] + ["USER3@example.com"]
    context = {"name": "friend", **LOGIN}
    first = enqueue_bulk_email("welcome", recipients, context=context, idempotency_key="b1", chunk_size=10)
    again = enqueue_bulk_email("welcome", recipients, context=context, idempotency_key="b1", chunk_size=10)
    assert (first.recipients, first.duplicates, len(first.job_ids)) == (25, 1, 3)
    assert again == first, "the same key queues nothing new"
    assert KryonixQueue("email", connection=primary).count == 3
    status = bulk_status(bulk_id=first.bulk_id)
    assert status is not None and (status.total, status.sent, status.pending) == (25, 0, 25)
    assert bulk_status(bulk_id="unknown") is None


@pytest.mark.parametrize(("connections", "chunk_size", "chunks"), [(None, None, 8), (8, 250, 4)])
def test_bulk_chunks_and_connections_default_to_what_spreads(
    primary: redis.Redis, connections: int | None, chunk_size: int | None, chunks: int
) -> None:
    recipients = [f"user{i}@example.com" for i in range(1000)]
    handle = enqueue_bulk_email(
        "welcome", recipients, context={"name": "x", **LOGIN}, connections=connections, chunk_size=chunk_size
    )
    assert len(handle.job_ids) == chunks
    jobs = [fetch_job(job_id=job_id) for job_id in handle.job_ids]
    payloads = [job.args[0] for job in jobs if job is not None]
    assert {p["connections"] for p in payloads} == {connections}, "None: the worker's SMTP_MAX_CONNECTIONS"
    assert sum(len(p["recipients"]) for p in payloads) == 1000


def test_attachment_from_a_path_travels_in_the_payload(primary: redis.Redis, tmp_path: Path) -> None:
    report = tmp_path / "activity.csv"
    report.write_bytes(b"day,count\n")
    job_id = enqueue_email(
        "ana@example.com",
        "report_ready",
        REPORT,
        attachments=[{"path": str(report), "content_type": "text/csv"}],
    )
    job = fetch_job(job_id=job_id)
    assert job is not None
    [attachment] = job.args[0]["attachments"]
    assert attachment == {"filename": "activity.csv", "content_type": "text/csv", "data": "ZGF5LGNvdW50Cg=="}


def test_events_go_to_the_requesting_user(email_env: SmtpServer, primary: redis.Redis) -> None:
    send_email(build_request("ana@example.com", "welcome", WELCOME, requested_by=42).to_payload())
    email_env.handler.data_reply = "550 5.7.1 rejected"
    with pytest.raises(PermanentJobError):
        send_email(build_request("bob@example.com", "welcome", WELCOME, requested_by=42).to_payload())
    sent, failed = RealtimeService(primary).events_since(42)
    assert sent.event == "email.sent" and sent.data["to"] == ["ana@example.com"]
    assert sent.data["message_id"].startswith("<")
    assert failed.event == "email.failed" and "550 5.7.1" in failed.data["reason"]


def test_event_failure_never_fails_the_job(email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("realtime is down")

    monkeypatch.setattr(RealtimeService, "publish_user_event", broken)
    result = send_email(build_request("ana@example.com", "welcome", WELCOME, requested_by=42).to_payload())
    assert result["status"] == "sent"


def test_bulk_chunk_in_process_skips_final_recipients(email_env: SmtpServer, primary: redis.Redis) -> None:
    handle = enqueue_bulk_email("welcome", ["a@example.com", "b@example.com"], context={"name": "x", **LOGIN})
    [job_id] = handle.job_ids
    job = fetch_job(job_id=job_id)
    assert job is not None
    email_env.handler.rcpt_replies = {"b@example.com": "550 5.1.1 unknown"}
    assert send_bulk_chunk(job.args[0]) == {"sent": 1, "refused": 1, "skipped": 0}
    assert send_bulk_chunk(job.args[0]) == {"sent": 0, "refused": 0, "skipped": 2}
    assert len(email_env.received) == 1


def test_bulk_chunk_with_wrong_smtp_settings_fails_permanently(
    email_env: SmtpServer, primary: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = enqueue_bulk_email("welcome", ["a@example.com"], context={"name": "x", **LOGIN})
    job = fetch_job(job_id=handle.job_ids[0])
    assert job is not None
    monkeypatch.setenv("MAIL_FROM", "not an address")
    from cache.errors import ConfigError
    from cache.settings import reset_settings

    reset_settings()
    with pytest.raises(ConfigError) as info:  # refused by the settings: a worker would not even start
        send_bulk_chunk(job.args[0])
    assert "MAIL_FROM" in str(info.value)


def test_failed_jobs_digest_lists_failures(
    email_env: SmtpServer, primary: redis.Redis, processes: Processes
) -> None:
    for reason in ("template 'x' missing", "boom <b>"):
        enqueue("email", "jobs.diagnostics.fail_permanently", reason)
    enqueue("report", "jobs.diagnostics.fail_permanently", "report broke")
    assert processes.worker("email", "report", burst=True).wait(60) == 0
    failures, total = collect_failures(primary, since=0)
    assert total == 3 and {f["reason"] for f in failures} == {
        "template 'x' missing",
        "boom <b>",
        "report broke",
    }
    assert collect_failures(primary, since=dt.datetime.now(dt.UTC).timestamp() + 60) == ([], 0)

    job_id = send_failed_jobs_digest(["ops@example.com"])
    assert job_id is not None
    assert send_failed_jobs_digest(["ops@example.com"]) == job_id, "one digest per period"
    job = fetch_job(job_id=job_id)
    assert job is not None
    send_email(job.args[0])
    [received] = email_env.received
    message = received.message
    assert message["Subject"] == "[KRYONIX] 3 failed job(s) in the last 24 h"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "report broke" in text and "jobs.diagnostics.fail_permanently" in text
    assert "boom &lt;b&gt;" in message.get_body(("html",)).get_content()  # type: ignore[union-attr]


def test_no_digest_when_nothing_failed(primary: redis.Redis) -> None:
    assert send_failed_jobs_digest(["ops@example.com"]) is None
