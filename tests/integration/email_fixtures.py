"""A real SMTP server (aiosmtpd) on loopback whose answers a test can script.

`SmtpServer` accepts by default and can instead answer DATA with a queue of replies
(451 twice, then accept) or always (550), refuse given recipients (always, or only the
first time), require STARTTLS with a certificate made here by the `openssl` CLI, and
require AUTH with fixed credentials, and refuse an EHLO name that is not fully qualified
(at EHLO or, as Postfix does by default, at RCPT). It records every accepted message.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from cache import connections
from cache.settings import reset_settings
from jobs.email.runtime import reset_process_runtime
from workers.dev.servers import free_port

USERNAME = "mailer"
PASSWORD = "s3cret-pass"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


class ScriptedHandler:
    """aiosmtpd handler: scripted refusals, otherwise accept and record."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.data_replies: deque[str] = deque()  # one per DATA, before accepting again
        self.data_reply: str | None = None  # every DATA, e.g. "550 5.7.1 rejected"
        self.rcpt_replies: dict[str, str] = {}  # recipient -> reply, every time
        self.rcpt_replies_once: dict[str, str] = {}  # recipient -> reply, the first time only
        self.data_commands = 0
        self.drop_after_data = 0  # this many DATA: keep the message, then hang up without a reply
        self.data_delay_s = 0.0  # answer each DATA this late, as a remote relay does
        self.hold_data = False  # while True, no DATA is answered: transactions stay in flight
        self.in_data = 0  # DATA commands being answered right now
        self.most_in_data = 0  # the most seen at once: how many transactions a sender overlaps
        # Refuse an EHLO/HELO name that is not fully qualified, as Postfix's
        # reject_non_fqdn_helo_hostname: "helo" at EHLO/HELO itself, "rcpt" at each RCPT
        # (Postfix's default smtpd_delay_reject). None accepts any name.
        self.refuse_non_fqdn_helo: str | None = None
        self.helo_names: list[str] = []  # every EHLO/HELO name received

    def _helo_refusal(self, hostname: str) -> str | None:
        if "." in hostname.strip("[]"):
            return None
        return f"504 5.5.2 <{hostname}>: Helo command rejected: need fully-qualified hostname"

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.helo_names.append(hostname)
        refusal = self._helo_refusal(hostname) if self.refuse_non_fqdn_helo == "helo" else None
        if refusal is not None:
            return [refusal]
        session.host_name = hostname  # aiosmtpd leaves this to a 5-argument EHLO hook
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        with self.lock:
            self.helo_names.append(hostname)
        refusal = self._helo_refusal(hostname) if self.refuse_non_fqdn_helo == "helo" else None
        if refusal is not None:
            return refusal
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            answer = self.rcpt_replies.get(address) or self.rcpt_replies_once.pop(address, None)
        if answer is None and self.refuse_non_fqdn_helo == "rcpt":
            answer = self._helo_refusal(session.host_name)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.in_data += 1
            self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            if self.data_delay_s:
                await asyncio.sleep(self.data_delay_s)
            while self.hold_data:
                await asyncio.sleep(0.05)
            return self._answer_data(server, envelope)
        finally:
            with self.lock:
                self.in_data -= 1

    def _answer_data(self, server: Any, envelope: Any) -> str:
        with self.lock:
            self.data_commands += 1
            answer = self.data_replies.popleft() if self.data_replies else self.data_reply
            if answer:
                return answer
            self.received.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(envelope.original_content))
            )
            if self.drop_after_data > 0:
                # The message is taken but the client never hears so: the crash window.
                self.drop_after_data -= 1
                server.transport.close()
                return "421 4.3.0 gone"
        return "250 2.0.0 OK queued"


class _Controller(Controller):  # type: ignore[misc]
    def __init__(self, owner: SmtpServer, **kwargs: Any) -> None:
        super().__init__(owner.handler, **kwargs)
        self.owner = owner

    def factory(self) -> SMTP:
        server = super().factory()
        self.owner._sessions.append(server)
        return server


