"""The back-channel logout request as both adapters read it: one urlencoded `logout_token`.

Flask and Starlette accept exactly the same bodies (Back-Channel Logout 1.0, section 2.5:
`application/x-www-form-urlencoded` with one `logout_token`) and refuse anything else
(multipart, JSON, a repeated or missing field, an oversized body) with the same 400 and
JSON error body as an invalid token.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from cache.sessions.backchannel import MAX_TOKEN_BYTES, LogoutResponse, refused

__all__ = ["FORM_TYPE", "MAX_BODY_BYTES", "bad_form", "form_token"]

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 2 * MAX_TOKEN_BYTES  # `logout_token=` plus percent-encoding; more is junk


def form_token(content_type: str | None, body: bytes) -> str | None:
    """The one `logout_token` of a urlencoded body; None for any other body."""
    if (content_type or "").split(";")[0].strip().lower() != FORM_TYPE or len(body) > MAX_BODY_BYTES:
        return None
    try:
        values = parse_qs(body.decode("ascii"), max_num_fields=8, strict_parsing=False).get(
            "logout_token", []
        )
    except (ValueError, UnicodeError):  # too many fields, or bytes a urlencoded body never has
        return None
    return values[0] if len(values) == 1 else None


def bad_form() -> LogoutResponse:
    """The answer to a body that is not a form with exactly one `logout_token`."""
    return refused("expected an application/x-www-form-urlencoded body with one logout_token")
