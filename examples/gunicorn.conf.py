"""gunicorn settings for `examples.flask_app`: `gunicorn -c examples/gunicorn.conf.py ...`."""

from __future__ import annotations

from typing import Any

from cache.integrations.flask import end_streams_on_sigterm

workers = 2
worker_class = "gthread"  # threads: each open live page holds one for as long as it listens
threads = 16
preload_app = True  # safe: nothing connects at import, each worker builds its own clients
graceful_timeout = 10


def post_worker_init(worker: Any) -> None:
    end_streams_on_sigterm()  # live-event streams end at once on SIGTERM
