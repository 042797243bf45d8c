"""Gunicorn serving tests/integration/flask_app.py, and httpx helpers that carry its cookie.

The session cookie is Secure, so it is sent back by hand over plain HTTP, as a browser
would send it over HTTPS.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.processes import Processes
from workers.dev.servers import free_port, wait_for_port

COOKIE = "__Host-session"
TIMEOUT_S = 10.0  # generous bound on every request; an outage must answer well within it
Serve = Callable[..., str]


@pytest.fixture
def serve(processes: Processes) -> Serve:
    """`serve(**env)` starts gunicorn on the app and returns its base URL."""

    def start(*options: str, **env: str) -> str:
        port = free_port()
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        processes.start(
            gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "1", *options,
            "tests.integration.flask_app:create_app()", name="gunicorn", **env,
        )  # fmt: skip
        wait_for_port(port, timeout_s=30)
        return f"http://127.0.0.1:{port}"

    return start


def call(method: str, url: str, sid: str | None = None, **kwargs: object) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))  # type: ignore[call-overload]
    if sid is not None:
        headers["Cookie"] = f"{COOKIE}={sid}"
    return httpx.request(method, url, headers=headers, timeout=TIMEOUT_S, **kwargs)  # type: ignore[arg-type]


def session_cookie(response: httpx.Response) -> tuple[str, list[str]]:
    """The id and the attributes of the response's session cookie."""
    (line,) = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    value, *attributes = [part.strip() for part in line.split(";")]
    return value.split("=", 1)[1], attributes


def sign_in(base: str, user: str, cookie: str | None = None, **form: str) -> str:
    response = call("POST", f"{base}/login", cookie, data={"user": user, **form})
    assert response.status_code == 204, response.text
    return session_cookie(response)[0]


def whoami(base: str, sid: str | None) -> object:
    response = call("GET", f"{base}/me", sid)
    assert response.status_code == 200, response.text
    return response.json()["user"]
