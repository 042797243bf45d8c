"""Huey on Redis at its defaults: `huey_consumer bench.peer_apps.huey_app.huey`."""

from __future__ import annotations

from huey import RedisHuey

from bench.email import baseline_send
from bench.peer_apps import mark_done, url

huey = RedisHuey("bench", url=url())


@huey.task()
def noop() -> None:
    mark_done()


@huey.task()
def send(host: str, port: int, sender: str, to: str, subject: str, text: str, html: str) -> None:
    baseline_send(host, port, sender, to, subject, text, html)
