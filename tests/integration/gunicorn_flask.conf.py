"""Gunicorn settings for the SSE shutdown test: streams end on SIGTERM."""

from __future__ import annotations

from typing import Any

from cache.integrations.flask import end_streams_on_sigterm


def post_worker_init(worker: Any) -> None:
    end_streams_on_sigterm()
