"""Email delivery against a real aiosmtpd server, calling the job functions in this process.

What runs here is exactly what a worker runs for one job (the worker only adds the job
core around it); tests/integration/test_email_worker.py covers real worker processes.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from cache import connections, keys
from cache.errors import RedisUnavailable
from jobs.email import Attachment, enqueue_email, idempotency
from jobs.email.api import build_request
from jobs.email.jobs import send_email
from jobs.email.runtime import process_runtime
from jobs.email.smtp import SmtpPool, SmtpSettings, Verdict
from jobs.enqueue import fetch_job
from jobs.errors import PermanentJobError, TransientJobError
from tests.integration.email_fixtures import (
    PASSWORD,
    SmtpServer,
    TlsFiles,
    use_smtp,
)

pytestmark = pytest.mark.email

# The exactly-once core (marker and claim on one `{idem:<key>}` slot) runs on the single
# server and on the cluster too; enqueueing needs RQ on the cluster (test_cluster_rq.py).
EXACTLY_ONCE = pytest.mark.backends("single", "cluster")
WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}


def _payload(to: str | list[str] = "ana@example.com", **kwargs: Any) -> dict[str, Any]:
    template = kwargs.pop("template", "welcome")
    context = kwargs.pop("context", WELCOME)
    return build_request(to, template, context, **kwargs).to_payload()


def test_message_arrives_with_subject_parts_headers_and_attachment(email_env: SmtpServer) -> None:
    payload = _payload(
        ["Ana <ana@example.com>", "bob@example.com"],
        template="report_ready",
        context={"name": "Ana", "title": "Activity <Q3>", "filename": "q3.csv", "attached": True},
        attachments=[Attachment("q3.csv", b"day,count\n2026-01-01,5\n", "text/csv")],
        reply_to="support@example.com",
        idempotency_key="report-ready-q3",
    )
    result = send_email(payload)
    assert result["status"] == "sent"
    [received] = email_env.received
    assert received.mail_from == "no-reply@kryonix.local"
    assert received.rcpt_tos == ["ana@example.com", "bob@example.com"]
    message = received.message
    assert message["Subject"] == 'Your report "Activity <Q3>" is ready'
    assert message["From"] == "KRYONIX <no-reply@kryonix.local>"
    assert message["To"] == "Ana <ana@example.com>, bob@example.com"
    assert message["Reply-To"] == "support@example.com"
    assert message["Message-ID"] == result["message_id"]
    assert message["Date"].datetime is not None
    assert message.get_content_type() == "multipart/mixed"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert 'Your report "Activity <Q3>" is ready' in text
    assert "Activity &lt;Q3&gt;" in html and "<Q3>" not in html, "HTML is autoescaped"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "q3.csv"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_content() == "day,count\n2026-01-01,5\n"


def test_locale_variant_and_fallback_over_the_wire(email_env: SmtpServer) -> None:
    send_email(_payload(locale="pt_BR"))
    send_email(
        _payload(
            template="report_ready",
            context={"title": "T", "filename": "t.csv", "attached": False},
            locale="pt_BR",
        )
    )
    send_email(
        _payload(
            template="failed_jobs_digest",
            context={"failures": [], "total": 0, "since_hours": 24},
            locale="pt_BR",
        )
    )
    welcome, report, digest = (r.message for r in email_env.received)
    assert welcome["Subject"] == "Boas-vindas ao KRYONIX, Ana"
    assert welcome["Content-Language"] == "pt-BR"
    assert report["Content-Language"] == "pt-BR"
    assert digest["Content-Language"] == "en", "no pt_BR variant: falls back to en"
    assert digest["Subject"].startswith("[KRYONIX] 0 failed job(s)")


def test_connection_is_kept_across_jobs_and_reopened_when_dropped(email_env: SmtpServer) -> None:
    for n in range(3):
        send_email(_payload(f"user{n}@example.com"))
    assert email_env.connections == 1, "one SMTP connection for consecutive jobs"
    email_env.drop_connections()
    send_email(_payload("after-drop@example.com"))
    assert len(email_env.to("after-drop@example.com")) == 1
    assert email_env.connections == 2, "the dropped connection was replaced"
    assert email_env.handler.data_commands == 4, "nothing was sent twice"


@EXACTLY_ONCE
def test_same_idempotency_key_is_sent_once(email_env: SmtpServer, primary: redis.Redis) -> None:
    payload = _payload(idempotency_key="welcome-42")
    first = send_email(payload)
    second = send_email(payload)
    assert first["status"] == "sent" and second["status"] == "already_sent"
    assert second["message_id"] == first["message_id"]
    assert len(email_env.received) == 1
    assert not primary.exists(keys.email_sending_claim("welcome-42")), "no claim outlives the send"
    assert idempotency.possible_duplicates() == 0
    ttl = primary.ttl(keys.email_sent_marker("welcome-42"))
    assert 6 * 24 * 3600 < ttl <= 7 * 24 * 3600


@EXACTLY_ONCE
def test_connection_lost_after_data_flags_the_resend_as_a_possible_duplicate(
    email_env: SmtpServer, primary: redis.Redis
) -> None:
    """The server kept the message but the answer never came: the retry must say it may duplicate."""
    email_env.handler.drop_after_data = 1
    payload = _payload(idempotency_key="reset-7")
    with pytest.raises(TransientJobError, match="SMTP connection lost"):
        send_email(payload)
    assert primary.exists(keys.email_sending_claim("reset-7")), "the unresolved attempt is remembered"
    result = send_email(payload)
    assert result["status"] == "sent" and result["possible_duplicate"] is True
    first, second = (r.message["Message-ID"] for r in email_env.received)
    assert first == second == result["message_id"], "the copy can be collapsed by the mail client"
    assert idempotency.possible_duplicates() == 1
    assert not primary.exists(keys.email_sending_claim("reset-7")), "resolved by the marker"
    assert send_email(payload)["status"] == "already_sent"


@EXACTLY_ONCE
def test_an_unrenderable_email_fails_without_leaving_a_claim(
    email_env: SmtpServer, primary: redis.Redis
) -> None:
    payload = _payload(idempotency_key="broken-1")
    payload["context"] = {}  # the template's variables are missing: the render fails
    with pytest.raises(PermanentJobError):
        send_email(payload)
    assert not primary.exists(keys.email_sending_claim("broken-1"))
    assert email_env.received == []


@EXACTLY_ONCE
def test_a_resent_claim_pipeline_does_not_flag_the_attempt_itself(primary: redis.Redis) -> None:
    """The client retries a pipeline whose reply was lost: the claim it finds is its own."""
    attempt = {"job_id": "j-1", "pid": 7, "at": 1.0, "nonce": "n-1"}
    assert idempotency.begin_send(idempotency_key="retried-1", attempt=attempt) == (None, None)
    assert idempotency.begin_send(idempotency_key="retried-1", attempt=attempt) == (None, None), (
        "its own claim"
    )
    other = {**attempt, "nonce": "n-2"}
    assert idempotency.begin_send(idempotency_key="retried-1", attempt=other) == (None, attempt), (
        "another attempt's claim"
    )


def test_a_failed_claim_release_does_not_change_how_the_job_ends(
    email_env: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_: Any, **__: Any) -> None:
        raise RedisUnavailable("primary Redis: unreachable", role="primary", setting="REDIS_URL")

    monkeypatch.setattr(idempotency, "release_claim", unreachable)
    email_env.handler.data_reply = "550 5.7.1 Message rejected"
    with pytest.raises(PermanentJobError, match="550"):
        send_email(_payload())


@EXACTLY_ONCE
def test_explicit_refusal_then_success_is_not_a_possible_duplicate(
    email_env: SmtpServer, primary: redis.Redis
) -> None:
    """A 4xx reply proves the server has no copy: the next attempt is an ordinary send."""
    email_env.handler.data_replies.append("451 4.3.0 Try again later")
    payload = _payload(idempotency_key="reset-8")
    with pytest.raises(TransientJobError, match="451"):
        send_email(payload)
    assert not primary.exists(keys.email_sending_claim("reset-8"))
    result = send_email(payload)
    assert result["status"] == "sent" and result["possible_duplicate"] is False
    assert len(email_env.received) == 1
    assert idempotency.possible_duplicates() == 0


@EXACTLY_ONCE
def test_claim_left_by_a_dead_attempt_survives_a_deferred_retry(
    email_env: SmtpServer, primary: redis.Redis
) -> None:
    """The flag must not be lost when the retry after a crash is itself deferred."""
    primary.set(keys.email_sending_claim("reset-9"), '{"pid": 1}')
    email_env.handler.data_replies.append("451 4.3.0 Try again later")
    payload = _payload(idempotency_key="reset-9")
    with pytest.raises(TransientJobError):
        send_email(payload)
    assert primary.get(keys.email_sending_claim("reset-9")) == b'{"pid": 1}', "the dead attempt's claim"
    assert idempotency.possible_duplicates() == 0, "nothing flagged went out yet"
    result = send_email(payload)
    assert result["possible_duplicate"] is True and result["interrupted_attempt"] == {"pid": 1}
    assert idempotency.possible_duplicates() == 1


def test_duplicate_enqueue_with_the_same_key_is_one_job(email_env: SmtpServer) -> None:
    first = enqueue_email("ana@example.com", "welcome", WELCOME, idempotency_key="signup-ana")
    second = enqueue_email("ana@example.com", "welcome", WELCOME, idempotency_key="signup-ana")
    other = enqueue_email("ana@example.com", "welcome", WELCOME)
    assert first == second != other
    job = fetch_job(job_id=first)
    assert job is not None and job.args[0]["idempotency_key"] == "signup-ana"


@pytest.mark.parametrize(
    ("script", "verdict", "error"),
    [
        ({"data_reply": "451 4.3.0 Try again later"}, "deferred", TransientJobError),
        ({"data_reply": "550 5.7.1 Message rejected"}, "refused", PermanentJobError),
        ({"rcpt_replies": {"ana@example.com": "550 5.1.1 No such user"}}, "refused", PermanentJobError),
        ({"rcpt_replies": {"ana@example.com": "452 4.2.2 Mailbox full"}}, "deferred", TransientJobError),
    ],
)
def test_replies_are_classified(
    email_env: SmtpServer, script: dict[str, Any], verdict: str, error: type[Exception]
) -> None:
    for name, value in script.items():
        setattr(email_env.handler, name, value)
    with pytest.raises(error) as info:
        send_email(_payload())
    code = next(iter(script.values()))
    code = code if isinstance(code, str) else next(iter(code.values()))
    assert code.split()[0] in str(info.value), "the server's reply is the stored reason"
    assert email_env.received == []


def test_partial_refusal_is_reported_per_recipient(email_env: SmtpServer) -> None:
    email_env.handler.rcpt_replies = {"gone@example.com": "550 5.1.1 No such user"}
    result = send_email(_payload(["ana@example.com", "gone@example.com"]))
    assert result["status"] == "sent"
    assert result["refused"] == {"gone@example.com": "550 5.1.1 No such user"}
    assert [r.rcpt_tos for r in email_env.received] == [["ana@example.com"]]


def test_server_down_is_transient(email_env: SmtpServer) -> None:
    email_env.stop()
    with pytest.raises(TransientJobError) as info:
        send_email(_payload())
    assert f"cannot reach SMTP server 127.0.0.1:{email_env.port}" in str(info.value)


def test_starttls_and_auth(
    redis_env: dict[str, str], tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SmtpServer(tls=tls_files, auth=True).start()
    try:
        use_smtp(monkeypatch, server)
        assert send_email(_payload())["status"] == "sent"
        assert len(server.received) == 1
    finally:
        server.stop()


def test_wrong_credentials_are_permanent_with_a_clear_reason(
    redis_env: dict[str, str], tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SmtpServer(tls=tls_files, auth=True).start()
    try:
        use_smtp(monkeypatch, server, SMTP_PASSWORD=PASSWORD + "-wrong")
        with pytest.raises(PermanentJobError) as info:
            send_email(_payload())
        assert "SMTP authentication failed" in str(info.value)
        assert "SMTP_USERNAME/SMTP_PASSWORD" in str(info.value)
        assert "535" in str(info.value)
        assert server.received == []
        assert connections.primary().keys(keys.email_sending_claim("*")) == [], "no claim left"
    finally:
        server.stop()


def test_untrusted_certificate_is_permanent(
    redis_env: dict[str, str], tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    server = SmtpServer(tls=tls_files).start()
    try:
        empty_bundle = tmp_path / "empty.pem"
        empty_bundle.write_text("")
        use_smtp(monkeypatch, server, SSL_CERT_FILE=str(empty_bundle))
        with pytest.raises(PermanentJobError) as info:
            send_email(_payload())
        assert "is not trusted" in str(info.value)
    finally:
        server.stop()


def test_starttls_required_by_server_but_not_configured_is_refused(
    redis_env: dict[str, str], tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SmtpServer(tls=tls_files).start()
    try:
        use_smtp(monkeypatch, server, SMTP_STARTTLS="false")
        with pytest.raises(PermanentJobError) as info:
            send_email(_payload())
        assert "530" in str(info.value)
    finally:
        server.stop()


def test_pool_delivers_over_several_connections(email_env: SmtpServer) -> None:
    import asyncio

    runtime = process_runtime()
    pool: SmtpPool = runtime.pool
    settings = SmtpSettings.from_settings()

    async def many() -> list[Verdict]:
        raw = b"Subject: x\r\n\r\nhello\r\n"
        results = await asyncio.gather(
            *(pool.deliver(settings.sender.address, (f"u{i}@example.com",), raw) for i in range(6))
        )
        return [r.verdict for r in results]

    assert runtime.run(many()) == [Verdict.ACCEPTED] * 6
    assert email_env.connections == 6 and pool.idle == 6
