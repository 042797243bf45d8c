"""The local stack in a child process, as `python -m workers dev` runs it, for the tests that drive it.

Started in its own session with none of this test session's settings, waited for until it
prints that it is up, or until it has ended (a port taken meanwhile, a crash), which fails
at once with its output; stopped with SIGTERM, as Ctrl-C stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.waiting import wait_until
from workers.dev.servers import PROJECT_ROOT

# The settings a test session may hold (its own Redis, SMTP, database, ...): a stack or a
# child started for a test sees none of them, only what the test hands it.
SESSION_SETTINGS = (
    "RQ_",
    "REDIS_",
    "CACHE_REDIS",
    "SMTP_",
    "DATABASE_URL",
    "REPORTS_",
    "KRYONIX_",
    "DASHBOARD_",
    "VIRTUAL_ENV",
)
UP_LINE = "Ctrl-C stops everything."
STOP_TIMEOUT_S = 180.0  # workers stop warm: a running job may finish first


def without_session_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {name: value for name, value in environ.items() if not name.startswith(SESSION_SETTINGS)}


def stack_script(var: Path, ports: str | None = None, *, cluster: bool = False) -> str:
    """`python -c` source running `run_local_stack` on `var`; `ports` a `LocalPorts(...)` expression."""
    arguments = [f"Path({str(var)!r})"]
    if cluster:
        arguments.append("cluster=True")
    if ports is not None:
        arguments.append(f"ports={ports}")
    return (
        "from pathlib import Path; from workers.dev.localstack import LocalPorts, run_local_stack; "
        f"run_local_stack({', '.join(arguments)})"
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_caught_and_served(var: Path, dashboard_port: int, *, timeout_s: float) -> None:
    """The one email a test enqueued to ana@example.com is in the stack's mail catcher, and
    the stack's dashboard answers."""
    mail = var / "mail"
    wait_until(lambda: list(mail.glob("*.eml")), timeout_s, "the catcher stored the message")
    [message] = list(mail.glob("*.eml"))
    assert "ana@example.com" in message.read_text(errors="replace")
    with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=30) as response:
        assert response.status == 200, "the dashboard answers"


@dataclass
class StackProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_running(self) -> None:
        assert self.process.poll() is None, (
            f"the stack exited with {self.process.returncode}:\n{self.output()[-6000:]}"
        )

    def check_stopped_cleanly(self) -> None:
        """After the `with` block: exit code 0 and its last word said."""
        assert self.process.returncode == 0, self.output()[-6000:]
        assert "local stack stopped" in self.output()


@contextmanager
def running_stack(script: str, log: Path, *, up_timeout_s: float = 180.0) -> Iterator[StackProcess]:
    """Start the stack `script` runs, yield it once it is up, and stop it (SIGTERM) on the way out."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=without_session_settings(),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    stack = StackProcess(process, log)
    try:
        up_or_ended = lambda: UP_LINE in stack.output() or process.poll() is not None  # noqa: E731
        wait_until(up_or_ended, up_timeout_s, "the stack up or ended")
        stack.check_running()
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(STOP_TIMEOUT_S)
