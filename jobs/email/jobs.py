"""The RQ job functions of the `email` queue: thin glue of payload check + render + SMTP + markers.

Each job first runs the enqueue API's own payload check (`jobs.email.payloads`): a job
written into Redis by hand gets no further than that. `send_email` then checks the
marker, sends the message the check rendered over the process's open SMTP connection
and writes the marker once the server accepted; `send_bulk_chunk` does the same per
recipient, as many at once as the process's SMTP pool allows. Failures are classified
for the job core: `PermanentJobError` (5xx, invalid message, configuration) fails at
once, `TransientJobError` (4xx, connection loss, timeout) is retried with backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from rq import get_current_job

from cache.connections import primary
from cache.errors import ConfigError, RedisUnavailable
from cache.settings import Settings, get_settings
from jobs.email import events, idempotency
from jobs.email.bulk import ChunkReport, Item, deliver_all, plan_lanes
from jobs.email.payloads import BulkChunk, ValidEmail, validate_bulk_chunk, validate_email_payload
from jobs.email.render import RenderedEmail, render_email
from jobs.email.runtime import process_runtime
from jobs.email.smtp import Delivery, SmtpConfigError, SmtpSettings, Verdict
from jobs.email.validation import EmailRequest, EmailValidationError
from jobs.errors import PermanentJobError, TransientJobError, refuse_extra_arguments

log = logging.getLogger("kryonix.email")


def send_email(email: dict[str, Any], *extra: Any, **unknown: Any) -> dict[str, Any]:
    """Send one transactional email, unless its idempotency marker says it was accepted already.

    Returns:
        `{"status": "sent" | "already_sent", "message_id", "reply", "refused", "accepted_at",
        "possible_duplicate", "interrupted_attempt"}`; `possible_duplicate` says an earlier
        attempt (`interrupted_attempt`: job id, pid, time) died during its SMTP transaction,
        so the server may hold this message twice, with the same Message-ID.

    Raises:
        PermanentJobError: the payload fails the enqueue API's check (e.g. a job written into
            Redis by hand), refused (5xx), or SMTP configuration; no retry, nothing sent.
        TransientJobError: deferred (4xx, connection, timeout); retried with backoff.
    """
    refuse_extra_arguments("send_email", extra, unknown)
    settings = _smtp_settings()
    valid = _valid_email(email, settings)
    request, message = valid.request, valid.message
    key = request.idempotency_key
    previous, earlier = idempotency.begin_send(idempotency_key=key, attempt=_attempt())
    if previous is not None:
        log.info("email %s was accepted before; not sending again", key)
        return {"status": "already_sent", **previous}
    if earlier is not None:
        log.warning(
            "email %s: an earlier attempt (%s) was cut off during its SMTP transaction; sending "
            "again with the same Message-ID, a possible duplicate",
            key,
            earlier,
        )
    delivery = _deliver(settings, request, message, earlier)
    record = {
        "message_id": message.message_id,
        "reply": delivery.reason,
        "refused": dict(delivery.refused),
        "accepted_at": time.time(),
        "possible_duplicate": earlier is not None,
        "interrupted_attempt": earlier,
    }
    _mark(key, record)
    if request.requested_by is not None:
        events.publish(
            request.requested_by, events.SENT, _event(request, message=message, refused=delivery.refused)
        )
    return {"status": "sent", **record}


def _deliver(
    settings: SmtpSettings, request: EmailRequest, message: RenderedEmail, earlier: dict[str, Any] | None
) -> Delivery:
    """One SMTP transaction for `message`; returns only once the server accepted it.

    The claim goes back whenever the server's answer (or no DATA at all) proves it kept
    no copy, so the next attempt is not flagged as a possible duplicate.

    Raises:
        PermanentJobError: refused (5xx) or SMTP configuration.
        TransientJobError: deferred (4xx, connection, timeout).
    """
    key = request.idempotency_key
    try:
        runtime = process_runtime(settings)
        sending = runtime.pool.deliver(message.envelope_from, message.recipients, message.raw)
        try:
            delivery = runtime.run(sending)
        except SmtpConfigError as exc:
            raise _fail(request, str(exc)) from None
    except PermanentJobError:
        _release(key, earlier)  # nothing reached DATA: this attempt left no copy
        raise
    if delivery.verdict is not Verdict.ACCEPTED and not delivery.uncertain:
        _release(key, earlier)  # the server's answer proves it kept no copy
    if delivery.verdict is Verdict.REFUSED:
        raise _fail(request, delivery.reason)
    if delivery.verdict is Verdict.DEFERRED:
        if _last_attempt():
            events.publish(request.requested_by, events.FAILED, _event(request, reason=delivery.reason))
        raise TransientJobError(delivery.reason)
    return delivery


def send_bulk_chunk(chunk: dict[str, Any], *extra: Any, **unknown: Any) -> dict[str, Any]:
    """Send one chunk of a bulk email; recipients with a final outcome are skipped.

    Returns:
        `{"sent", "refused", "skipped"}` counts for this run.

    Raises:
        TransientJobError: some recipients were deferred; the retry tries only those.
        PermanentJobError: the payload fails the enqueue API's check (nothing is sent to anyone
            in the chunk), or the SMTP configuration cannot work.
    """
    refuse_extra_arguments("send_bulk_chunk", extra, unknown)
    settings = _smtp_settings()
    checked = _valid_chunk(chunk, settings)
    bulk_id, items = checked.bulk_id, checked.items
    client = primary()
    previous = idempotency.bulk_outcomes(client, bulk_id=bulk_id, recipients=[item.address for item in items])
    todo = [item for item in items if not idempotency.is_final(previous[item.address])]

    def render(item: Item) -> RenderedEmail:
        return render_email(
            checked.request_for(item),
            sender=settings.sender,
            now=dt.datetime.now(dt.UTC),
            return_path=settings.return_path,
        )

    def record(outcomes: Mapping[str, str]) -> None:
        idempotency.record_outcomes(client, bulk_id=bulk_id, outcomes=outcomes)

    runtime = process_runtime(settings)
    lanes = plan_lanes(
        len(todo), cap=checked.connections, max_connections=get_settings().smtp_max_connections
    )
    report = (
        runtime.run(deliver_all(runtime.pool, todo, render, record, lanes=lanes)) if todo else ChunkReport()
    )
    summary = {"sent": report.sent, "refused": len(report.refused), "skipped": len(items) - len(todo)}
    if report.aborted is not None or (report.deferred and _last_attempt()):
        failed = {address: f"{idempotency.FAILED}:{reason}" for address, reason in report.deferred.items()}
        idempotency.record_outcomes(client, bulk_id=bulk_id, outcomes=failed)
    events.publish(
        checked.requested_by,
        events.BULK_PROGRESS,
        {"bulk_id": bulk_id, **summary, "deferred": len(report.deferred)},
    )
    if report.aborted is not None:
        raise PermanentJobError(f"bulk {bulk_id}: {report.aborted} ({summary})")
    if report.deferred:
        first, reason = next(iter(report.deferred.items()))
        raise TransientJobError(
            f"bulk {bulk_id}: {len(report.deferred)} of {len(items)} recipient(s) deferred, to be retried "
            f"without resending the others ({summary}); first: {first}: {reason}"
        )
    return summary


def _valid_email(payload: object, settings: SmtpSettings) -> ValidEmail:
    """The enqueue API's own check, again: the job may have been written into Redis by hand."""
    try:
        return validate_email_payload(
            payload, sender=settings.sender, now=dt.datetime.now(dt.UTC), return_path=settings.return_path
        )
    except EmailValidationError as exc:
        raise PermanentJobError(f"invalid email job: {exc}") from None
    except ConfigError as exc:  # e.g. the templates directory is missing: no retry can fix it
        raise PermanentJobError(f"configuration error: {exc}") from None


