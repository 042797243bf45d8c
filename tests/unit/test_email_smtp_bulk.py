"""Pure parts of SMTP delivery and bulk sending: classification, chunk and lane plans, outcomes."""

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
    SMTPHeloError,
    SMTPNotSupported,
    SMTPServerDisconnected,
)

from jobs.email import idempotency
from jobs.email.bulk import (
    UNREACHABLE_AFTER,
    Item,
    chunked,
    deliver_all,
    plan_chunk_size,
    plan_lanes,
    plan_recipients,
)
from jobs.email.render import RenderedEmail
from jobs.email.smtp import (
    Delivery,
    SmtpConfigError,
    SmtpSettings,
    Verdict,
    classify_connect_error,
    classify_reply,
    helo_refused,
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
        (SMTPHeloError(501, "5.5.2 bad name"), True, "refused the EHLO name 'localhost' (set SMTP_HELO_NAME"),
        (SMTPHeloError(421, "4.3.2 try later"), False, "unavailable: 421"),
        (SMTPConnectResponseError(554, "Helo command rejected"), True, "SMTP_HELO_NAME"),
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


@pytest.mark.parametrize(
    ("code", "message", "refused"),
    [
        (504, "5.5.2 <worker1>: Helo command rejected: need fully-qualified hostname", True),
        (550, "5.7.1 HELO/EHLO name invalid", True),
        (450, "4.7.1 <worker1>: Helo command rejected: Host not found", False),  # temporary: retried
        (550, "5.1.1 <ana@example.com>: Recipient address rejected", False),
    ],
)
def test_helo_refusals_are_told_from_recipient_refusals(code: int, message: str, refused: bool) -> None:
    assert helo_refused(code, message) is refused


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


# --- planning: chunk size and lanes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("recipients", "size", "chunks"),
    [(1, 25, 1), (25, 25, 1), (100, 25, 4), (200, 25, 8), (201, 26, 8), (1000, 125, 8),
     (2000, 250, 8), (10_000, 250, 40), (50_000, 250, 200)],
)  # fmt: skip
def test_chunk_size_spreads_a_send_over_several_jobs(recipients: int, size: int, chunks: int) -> None:
    assert plan_chunk_size(recipients) == size
    assert len(chunked(list(range(recipients)), size)) == chunks


@pytest.mark.parametrize(
    ("pending", "cap", "max_connections", "lanes"),
    [(250, None, 32, 32), (10, None, 32, 10), (1, None, 32, 1), (250, 4, 32, 4), (250, 100, 32, 32),
     (250, None, 1, 1), (0, None, 32, 1), (1000, None, 1000, 1000)],
)  # fmt: skip
def test_lanes_fill_the_pool_within_the_cap(
    pending: int, cap: int | None, max_connections: int, lanes: int
) -> None:
    assert plan_lanes(pending, cap=cap, max_connections=max_connections) == lanes


# --- deliver_all with a scripted pool: lanes, outcomes, aborts --------------------------------


