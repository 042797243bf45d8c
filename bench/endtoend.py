"""End to end: the default supervisord topology delivering 10,000 transactional emails.

`python -m bench endtoend`. Starts its own PRIMARY redis-server, an aiosmtpd sink in
its own process, and `python -m workers supervise` (2 email workers, 1 report worker,
scheduler, dashboard: the production tree) against them; then enqueues 10,000
`enqueue_email` jobs (one email each) and waits until the sink has every one.

Reported: time to drain (first enqueue to last delivery) and emails/s, against the
ceiling measured in the same run on the same sink: raw aiosmtplib over 8 concurrent
connections with no queue at all (issue 11 sets no target for this figure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rq.worker import Worker

from bench.common import private_primary, row
from bench.email import _ceiling, _Sink
from jobs.email import enqueue_email
from workers.dev.servers import PROJECT_ROOT, free_port

EMAILS = 10_000
EMAIL_WORKERS = 2
DRAIN_LIMIT_S = 600.0


def _start_tree(redis_url: str, smtp_port: int, run_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "CACHE_REDIS", "SMTP_"))}
    env.update(
        REDIS_URL=redis_url,
        CACHE_REDIS_URL=redis_url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        KRYONIX_RUN_DIR=str(run_dir),
        KRYONIX_EMAIL_WORKERS=str(EMAIL_WORKERS),
        DASHBOARD_PORT=str(free_port()),
        LOG_FORMAT="text",
    )
    with open(run_dir / "supervisord.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "workers", "supervise", "--run-dir", str(run_dir)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_workers(connection: Any, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum("email" in w.queue_names() for w in Worker.all(connection=connection)) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError("the supervisord tree did not start its email workers")


def run() -> list[dict[str, Any]]:
    with private_primary("endtoend") as server, tempfile.TemporaryDirectory(prefix="kx-e2e-") as tmp:
        connection = server.client()
        sink = _Sink(free_port())
        tree = _start_tree(server.url, sink.port, Path(tmp))
        try:
            _wait_for_workers(connection, EMAIL_WORKERS)
            sink.reset()
            started = time.perf_counter()
            for i in range(EMAILS):
                enqueue_email(
                    f"user{i}@example.com",
                    "welcome",
                    {"name": f"User {i}", "login_url": "https://app.example.com/login"},
                    client=connection,
                )
            enqueued = time.perf_counter() - started
            deadline = time.perf_counter() + DRAIN_LIMIT_S
            while sink.received.value < EMAILS and time.perf_counter() < deadline:
                time.sleep(0.01)
            drained = time.perf_counter() - started
            complete = sink.received.value >= EMAILS
            duplicates = sink.duplicates.value
        finally:
            os.killpg(tree.pid, signal.SIGTERM)
            tree.wait(120)
        ceiling, ceiling_complete = _ceiling(sink, "e2e")
        sink.stop()
    rate = EMAILS / drained
    extra = {"emails": EMAILS, "email_workers": EMAIL_WORKERS, "complete": complete and ceiling_complete}
    return [
        row("endtoend", "transactional_emails_per_s", rate, "emails/s", ceiling, "higher", **extra),
        row("endtoend", "drain_seconds", drained, "s", EMAILS / ceiling, "lower", **extra),
        row("endtoend", "enqueue_emails_per_s", EMAILS / enqueued, "emails/s", ceiling, "higher", **extra),
        row("endtoend", "duplicate_deliveries", duplicates, "messages", 0, "lower", **extra),
    ]