class SmtpServer:
    """One aiosmtpd server on 127.0.0.1:`port`; can be stopped and started again on the same port."""

    def __init__(self, port: int | None = None, *, tls: TlsFiles | None = None, auth: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.auth = auth
        self.handler = ScriptedHandler()
        self._sessions: list[SMTP] = []
        self._controller: _Controller | None = None

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == USERNAME
            and data.password.decode() == PASSWORD
        )
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {"hostname": self.host, "port": self.port, "server_hostname": "localhost"}
        if self.tls is not None:
            kwargs.update(tls_context=self.tls.server_context(), require_starttls=True)
        if self.auth:
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=True)
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        self._sessions.clear()  # the controller's own readiness probe is not a client
        return self

    def stop(self) -> None:
        """Stop listening, close every session (aiosmtpd's stop leaves them open), then the loop.

        The listener goes first: a client that connected between closing the sessions and
        stopping the loop would leave an unclosed transport behind.
        """
        controller = self._controller
        if controller is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(controller), controller.loop).result(10)
            controller.stop()
            self._controller = None

    async def _shutdown(self, controller: _Controller) -> None:
        if controller.server is not None:
            controller.server.close()  # no new connection from here on
        await self._close_sessions()

    async def _close_sessions(self) -> None:
        # Rounds until every session's connection_lost ran (aiosmtpd then drops
        # `transport`), at least 5 and up to 5 s: a session accepted just before the
        # listener closed gets its transport a loop turn later, and a closed transport
        # drains its unsent replies before its socket closes. A socket still open when
        # the loop stops is never closed (ResourceWarning).
        for round_ in range(500):
            open_sessions = 0
            for session in self._sessions:
                # After STARTTLS the session's transport is the TLS layer; close the socket under it too.
                for transport in (session.transport, getattr(session, "_original_transport", None)):
                    if transport is not None and not transport.is_closing():
                        transport.close()
                open_sessions += session.transport is not None
            if round_ >= 5 and not open_sessions:
                return
            await asyncio.sleep(0.01)  # let connection_made / connection_lost callbacks run

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def connections(self) -> int:
        """Client connections accepted since the last start."""
        return len(self._sessions)

    def drop_connections(self) -> None:
        """Close every open session from the server side, as an idle timeout would."""
        assert self._controller is not None
        loop = self._controller.loop
        for session in list(self._sessions):
            if session.transport is not None:
                loop.call_soon_threadsafe(session.transport.close)

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]

    def env(self) -> dict[str, str]:
        """Environment for a worker process that sends through this server."""
        env = {"SMTP_HOST": self.host, "SMTP_PORT": str(self.port), "SMTP_TIMEOUT": "5"}
        if self.tls is not None:
            env.update(SMTP_STARTTLS="true", SSL_CERT_FILE=str(self.tls.cert))
        if self.auth:
            env.update(SMTP_USERNAME=USERNAME, SMTP_PASSWORD=PASSWORD)
        return env


def make_tls_files(directory: Path) -> TlsFiles:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "the STARTTLS tests need the openssl CLI (or the cryptography package) to make a certificate"
        )
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return TlsFiles(cert, key)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def use_smtp(monkeypatch: pytest.MonkeyPatch, server: SmtpServer, **overrides: str) -> None:
    """Point this process's settings at `server` and forget any open SMTP connection."""
    for name in ("SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_TLS", "SMTP_STARTTLS", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**server.env(), **overrides}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    reset_process_runtime()


@pytest.fixture
def email_env(
    redis_env: dict[str, str], smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SmtpServer]:
    """Redis on the test servers and SMTP on `smtp_server`, for in-process job calls."""
    monkeypatch.setenv("MAIL_FROM", "KRYONIX <no-reply@kryonix.local>")
    use_smtp(monkeypatch, smtp_server)
    connections.reset_clients()
    yield smtp_server
    reset_process_runtime()
