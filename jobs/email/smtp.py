"""The one adapter that talks SMTP (aiosmtplib): settings, connections, error classification.

A worker process keeps its SMTP connections open across jobs (email jobs run inside the
worker process, not in a forked horse) on one event loop per process
(`jobs.email.runtime.SmtpRuntime`).
A connection the server dropped while idle is noticed at the next MAIL command and
replaced before anything was sent, so that retry cannot duplicate a message.

Every outcome is classified:

| what happened                                         | verdict / error                 |
|-------------------------------------------------------|---------------------------------|
| 250 after DATA                                        | ACCEPTED (refused recipients listed) |
| 4xx reply; connection refused, lost or timed out      | DEFERRED: retried with backoff  |
| 5xx reply; a message the server cannot take           | REFUSED: failed at once         |
| refused AUTH, no TLS/AUTH support, untrusted certificate, 5xx greeting | `SmtpConfigError` |
| 5xx to EHLO/HELO, or a 5xx to MAIL/RCPT that names HELO | `SmtpConfigError` naming SMTP_HELO_NAME |

`SmtpConfigError` means no message can be sent until the settings are fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from cache.settings import Settings, get_settings
from jobs.email.validation import Mailbox, parse_sender
from jobs.errors import JobError

SERVICE_CLOSING = 421  # RFC 5321: the server is closing the connection (e.g. idle timeout)
DEFAULT_MAX_IDLE_CONNECTIONS = 8  # kept open per process between jobs
DEFAULT_MAX_CONNECTIONS = 32  # busy at once per process (SMTP_MAX_CONNECTIONS)
DEFAULT_SENDER = Mailbox("KRYONIX", "no-reply@kryonix.local")


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # permanent: no retry can help
    DEFERRED = "deferred"  # transient: retry later


@dataclass(frozen=True)
class Delivery:
    """The outcome of one SMTP transaction; `refused` maps recipient -> the server's reply."""

    verdict: Verdict
    reason: str
    refused: Mapping[str, str] = field(default_factory=dict)
    uncertain: bool = False  # the connection died during DATA: the server may have the message


class SmtpConfigError(JobError):
    """The SMTP settings cannot work (credentials, TLS, AUTH support): permanent for every message."""


@dataclass(frozen=True, kw_only=True)
class SmtpSettings:
    """Where and how to send; built from SMTP_* and MAIL_FROM (see `.env.example`)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False
    start_tls: bool = False
    timeout_s: float = 10.0
    sender: Mailbox = DEFAULT_SENDER
    return_path: str = DEFAULT_SENDER.address  # the envelope sender (MAIL FROM): bounces go here
    local_hostname: str = "localhost"  # the EHLO name (SMTP_HELO_NAME)
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SmtpSettings:
        """Raises ConfigError when MAIL_FROM is not an address."""
        settings = settings or get_settings()
        sender = parse_sender(settings.mail_from)
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            use_tls=settings.smtp_tls,
            start_tls=settings.smtp_starttls,
            timeout_s=settings.smtp_timeout_s,
            sender=sender,
            return_path=settings.mail_return_path or sender.address,
            local_hostname=settings.smtp_helo_name or _fqdn(),
            max_connections=settings.smtp_max_connections,
        )


@functools.cache  # one lookup per process: getfqdn may wait on reverse DNS
def _fqdn() -> str:
    """This host's fully qualified name, the default EHLO name (SMTP_HELO_NAME unset)."""
    return socket.getfqdn()


def helo_refused(code: int, message: str) -> bool:
    """A 5xx that refuses our EHLO/HELO name, at any command. Pure.

    Postfix delays its "Helo command rejected: need fully-qualified hostname" to RCPT
    (smtpd_delay_reject), where it would otherwise read as refused recipients.
    """
    return 500 <= code < 600 and "helo" in message.lower()


def _refuses_helo(exc: SMTPResponseException) -> bool:
    return (isinstance(exc, SMTPHeloError) and 500 <= exc.code < 600) or helo_refused(exc.code, exc.message)


