"""Hostile job payloads of issue 14 (findings 8 and 10), shared by the unit and worker tests.

Each entry is (label, payload, part of the refusal). The unit tests feed them to the
payload checks; tests/integration/test_payload_worker.py writes them into Redis by hand
as jobs and runs a real worker on them.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from jobs.email.validation import Mailbox

SENDER = Mailbox("KRYONIX", "no-reply@kryonix.example")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}
PDF = {"filename": "r.pdf", "content_type": "application/pdf", "data": base64.b64encode(b"%PDF").decode()}
BULK_ID = "0123456789abcdef0123456789abcdef"


def email_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1,
        "to": [["Ana", "ana@example.com"]],
        "template": "welcome",
        "locale": "en",
        "context": dict(WELCOME),
        "idempotency_key": "k-1",
        "attachments": [],
        "reply_to": None,
        "requested_by": None,
    }
    payload.update(changes)
    return payload


def chunk_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1,
        "bulk_id": BULK_ID,
        "template": "welcome",
        "locale": "en",
        "context": {"login_url": "https://app.example.com/login"},
        "recipients": [{"to": ["Ana", "ana@example.com"], "context": {"name": "Ana"}}],
        "connections": 4,
        "requested_by": None,
    }
    payload.update(changes)
    return payload


def _welcome(**context: Any) -> dict[str, Any]:
    return {**WELCOME, **context}


# (label, payload, part of the refusal). Each one reached the SMTP server before issue 14.
HOSTILE_EMAILS: list[tuple[str, dict[str, Any], str]] = [
    ("Bcc via display name CRLF", email_payload(to=[["Ana\r\nBcc: all@evil.example", "ana@example.com"]]),
     "to[0] display name contains a CR character (header injection refused)"),
    ("Bcc via display name LF", email_payload(to=[["Ana\nBcc: all@evil.example", "ana@example.com"]]),
     "contains a LF character"),
    ("NUL in display name", email_payload(to=[["Ana\0", "ana@example.com"]]), "contains a NUL character"),
    ("U+2028 in display name", email_payload(to=[["Ana\u2028Bcc: x@evil.example", "ana@example.com"]]),
     "contains a U+2028 character"),
    ("TAB in display name", email_payload(to=[["Ana\tX", "ana@example.com"]]), "contains a TAB character"),
    ("C1 control in display name", email_payload(to=[["Ana\x85", "ana@example.com"]]), "U+0085"),
    ("Bcc in the address", email_payload(to=[["", "ana@example.com\r\nBcc: all@evil.example"]]),
     "header injection refused"),
    ("display name inside the address field", email_payload(to=[["", "Eve <eve@evil.example>"]]),
     "is not a valid email address"),
    ("no @", email_payload(to=[["", "ana.example.com"]]), "is not a valid email address"),
    ("60 recipients without @", email_payload(to=[["", f"user{i}"] for i in range(60)]),
     "to has 60 entries, over the limit of 50 per job"),
    ("51 valid recipients", email_payload(to=[["", f"u{i}@example.com"] for i in range(51)]),
     "to has 51 entries, over the limit of 50"),
    ("no recipient", email_payload(to=[]), "at least one recipient"),
    ("to as a string", email_payload(to="ana@example.com"), "to must be a list"),
    ("mailbox not a pair", email_payload(to=[["Ana", "ana@example.com", "x"]]),
     "[display name, address] pair"),
    ("display name not a string", email_payload(to=[[7, "ana@example.com"]]),
     "display name must be a string"),
    ("display name too long", email_payload(to=[["A" * 201, "ana@example.com"]]), "longer than 200"),
    ("header after Reply-To", email_payload(reply_to=["", "help@example.com\r\nX-Injected: 1"]),
     "reply_to contains a CR character"),
    ("header in Reply-To name", email_payload(reply_to=["Help\nX-Injected: 1", "help@example.com"]),
     "reply_to display name contains a LF"),
    ("header in attachment content_type",
     email_payload(attachments=[{**PDF, "content_type": "application/pdf\r\nX-Injected: 1"}]),
     "attachments[0].content_type contains a CR character"),
    ("parameter in attachment content_type",
     email_payload(attachments=[{**PDF, "content_type": "text/html; charset=x"}]),
     "must be a media type"),
    ("multipart attachment content_type",
     email_payload(attachments=[{**PDF, "content_type": "multipart/mixed"}]), "must be a media type"),
    ("header in attachment filename",
     email_payload(attachments=[{**PDF, "filename": "r.pdf\r\nContent-Type: text/html"}]),
     "attachments[0].filename contains a CR"),
    ("path in attachment filename", email_payload(attachments=[{**PDF, "filename": "../etc/passwd"}]),
     "plain file name"),
    ("attachment not base64", email_payload(attachments=[{**PDF, "data": "not base64!"}]),
     "is not valid base64"),
    ("attachment extra key", email_payload(attachments=[{**PDF, "headers": "X: 1"}]),
     "exactly filename, content_type and data"),
    ("11 attachments", email_payload(attachments=[PDF] * 11), "11 attachments exceed the limit of 10"),
    ("product_name override", email_payload(context=_welcome(product_name="EvilCorp")),
     "context key 'product_name' is reserved"),
    ("subject override", email_payload(context=_welcome(subject="Pay now")), "'subject' is reserved"),
    ("year override", email_payload(context=_welcome(year=1999)), "'year' is reserved"),
    ("NUL in the rendered subject", email_payload(context=_welcome(name="Ana\0")),
     "subject of template 'welcome' contains a NUL character (header injection refused)"),
    ("LF in the rendered subject", email_payload(context=_welcome(name="Ana\nBcc: x@evil.example")),
     "spans several lines"),
    ("ESC in the rendered subject", email_payload(context=_welcome(name="Ana\x1b[31m")), "U+001B"),
    ("missing template variable", email_payload(context={"name": "Ana"}), "missing variable(s): login_url"),
    ("context not a mapping", email_payload(context=["x"]), "context must be a mapping"),
    ("context key not an identifier", email_payload(context={**WELCOME, "a-b": 1}), "must be identifiers"),
    ("template path traversal", email_payload(template="../../etc/passwd"), "template name must be"),
    ("unknown template", email_payload(template="invoice"), "unknown email template 'invoice'"),
    ("template not a string", email_payload(template=["welcome"]), "template name must be"),
    ("locale with a newline", email_payload(locale="en\n"), "locale must look like"),
    ("idempotency key with a newline", email_payload(idempotency_key="k\n"), "idempotency_key must not"),
    ("idempotency key with NUL", email_payload(idempotency_key="k\0"), "idempotency_key must not"),
    ("requested_by with ':'", email_payload(requested_by="a:b"), "requested_by"),
    ("unknown field", email_payload(headers={"Bcc": "all@evil.example"}), "unknown field(s) ['headers']"),
    ("unknown version", email_payload(v=2), "unsupported email payload version 2"),
    ("not a mapping", ["v", 1], "email payload must be a mapping"),  # type: ignore[list-item]
]  # fmt: skip

HOSTILE_CHUNKS: list[tuple[str, dict[str, Any], str]] = [
    ("60 recipients without @", chunk_payload(recipients=[{"to": ["", f"user{i}"]} for i in range(60)]),
     "recipients[0] 'user0' is not a valid email address"),
    ("Bcc via display name", chunk_payload(recipients=[{"to": ["A\r\nBcc: x@evil.example", "a@example.com"],
                                                         "context": {"name": "A"}}]),
     "recipients[0] display name contains a CR character"),
    ("product_name in the shared context", chunk_payload(context={"login_url": "u", "product_name": "Evil"}),
     "'product_name' is reserved"),
    ("product_name in a recipient's context",
     chunk_payload(recipients=[{"to": ["", "a@example.com"], "context": {"name": "A", "product_name": "E"}}]),
     "recipients[0].context key 'product_name' is reserved"),
    ("NUL in a recipient's subject",
     chunk_payload(recipients=[{"to": ["", "a@example.com"], "context": {"name": "A\0"}}]),
     "recipient a@example.com: subject of template 'welcome' contains a NUL character"),
    ("recipient missing a variable", chunk_payload(recipients=[{"to": ["", "a@example.com"]}]),
     "missing variable(s): name"),
    ("recipient locale with CRLF",
     chunk_payload(recipients=[{"to": ["", "a@example.com"], "context": {"name": "A"}, "locale": "en\r\n"}]),
     "locale must look like"),
    ("recipient extra key",
     chunk_payload(recipients=[{"to": ["", "a@example.com"], "context": {"name": "A"}, "bcc": "x"}]),
     "must be a mapping with 'to'"),
    ("same recipient twice",
     chunk_payload(recipients=[{"to": ["", "a@example.com"], "context": {"name": "A"}}] * 2),
     "appears twice in one chunk"),
    ("1001 recipients", chunk_payload(recipients=[{"to": ["", "a@example.com"]}] * 1001),
     "recipients has 1001 entries, over the limit of 1000"),
    ("no recipient", chunk_payload(recipients=[]), "at least one address"),
    ("bulk_id path", chunk_payload(bulk_id="../../x"), "bulk_id must be 32 lowercase hex digits"),
    ("bulk_id with a newline", chunk_payload(bulk_id=BULK_ID + "\n"), "bulk_id must be 32"),
    ("1001 connections", chunk_payload(connections=1001), "connections must be from 1 to 1000"),
    ("connections as a string", chunk_payload(connections="4"), "or an integer, got '4'"),
    ("unknown template", chunk_payload(template="invoice"), "unknown email template"),
    ("unknown field", chunk_payload(reply_to=["", "x@evil.example"]), "unknown field(s) ['reply_to']"),
    ("requested_by with ':'", chunk_payload(requested_by="a:b"), "requested_by"),
]  # fmt: skip

HOSTILE_REPORTS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("unknown type", ("sales", {}), {}, "unknown report type 'sales'"),
    ("type not a string", (["users"], {}), {}, "unknown report type"),
    ("unknown filter (a field)", ("users", {"sql": "1=1"}), {}, "unknown filter 'sql' for report 'users'"),
    ("filters not a mapping", ("users", ["company_id"]), {}, "must be a mapping"),
    ("action with a trailing newline",
     ("activity", {"date_from": "2025-01-01", "date_to": "2025-01-02", "action": "login\n"}), {},
     "must be an action name"),
    ("status with a trailing newline", ("users", {"status": "active\n"}), {}, "must be one of"),
    ("company_id as a string", ("users", {"company_id": "7"}), {}, "must be an integer"),
    ("format", ("users", {}), {"format": "xlsx"}, "unknown report format 'xlsx'"),
    ("notify_email with Bcc", ("users", {}), {"notify_email": "a@example.com\r\nBcc: x@evil.example"},
     "header injection refused"),
    ("notify_email display name with Bcc", ("users", {}),
     {"notify_email": [["Eve\r\nBcc: x@evil.example", "eve@example.com"]]}, "header injection refused"),
    ("notify_email pair of three", ("users", {}), {"notify_email": [["Eve", "eve@example.com", "x"]]},
     "must be a (display name, address) pair"),
    ("notify_email address with a name inside a pair", ("users", {}),
     {"notify_email": [["", "Eve <eve@evil.example>"]]}, "is not a valid email address"),
    ("notify_email without @", ("users", {}), {"notify_email": ["ok@example.com", "nobody"]},
     "'nobody' is not a valid email address"),
    ("notify_email non-ASCII local part", ("users", {}), {"notify_email": "jos\u00e9@example.com"},
     "is not a valid email address"),
    ("notify_email not a list", ("users", {}), {"notify_email": {"a@example.com": 1}},
     "notify_email must be"),
    ("51 notify_email", ("users", {}), {"notify_email": ["a@example.com"] * 51}, "at most 50"),
    ("requested_by with ':'", ("users", {}), {"requested_by": "a:b"}, "requested_by"),
    ("throttle 0", ("users", {}), {"throttle_rows_per_s": 0}, "throttle_rows_per_s must be"),
]  # fmt: skip
