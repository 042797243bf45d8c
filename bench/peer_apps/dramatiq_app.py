"""Dramatiq on its Redis broker, default middleware: `dramatiq bench.peer_apps.dramatiq_app`."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.email import baseline_send
from bench.peer_apps import mark_done, url

dramatiq.set_broker(RedisBroker(url=url()))


@dramatiq.actor
def noop() -> None:
    mark_done()


@dramatiq.actor
def send(host: str, port: int, sender: str, to: str, subject: str, text: str, html: str) -> None:
    baseline_send(host, port, sender, to, subject, text, html)