def helo_config_error(settings: SmtpSettings, code: int, message: str) -> SmtpConfigError:
    return SmtpConfigError(
        f"SMTP server {settings.host}:{settings.port} refused the EHLO name {settings.local_hostname!r} "
        f"(set SMTP_HELO_NAME to this host's fully qualified name): {reply(code, message)}"
    )


def reply(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}"


def classify_reply(code: int, message: str, context: str = "") -> Delivery:
    """4xx is DEFERRED, anything else (5xx, nonsense) REFUSED. Pure."""
    prefix = f"{context}: " if context else ""
    verdict = Verdict.DEFERRED if 400 <= code < 500 else Verdict.REFUSED
    return Delivery(verdict, prefix + reply(code, message))


def classify_connect_error(exc: BaseException, settings: SmtpSettings) -> Delivery | SmtpConfigError:
    """An error while connecting: a DEFERRED delivery, or the configuration error it reveals. Pure."""
    where = f"SMTP server {settings.host}:{settings.port}"
    if isinstance(exc, SMTPResponseException) and _refuses_helo(exc):
        return helo_config_error(settings, exc.code, exc.message)
    if isinstance(exc, SMTPAuthenticationError) and not 400 <= exc.code < 500:
        return SmtpConfigError(
            f"SMTP authentication failed at {where} (check SMTP_USERNAME/SMTP_PASSWORD): "
            f"{reply(exc.code, exc.message)}"
        )
    if isinstance(exc, SMTPResponseException) and not 400 <= exc.code < 500:
        return SmtpConfigError(f"{where} refused the session: {reply(exc.code, exc.message)}")
    if isinstance(exc, SMTPResponseException):
        return Delivery(Verdict.DEFERRED, f"{where} is unavailable: {reply(exc.code, exc.message)}")
    cause = exc if isinstance(exc, ssl.SSLCertVerificationError) else exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return SmtpConfigError(
            f"TLS certificate of {where} is not trusted ({cause.verify_message}); "
            "install its CA (e.g. SSL_CERT_FILE) or fix SMTP_HOST"
        )
    if isinstance(exc, SMTPNotSupported) or (
        type(exc) is SMTPException and ("not supported" in exc.message or "authentication" in exc.message)
    ):
        return SmtpConfigError(f"{where}: {exc} (check SMTP_TLS/SMTP_STARTTLS/SMTP_USERNAME)")
    return Delivery(Verdict.DEFERRED, f"cannot reach {where}: {type(exc).__name__}: {exc}")


