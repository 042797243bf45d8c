"""Celery on the Redis broker, no result backend (its default).

`celery -A bench.peer_apps.celery_app worker --pool threads`.
"""

from __future__ import annotations

from celery import Celery

from bench.email import baseline_send
from bench.peer_apps import mark_done, url

app = Celery("bench", broker=url())


@app.task
def noop() -> None:
    mark_done()


@app.task
def send(host: str, port: int, sender: str, to: str, subject: str, text: str, html: str) -> None:
    baseline_send(host, port, sender, to, subject, text, html)
