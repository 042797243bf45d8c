"""Celery on the Redis broker, no result backend (its default).

`celery -A bench.peer_apps.celery_app worker --pool threads`.
"""

from __future__ import annotations

from celery import Celery

from bench.peer_apps import mark_done, url

app = Celery("bench", broker=url())


@app.task
def noop() -> None:
    mark_done()