class SmtpConnection:
    """One SMTP session, reconnected on demand. Use from one coroutine at a time."""

    def __init__(self, settings: SmtpSettings, tls_context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self._client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            use_tls=settings.use_tls,
            start_tls=settings.start_tls,
            tls_context=tls_context,
            timeout=settings.timeout_s,
            local_hostname=settings.local_hostname,
        )
        self.in_transaction = False

    @property
    def connected(self) -> bool:
        return self._client.is_connected

    async def _connect(self) -> None:
        try:
            await self._client.connect()
        except (TimeoutError, SMTPException, OSError) as exc:
            self.close()
            outcome = classify_connect_error(exc, self.settings)
            if isinstance(outcome, SmtpConfigError):
                raise outcome from exc
            raise _Deferred(outcome) from exc

    async def _mail(self, envelope_from: str) -> None:
        reused = self.connected
        if not reused:
            await self._connect()
        try:
            await self._client.mail(envelope_from)
        except (SMTPServerDisconnected, SMTPSenderRefused) as exc:
            closing = isinstance(exc, SMTPServerDisconnected) or exc.code == SERVICE_CLOSING
            if not (reused and closing):
                raise
            # The server dropped the idle connection; nothing of this message was sent yet.
            self.close()
            await self._connect()
            await self._client.mail(envelope_from)

    async def deliver(self, envelope_from: str, recipients: tuple[str, ...], raw: bytes) -> Delivery:
        """Send one message; never raises for the server's answers, only `SmtpConfigError`.

        A connection lost during DATA is DEFERRED although the server may have taken the
        message: that is the one case where a retry can duplicate (see docs/email.md).
        """
        self.in_transaction = True
        data_started = False
        try:
            await self._mail(envelope_from)
            refused: dict[str, str] = {}
            for recipient in recipients:
                try:
                    await self._client.rcpt(recipient)
                except SMTPRecipientRefused as exc:
                    if helo_refused(exc.code, exc.message):  # every other recipient would get the same
                        await self._reset()
                        raise helo_config_error(self.settings, exc.code, exc.message) from None
                    refused[recipient] = reply(exc.code, exc.message)
            if len(refused) == len(recipients):
                await self._reset()
                deferred = any(text.startswith("4") for text in refused.values())
                verdict = Verdict.DEFERRED if deferred else Verdict.REFUSED
                summary = "; ".join(f"{r}: {text}" for r, text in refused.items())
                return Delivery(verdict, f"every recipient was refused ({summary})", refused)
            data_started = True
            response = await self._client.data(raw)
            return Delivery(Verdict.ACCEPTED, reply(response.code, response.message), refused)
        except _Deferred as deferred:
            return deferred.delivery
        except SMTPResponseException as exc:
            if _refuses_helo(exc):
                self.close()
                raise helo_config_error(self.settings, exc.code, exc.message) from None
            if exc.code == SERVICE_CLOSING:
                self.close()
            else:
                await self._reset()
            return classify_reply(exc.code, exc.message, f"SMTP {_stage(exc)}")
        except (TimeoutError, SMTPException, OSError) as exc:
            self.close()
            reason = f"SMTP connection lost: {type(exc).__name__}: {exc}"
            return Delivery(Verdict.DEFERRED, reason, uncertain=data_started)
        finally:
            self.in_transaction = False

    async def _reset(self) -> None:
        """RSET after a refused transaction so the session can carry the next message."""
        try:
            await self._client.rset()
        except (TimeoutError, SMTPException, OSError):
            self.close()

    def close(self) -> None:
        self._client.close()

    async def quit(self) -> None:
        if self.connected:
            with contextlib.suppress(TimeoutError, SMTPException, OSError):
                await self._client.quit()
        self.close()


class _Deferred(Exception):
    def __init__(self, delivery: Delivery) -> None:
        super().__init__(delivery.reason)
        self.delivery = delivery


def _stage(exc: SMTPResponseException) -> str:
    if isinstance(exc, SMTPSenderRefused):
        return "MAIL FROM refused"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return "DATA refused"
    return "reply"


class SmtpPool:
    """Open connections kept between jobs; `acquire` never connects (that happens on send)."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        max_idle: int = DEFAULT_MAX_IDLE_CONNECTIONS,
        max_open: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.settings = settings
        self.max_idle = max_idle
        self.max_open = max_open
        self._idle: list[SmtpConnection] = []
        self._open_slots: asyncio.Semaphore | None = None  # made on the loop that first uses it
        self._tls_context: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext | None:
        if not (self.settings.use_tls or self.settings.start_tls):
            return None
        if self._tls_context is None:
            # Built once per process: loading the CA bundle costs milliseconds per connection.
            self._tls_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        return self._tls_context

    def acquire(self) -> SmtpConnection:
        if self._idle:
            return self._idle.pop()
        return SmtpConnection(self.settings, self._context())

    def release(self, connection: SmtpConnection) -> None:
        """Keep a healthy connection; one interrupted mid-transaction is closed (its state is unknown)."""
        if connection.in_transaction or len(self._idle) >= self.max_idle:
            connection.close()
        else:
            self._idle.append(connection)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def deliver(self, envelope_from: str, recipients: tuple[str, ...], raw: bytes) -> Delivery:
        """One transaction on a pooled connection; waits while `max_open` are busy."""
        if self._open_slots is None:
            self._open_slots = asyncio.Semaphore(self.max_open)
        async with self._open_slots:
            connection = self.acquire()
            try:
                return await connection.deliver(envelope_from, recipients, raw)
            finally:
                self.release(connection)

    async def close(self, timeout_s: float = 1.0) -> None:
        """QUIT politely, but never hold up a worker's exit for a server that does not answer."""
        idle, self._idle = self._idle, []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.quit() for c in idle), return_exceptions=True), timeout_s
            )
        for connection in idle:
            connection.close()
