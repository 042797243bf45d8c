"""The two example apps served as in production, and their live page open in headless Chromium.

`example_server` is parametrised over both apps (`examples/flask_app.py` under gunicorn
with `examples/gunicorn.conf.py`, `examples/fastapi_app.py` under uvicorn) and keeps one
port, so a test can stop the server and start it again where the open page expects it.
`LivePage` signs in from the page itself (Chromium keeps the Secure `__Host-` cookie on
http://127.0.0.1, a secure context) and reads back what `examples/live.html` rendered.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen, TimeoutExpired
from typing import Any

import httpx
import pytest
import redis

from cache.realtime.service import RealtimeService
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until
from workers.dev.servers import free_port

USER = "ana"
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0  # generous: each server is given a graceful timeout well under this
SHOW_TIMEOUT_S = 60.0  # a reconnect waits for the stream's `retry: 3000` and the page's 3 s
SHOWN_BEFORE_UNLOAD = "test:shown-before-unload"
STREAMS_OPENED = "__streamsOpened"

# What the page rendered when it went away: the reload test compares it with what the new
# page shows. `pagehide` runs in the unload steps, after the page's last event handler.
RECORD_ON_UNLOAD = f"""
addEventListener("pagehide", () => {{
  const shown = [...document.querySelectorAll("#events li")].map(li => [li.dataset.id, li.textContent]);
  sessionStorage.setItem("{SHOWN_BEFORE_UNLOAD}", JSON.stringify(shown));
}});
"""

# The URL of every EventSource this document opened, as the page built it. Read from the
# page, not from Playwright's request events: those can miss a request that starts while
# routes are being removed (seen in CI on a reload).
RECORD_STREAMS_OPENED = f"""
window.{STREAMS_OPENED} = [];
window.EventSource = class extends window.EventSource {{
  constructor(url, options) {{ super(url, options); window.{STREAMS_OPENED}.push(String(url)); }}
}};
"""


@dataclass(frozen=True)
class Shown:
    """One rendered `<li>`: the SSE id, event type and the envelope's `data`."""

    id: str
    event: str
    data: dict[str, Any]

    @classmethod
    def parse(cls, event_id: str, text: str) -> Shown:
        event, envelope = text.split(" ", 1)  # the page renders `${type} ${data}`
        parsed = json.loads(envelope)
        assert parsed["id"] == event_id, (event_id, text)
        return cls(event_id, event, parsed["data"])


class ExampleServer:
    """One example app on a fixed port: started, SIGTERMed and started again there."""

    def __init__(self, kind: str, processes: Processes) -> None:
        self.kind = kind
        self.processes = processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Popen[bytes] | None = None

    def command(self, *options: str) -> list[str]:
        if self.kind == "flask":
            gunicorn = str(Path(sys.executable).parent / "gunicorn")
            bind = f"127.0.0.1:{self.port}"
            return [
                gunicorn,
                "-c",
                "examples/gunicorn.conf.py",
                "-b",
                bind,
                *options,
                "examples.flask_app:app",
            ]
        return [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--no-proxy-headers",
                "--port", str(self.port), *options]  # fmt: skip

    def start(self, *options: str) -> ExampleServer:
        """Start the server (`options` go on its command line); return once it accepts."""
        process = self.processes.start(*self.command(*options), name=self.kind)
        self.process = process

        def answering() -> bool:
            assert process.poll() is None, f"{self.kind} exited at start:\n{log_of(process)}"
            try:
                return httpx.get(f"{self.url}/", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answering, START_TIMEOUT_S, f"{self.kind} answering on {self.url}")
        return self

    def terminate(self) -> int:
        """SIGTERM, as a supervisor stops it, and wait for it to exit; its return code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT_S)
        except TimeoutExpired:
            pytest.fail(f"{self.kind} still running {EXIT_TIMEOUT_S} s after SIGTERM:\n{self.log()}")

    def log(self) -> str:
        assert self.process is not None
        return log_of(self.process)


@pytest.fixture(params=["flask", "fastapi"])
def example_server(request: pytest.FixtureRequest, processes: Processes) -> ExampleServer:
    """One of the two example apps, not started yet (on the flushed test Redis)."""
    return ExampleServer(request.param, processes)


@pytest.fixture
def browser_context(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    yield context
    context.close()


class LivePage:
    """`examples/live.html` of one signed-in user, with every dialog and `/events` request seen."""

    def __init__(self, context: Any, url: str) -> None:
        self.url = url
        self.dialogs: list[str] = []
        self.event_requests: list[Any] = []  # Playwright Requests
        self.page = context.new_page()
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("request", self._seen)
        self.page.add_init_script(RECORD_ON_UNLOAD)
        self.page.add_init_script(RECORD_STREAMS_OPENED)

    def _seen(self, request: Any) -> None:
        if request.url.startswith(f"{self.url}/events"):
            self.event_requests.append(request)

    def sign_in(self, kind: str, user: str = USER) -> LivePage:
        """Sign in from the page, as its own script would, then load it again, signed in."""
        self.page.goto(f"{self.url}/")
        body = "new URLSearchParams({user})" if kind == "flask" else "JSON.stringify({user})"
        content_type = "application/x-www-form-urlencoded" if kind == "flask" else "application/json"
        status = self.page.evaluate(
            f"""async (user) => (await fetch("/login", {{method: "POST",
                headers: {{"Content-Type": "{content_type}"}}, body: {body}}})).status"""
        , user)  # fmt: skip
        assert status == 200, status
        self.page.reload()
        self.wait_live()
        return self

    def wait_live(self) -> None:
        wait_until(lambda: self.state() == "live", SHOW_TIMEOUT_S, "the page's stream open")

    def state(self) -> str:
        return str(self.page.inner_text("#state"))

    def shown(self) -> list[Shown]:
        rows = self.page.eval_on_selector_all(
            "#events li", "items => items.map(i => [i.dataset.id, i.textContent])"
        )
        return [Shown.parse(event_id, text) for event_id, text in rows]

    def shown_before_unload(self) -> list[Shown]:
        """What the previous document of this tab had rendered when it was unloaded."""
        rows = json.loads(self.page.evaluate(f"sessionStorage.getItem('{SHOWN_BEFORE_UNLOAD}')"))
        return [Shown.parse(event_id, text) for event_id, text in rows]

    def streams_opened(self) -> list[str]:
        """The `/events` URLs the current document opened its EventSources on, in order."""
        return [str(url) for url in self.page.evaluate(f"window.{STREAMS_OPENED}")]

    def wait_shown(self, event_id: str) -> None:
        """Until the event `event_id` is on the page (events arrive in order: all before it too)."""
        item = self.page.locator(f'#events li[data-id="{event_id}"]')
        wait_until(lambda: item.count() > 0, SHOW_TIMEOUT_S, f"event {event_id} shown")


class Publisher:
    """Publishes numbered events to `USER`, cycling through the page's four types, and keeps them."""

    TYPES = ("report.progress", "report.ready", "email.sent", "email.failed")

    def __init__(self, client: redis.Redis) -> None:
        self.service = RealtimeService(client)
        self.events: list[Shown] = []

    def __call__(self, count: int = 1, **extra: str) -> str:
        """Publish `count` events (with `extra` in their data); the id of the last one."""
        for _ in range(count):
            event = self.TYPES[len(self.events) % len(self.TYPES)]
            data = {"n": len(self.events), **extra}
            self.events.append(Shown(self.service.publish_user_event(USER, event, data), event, data))
        return self.events[-1].id


@pytest.fixture
def publish(primary: redis.Redis) -> Publisher:
    return Publisher(primary)
