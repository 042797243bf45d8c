"""Pure parts of SMTP delivery and bulk sending: classification, chunking, outcomes, lanes (no network)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPNotSupported,
    SMTPServerDisconnected,
)

from jobs.email import idempotency
from jobs.email.bulk import Item, chunked, deliver_all, plan_recipients
from jobs.email.render import RenderedEmail
from jobs.email.smtp import (
    Delivery,
    SmtpConfigError,
    SmtpSettings,
    Verdict,
    classify_connect_error,
    classify_reply,
)
from jobs.email.templates import default_library
from jobs.email.validation import EmailValidationError, Mailbox

pytestmark = pytest.mark.email

SETTINGS = SmtpSettings(host="smtp.example.com", port=587)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [(421, Verdict.DEFERRED), (450, Verdict.DEFERRED), (451, Verdict.DEFERRED), (452, Verdict.DEFERRED),
     (500, Verdict.REFUSED), (550, Verdict.REFUSED), (552, Verdict.REFUSED), (554, Verdict.REFUSED),
     (250, Verdict.REFUSED), (-1, Verdict.REFUSED)],
)  # fmt: skip
def test_reply_codes(code: int, verdict: Verdict) -> None:
    delivery = classify_reply(code, "some  text\n more", "SMTP DATA refused")
    assert delivery == Delivery(verdict, f"SMTP DATA refused: {code} some text more")


def _cert_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    return error


def _wrapped_cert_error() -> SMTPConnectError:
    error = SMTPConnectError("Error connecting")
    error.__cause__ = _cert_error()
    return error


@pytest.mark.parametrize(
    ("error", "config", "expected"),
    [
        (
            SMTPAuthenticationError(535, "5.7.8 bad credentials"),
            True,
            "check SMTP_USERNAME/SMTP_PASSWORD): 535",
        ),
        (SMTPAuthenticationError(454, "4.7.0 temporary failure"), False, "unavailable: 454"),
        (SMTPConnectResponseError(554, "no service"), True, "refused the session: 554 no service"),
        (SMTPConnectResponseError(421, "busy"), False, "unavailable: 421 busy"),
        (_cert_error(), True, "not trusted (self-signed certificate)"),
        (_wrapped_cert_error(), True, "install its CA"),
        (SMTPNotSupported("STARTTLS"), True, "check SMTP_TLS/SMTP_STARTTLS"),
        (SMTPException("SMTP STARTTLS extension not supported by server."), True, "not supported"),
        (SMTPConnectError("refused"), False, "cannot reach SMTP server smtp.example.com:587"),
        (ConnectionRefusedError(111, "refused"), False, "ConnectionRefusedError"),
        (TimeoutError("slow"), False, "cannot reach"),
        (SMTPServerDisconnected("gone"), False, "cannot reach"),
    ],
)
def test_connect_errors(error: BaseException, config: bool, expected: str) -> None:
    outcome = classify_connect_error(error, SETTINGS)
    if config:
        assert isinstance(outcome, SmtpConfigError)
        assert expected in str(outcome)
    else:
        assert isinstance(outcome, Delivery) and outcome.verdict is Verdict.DEFERRED
        assert expected in outcome.reason


def test_settings_never_show_the_password() -> None:
    assert "hunter2" not in repr(SmtpSettings(host="h", port=1, username="u", password="hunter2"))


@pytest.mark.parametrize(
    ("n", "size", "sizes"),
    [(0, 3, []), (1, 3, [1]), (3, 3, [3]), (7, 3, [3, 3, 1]), (10_000, 250, [250] * 40)],
)
def test_chunked(n: int, size: int, sizes: list[int]) -> None:
    chunks = chunked(list(range(n)), size)
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == list(range(n))


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        chunked([1], 0)


@pytest.mark.parametrize(
    ("stored", "kind", "final"),
    [
        (None, None, False),
        ("sent", "sent", True),
        (b"sent", "sent", True),
        ("refused:550 5.1.1 no: such user", "refused", True),
        ("deferred:451 later", "deferred", False),
        ("failed:not attempted", "failed", False),
    ],
)
def test_outcomes(stored: str | bytes | None, kind: str | None, final: bool) -> None:
    assert idempotency.outcome(stored)[0] == kind
    assert idempotency.is_final(stored) is final


def test_outcome_keeps_colons_in_the_reason() -> None:
    assert idempotency.outcome("refused:550 5.1.1 no: such user") == ("refused", "550 5.1.1 no: such user")


def test_plan_recipients_merges_dedupes_and_keeps_locale() -> None:
    items, duplicates = plan_recipients(
        "welcome",
        [
            "a@example.com",
            {"to": "B <b@example.com>", "context": {"name": "Bee"}, "locale": "pt_BR"},
            "A@example.com",
        ],
        shared={"name": "friend", "login_url": "https://x"},
        locale="en",
        library=default_library(),
    )
    assert duplicates == 1
    assert items == [
        {"to": ["", "a@example.com"]},
        {"to": ["B", "b@example.com"], "context": {"name": "Bee"}, "locale": "pt_BR"},
    ]


# --- deliver_all with a scripted pool: lanes, outcomes, aborts --------------------------------


class FakeConnection:
    def __init__(self, script: dict[str, Any], log: list[str]) -> None:
        self.script = script
        self.log = log
        self.connected = True
        self.in_transaction = False

    async def deliver(self, envelope_from: str, recipients: tuple[str, ...], raw: bytes) -> Delivery:
        await asyncio.sleep(0)  # let the other lanes interleave
        [address] = recipients
        self.log.append(address)
        answer = self.script.get(address, Delivery(Verdict.ACCEPTED, "250 OK"))
        if isinstance(answer, Exception):
            raise answer
        if answer.verdict is Verdict.DEFERRED:
            self.connected = False
        assert isinstance(answer, Delivery)
        return answer


class FakePool:
    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.log: list[str] = []
        self.acquired = 0
        self.released = 0

    def acquire(self) -> FakeConnection:
        self.acquired += 1
        return FakeConnection(self.script, self.log)

    def release(self, connection: FakeConnection) -> None:
        self.released += 1


def _items(n: int) -> list[Item]:
    return [Item(Mailbox("", f"u{i}@example.com"), {}, "en") for i in range(n)]


def _render(item: Item) -> RenderedEmail:
    if item.address == "bad@example.com":
        raise EmailValidationError("missing variable")
    return RenderedEmail(
        message_id="<x@y>",
        subject="s",
        locale="en",
        envelope_from="f@example.com",
        recipients=(item.address,),
        raw=b"",
    )


def _run(pool: FakePool, items: Sequence[Item], connections: int = 4) -> tuple[Any, dict[str, str]]:
    recorded: dict[str, str] = {}
    report = asyncio.run(
        deliver_all(pool, items, _render, recorded.update, connections=connections)  # type: ignore[arg-type]
    )
    return report, recorded


def test_every_item_is_sent_once_over_the_lanes() -> None:
    pool = FakePool({})
    report, recorded = _run(pool, _items(50))
    assert sorted(pool.log) == sorted(i.address for i in _items(50))
    assert report.sent == 50 and recorded == {i.address: "sent" for i in _items(50)}
    assert pool.acquired == pool.released == 4


def test_refused_deferred_and_invalid_are_recorded_with_reasons() -> None:
    pool = FakePool(
        {
            "u1@example.com": Delivery(Verdict.REFUSED, "all refused", {"u1@example.com": "550 no user"}),
            "u2@example.com": Delivery(Verdict.DEFERRED, "451 later"),
        }
    )
    items = [*_items(4), Item(Mailbox("", "bad@example.com"), {}, "en")]
    report, recorded = _run(pool, items, connections=1)
    assert report.sent == 2
    assert report.refused == {
        "u1@example.com": "550 no user",
        "bad@example.com": "invalid message: missing variable",
    }
    assert report.deferred == {"u2@example.com": "451 later"}
    assert recorded["u1@example.com"] == "refused:550 no user"
    assert recorded["u2@example.com"] == "deferred:451 later"


def test_config_error_stops_every_lane_and_leaves_the_rest_deferred() -> None:
    pool = FakePool({"u3@example.com": SmtpConfigError("SMTP authentication failed")})
    report, recorded = _run(pool, _items(20), connections=1)
    assert report.aborted == "SMTP authentication failed"
    assert report.sent == 3 and len(report.deferred) == 17
    assert "u3@example.com" in report.deferred and "u3@example.com" not in recorded


def test_a_lane_that_cannot_reach_the_server_gives_up() -> None:
    down = Delivery(Verdict.DEFERRED, "cannot reach SMTP server")
    pool = FakePool({f"u{i}@example.com": down for i in range(100)})
    report, _ = _run(pool, _items(100), connections=2)
    assert len(pool.log) == 6, "three attempts per lane, then stop"
    assert len(report.deferred) == 100 and report.sent == 0


def test_an_unexpected_error_surfaces_itself_not_a_group() -> None:
    pool = FakePool({"u2@example.com": RuntimeError("redis went away")})
    with pytest.raises(RuntimeError, match="redis went away"):
        _run(pool, _items(10), connections=3)
    assert pool.acquired == pool.released, "every connection went back to the pool"


def test_outcomes_are_group_committed_and_all_written_before_returning() -> None:
    pool = FakePool({})
    batches: list[dict[str, str]] = []
    report = asyncio.run(
        deliver_all(pool, _items(40), _render, lambda b: batches.append(dict(b)), connections=4)  # type: ignore[arg-type]
    )
    assert report.sent == 40
    assert sum(len(b) for b in batches) == 40 and len({a for b in batches for a in b}) == 40
    assert len(batches) < 40, "answers arriving in one loop turn share one write"


def test_a_failing_record_stops_the_chunk_with_its_own_error() -> None:
    def broken(batch: object) -> None:
        raise ConnectionError("PRIMARY unreachable")

    pool = FakePool({})
    with pytest.raises(ConnectionError, match="PRIMARY unreachable"):
        asyncio.run(deliver_all(pool, _items(20), _render, broken, connections=2))  # type: ignore[arg-type]
    assert pool.acquired == pool.released
