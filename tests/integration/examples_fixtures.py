"""Both example apps served as in production, behind one fixture parametrised over them.

`examples/flask_app.py` runs under `gunicorn -c examples/gunicorn.conf.py` (2 gthread
workers, `--preload`, its `post_worker_init` hook), `examples/fastapi_app.py` under
`uvicorn --no-proxy-headers`. Only the bind address is added. The session cookie is
Secure, so it is sent back by hand (`tests.integration.flask_fixtures.call`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.flask_fixtures import call
from tests.integration.processes import Processes, log_of
from tests.integration.starlette_fixtures import Served
from workers.dev.servers import PROJECT_ROOT, free_port, wait_for_port

GUNICORN_CONF = PROJECT_ROOT / "examples" / "gunicorn.conf.py"


@dataclass(frozen=True)
class Example:
    """One served example app; `kind` is "flask" or "fastapi"."""

    kind: str
    url: str

    def call(self, method: str, path: str, sid: str | None = None, **kwargs: object) -> httpx.Response:
        return call(method, f"{self.url}{path}", sid, **kwargs)

    def login(self, user: str, sid: str | None = None, **kwargs: object) -> httpx.Response:
        """POST /login: a form field `user` for Flask, a JSON body {"user": ...} for FastAPI."""
        body: dict[str, object] = (
            {"data": {"user": user}} if self.kind == "flask" else {"json": {"user": user}}
        )
        return self.call("POST", "/login", sid, **body, **kwargs)


StartExample = Callable[..., Example]


def _gunicorn(processes: Processes, env: dict[str, str]) -> str:
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    process = processes.start(
        gunicorn, "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}", "examples.flask_app:app",
        name="gunicorn-example", **env,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout_s=30)
    except TimeoutError:
        pytest.fail(f"gunicorn did not start:\n{log_of(process)}")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(params=["flask", "fastapi"])
def start_example(
    request: pytest.FixtureRequest, processes: Processes, uvicorn_app: Callable[..., Served]
) -> StartExample:
    """`start_example(**env)` serves the example app of this parametrisation and returns it."""
    kind: str = request.param

    def start(**env: str) -> Example:
        if kind == "flask":
            return Example(kind, _gunicorn(processes, env))
        return Example(kind, uvicorn_app("examples.fastapi_app:app", **env).url)

    return start