def _valid_chunk(payload: object, settings: SmtpSettings) -> BulkChunk:
    try:
        return validate_bulk_chunk(payload, sender=settings.sender, now=dt.datetime.now(dt.UTC))
    except EmailValidationError as exc:
        raise PermanentJobError(f"invalid bulk chunk job: {exc}") from None
    except ConfigError as exc:
        raise PermanentJobError(f"configuration error: {exc}") from None


_smtp: tuple[Settings, SmtpSettings] | None = None


def _smtp_settings() -> SmtpSettings:
    """SMTP settings of the process's settings, parsed once per settings object."""
    global _smtp
    settings = get_settings()
    if _smtp is None or _smtp[0] is not settings:
        try:
            _smtp = (settings, SmtpSettings.from_settings(settings))
        except ConfigError as exc:
            raise PermanentJobError(str(exc)) from None
    return _smtp[1]


def _fail(request: EmailRequest, reason: str) -> PermanentJobError:
    events.publish(request.requested_by, events.FAILED, _event(request, reason=reason))
    return PermanentJobError(reason)


def _mark(key: str, record: dict[str, Any]) -> None:
    try:
        idempotency.mark_sent(idempotency_key=key, record=record)
    except RedisUnavailable as exc:
        # The server has the message: failing the job now would only make a retry send it
        # again. Log loudly and report success; this is the documented residual window.
        log.error("email %s accepted but its marker was not written (%s); a re-run could resend it", key, exc)


def _attempt() -> dict[str, Any]:
    """Who holds the SMTP transaction: logged by a later attempt that finds it left behind.

    The nonce lets `begin_send` recognise its own claim when the client retried the
    pipeline after a lost reply.
    """
    job = get_current_job()
    return {
        "job_id": job.id if job is not None else None,
        "pid": os.getpid(),
        "at": time.time(),
        "nonce": secrets.token_hex(8),
    }


def _release(key: str, earlier: dict[str, Any] | None) -> None:
    """Put the claim back; a Redis error here must not change how the job ends."""
    try:
        idempotency.release_claim(idempotency_key=key, earlier=earlier)
    except RedisUnavailable as exc:
        log.warning("email %s: claim not released (%s); a retry may be flagged needlessly", key, exc)


def _last_attempt() -> bool:
    job = get_current_job()
    return job is None or not job.retries_left


def _event(request: EmailRequest, **data: Any) -> dict[str, Any]:
    job = get_current_job()
    message = data.pop("message", None)
    event: dict[str, Any] = {
        "job_id": job.id if job is not None else None,
        "template": request.template,
        "to": [mailbox.address for mailbox in request.to],
    }
    if message is not None:
        event["message_id"] = message.message_id
    if data.get("refused") is not None:
        event["refused"] = dict(data.pop("refused"))
    event.update(data)
    return event