class FakePool:
    """`SmtpPool.deliver` scripted per recipient; counts the transactions in flight at once."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.log: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def deliver(self, envelope_from: str, recipients: tuple[str, ...], raw: bytes) -> Delivery:
        [address] = recipients
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let the other lanes interleave
            self.log.append(address)
            answer = self.script.get(address, Delivery(Verdict.ACCEPTED, "250 OK"))
            if isinstance(answer, Exception):
                raise answer
            assert isinstance(answer, Delivery)
            return answer
        finally:
            self.in_flight -= 1


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


def _run(pool: FakePool, items: Sequence[Item], lanes: int = 4) -> tuple[Any, dict[str, str]]:
    recorded: dict[str, str] = {}
    report = asyncio.run(
        deliver_all(pool, items, _render, recorded.update, lanes=lanes)  # type: ignore[arg-type]
    )
    return report, recorded


@pytest.mark.parametrize("lanes", [1, 4, 32])
def test_every_item_is_sent_once_with_lanes_transactions_in_flight(lanes: int) -> None:
    pool = FakePool({})
    report, recorded = _run(pool, _items(50), lanes=lanes)
    assert sorted(pool.log) == sorted(i.address for i in _items(50))
    assert report.sent == 50 and recorded == {i.address: "sent" for i in _items(50)}
    assert pool.max_in_flight == lanes


def test_no_more_lanes_than_items() -> None:
    pool = FakePool({})
    report, _ = _run(pool, _items(3), lanes=32)
    assert report.sent == 3 and pool.max_in_flight == 3


def test_refused_deferred_and_invalid_are_recorded_with_reasons() -> None:
    pool = FakePool(
        {
            "u1@example.com": Delivery(Verdict.REFUSED, "all refused", {"u1@example.com": "550 no user"}),
            "u2@example.com": Delivery(Verdict.DEFERRED, "451 later"),
        }
    )
    items = [*_items(4), Item(Mailbox("", "bad@example.com"), {}, "en")]
    report, recorded = _run(pool, items, lanes=1)
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
    report, recorded = _run(pool, _items(20), lanes=1)
    assert report.aborted == "SMTP authentication failed"
    assert report.sent == 3 and len(report.deferred) == 17
    assert "u3@example.com" in report.deferred and "u3@example.com" not in recorded


@pytest.mark.parametrize("lanes", [1, 2, 32])
def test_a_server_that_keeps_failing_stops_the_chunk(lanes: int) -> None:
    down = Delivery(Verdict.DEFERRED, "cannot reach SMTP server")
    pool = FakePool({f"u{i}@example.com": down for i in range(100)})
    report, recorded = _run(pool, _items(100), lanes=lanes)
    assert len(pool.log) <= UNREACHABLE_AFTER + lanes - 1, "the lanes in flight finish, no new attempt"
    assert len(report.deferred) == 100 and report.sent == 0
    assert len(recorded) == len(pool.log), "only what was attempted is recorded"
    untried = next(reason for address, reason in report.deferred.items() if address not in pool.log)
    assert untried.startswith("not attempted: the SMTP server failed 3 transactions in a row (cannot reach")


def test_recipients_deferred_at_rcpt_do_not_stop_the_chunk() -> None:
    later = {f"u{i}@example.com": "451 4.2.1 greylisted" for i in range(10)}
    pool = FakePool(
        {a: Delivery(Verdict.DEFERRED, "every recipient was refused", {a: r}) for a, r in later.items()}
    )
    report, _ = _run(pool, _items(30), lanes=2)
    assert report.deferred == later and report.sent == 20


def test_a_success_resets_the_count_of_server_failures() -> None:
    flaky = Delivery(Verdict.DEFERRED, "SMTP connection lost")
    pool = FakePool({f"u{i}@example.com": flaky for i in range(30) if i % 3})  # 2 in a row, then a success
    report, _ = _run(pool, _items(30), lanes=1)
    assert len(pool.log) == 30 and report.sent == 10 and len(report.deferred) == 20


def test_an_unexpected_error_surfaces_itself_not_a_group() -> None:
    pool = FakePool({"u2@example.com": RuntimeError("redis went away")})
    with pytest.raises(RuntimeError, match="redis went away"):
        _run(pool, _items(10), lanes=3)


def test_outcomes_are_group_committed_and_all_written_before_returning() -> None:
    pool = FakePool({})
    batches: list[dict[str, str]] = []
    report = asyncio.run(
        deliver_all(pool, _items(40), _render, lambda b: batches.append(dict(b)), lanes=4)  # type: ignore[arg-type]
    )
    assert report.sent == 40
    assert sum(len(b) for b in batches) == 40 and len({a for b in batches for a in b}) == 40
    assert len(batches) < 40, "answers arriving in one loop turn share one write"


def test_a_failing_record_stops_the_chunk_with_its_own_error() -> None:
    def broken(batch: object) -> None:
        raise ConnectionError("PRIMARY unreachable")

    pool = FakePool({})
    with pytest.raises(ConnectionError, match="PRIMARY unreachable"):
        asyncio.run(deliver_all(pool, _items(20), _render, broken, lanes=2))  # type: ignore[arg-type]
