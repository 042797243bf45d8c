"""The Flask adapter's configuration is checked when it is built, before any request."""

from __future__ import annotations

import pytest

from cache.integrations.flask import SessionOptions, rate_limit


@pytest.mark.parametrize(
    "options",
    [
        {"secure": False},
        {"path": "/app"},
        {"domain": "example.com"},
        {"cookie_name": "__Secure-sid", "secure": False},
        {"cookie_name": "sid", "samesite": "lax"},
    ],
)
def test_unsafe_or_invalid_cookie_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SessionOptions(**options)  # type: ignore[arg-type]


def test_the_default_cookie_is_host_prefixed_secure_httponly_lax() -> None:
    options = SessionOptions()
    assert (options.cookie_name, options.secure, options.httponly, options.samesite, options.path) == (
        "__Host-session", True, True, "Lax", "/",
    )  # fmt: skip
    assert SessionOptions(cookie_name="sid", secure=False).secure is False  # plain-HTTP development


@pytest.mark.parametrize(
    "arguments", [{"preset": "ips"}, {"limit": 5}, {"window_s": 60}, {"limit": 0, "window_s": 60}]
)
def test_bad_rate_limit_arguments_fail_at_decoration(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rate_limit(**arguments)(lambda: "ok")  # type: ignore[arg-type]
