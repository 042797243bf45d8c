"""The systems `python -m bench peers` compares: how each is enqueued to, started and configured.

Each runs 2 worker processes at its documented defaults:
- ours: 2 `rq worker email --burst` processes with the README environment (KryonixWorker);
- rq-worker / rq-simpleworker: 2 `rq worker --burst` processes with RQ's default classes
  (forking `Worker`, in-process `SimpleWorker`), pickle;
- dramatiq: `dramatiq bench.peer_apps.dramatiq_app --processes 2` (8 threads each, its default);
- celery: 2 `celery worker --pool threads` processes (concurrency = CPU count, its default);
- huey: 2 `huey_consumer` processes (1 worker thread each, its default).
arq is not measured: every arq release pins redis<6 (the project runs redis-py 8).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Queue

from bench.common import spawn_logged, worker_env

WORKERS = 2
RQ_QUEUE = "bench-noop"
NOOP = "jobs.diagnostics.noop"
CELERY_APP = "bench.peer_apps.celery_app"
# Our email worker's own knobs, passed through from the caller's environment (only to ours).
ARQ_SKIPPED = "arq pins redis<6 (the project needs redis-py 8)"


@dataclass(frozen=True)
class Mail:
    """The welcome email as plain code sends it: the peers' and RQ's job arguments."""

    port: int
    sender: str
    subject: str
    text: str
    html: str

    def args(self, to: str) -> tuple[str, int, str, str, str, str, str]:
        return ("127.0.0.1", self.port, self.sender, to, self.subject, self.text, self.html)


@dataclass(frozen=True)
class System:
    name: str
    module: str | None  # the package that must be importable (None: always there)
    enqueue: Callable[[redis.Redis, int], None]
    enqueue_email: Callable[[Mail, list[str]], None]
    commands: Callable[[str], list[list[str]]]
    peer: bool  # True: finished when the done counter reaches N; False: RQ burst exit
    noop_share: int = 1  # runs N // noop_share no-op jobs: a slow system's rate is the same, sooner


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _enqueue_ours(client: redis.Redis, jobs: int) -> None:
    from jobs.enqueue import enqueue_bulk

    enqueue_bulk("email", NOOP, [((), {}) for _ in range(jobs)], client=client)


def _enqueue_rq(client: redis.Redis, jobs: int) -> None:
    queue = Queue(RQ_QUEUE, connection=client)
    with client.pipeline() as pipe:
        queue.enqueue_many([Queue.prepare_data(NOOP) for _ in range(jobs)], pipeline=pipe)
        pipe.execute()


def _enqueue_dramatiq(client: redis.Redis, jobs: int) -> None:
    from bench.peer_apps import dramatiq_app

    for _ in range(jobs):
        dramatiq_app.noop.send()


def _enqueue_celery(client: redis.Redis, jobs: int) -> None:
    from bench.peer_apps import celery_app

    for _ in range(jobs):
        celery_app.noop.delay()


def _enqueue_huey(client: redis.Redis, jobs: int) -> None:
    from bench.peer_apps import huey_app

    for _ in range(jobs):
        huey_app.noop()


def _email_ours(mail: Mail, recipients: list[str]) -> None:
    from bench.email import LOGIN_URL
    from jobs.email import enqueue_email

    for n, to in enumerate(recipients):
        enqueue_email(to, "welcome", {"name": f"User {n}", "login_url": LOGIN_URL})


def _email_rq(mail: Mail, recipients: list[str]) -> None:
    from cache.connections import primary

    queue = Queue(RQ_QUEUE, connection=primary())
    for to in recipients:
        queue.enqueue("bench.email.baseline_send", *mail.args(to))


def _email_dramatiq(mail: Mail, recipients: list[str]) -> None:
    from bench.peer_apps import dramatiq_app

    for to in recipients:
        dramatiq_app.send.send(*mail.args(to))


def _email_celery(mail: Mail, recipients: list[str]) -> None:
    from bench.peer_apps import celery_app

    for to in recipients:
        celery_app.send.delay(*mail.args(to))


def _email_huey(mail: Mail, recipients: list[str]) -> None:
    from bench.peer_apps import huey_app

    for to in recipients:
        huey_app.send(*mail.args(to))


def _rq_commands(queue: str, *extra: str) -> Callable[[str], list[list[str]]]:
    def commands(url: str) -> list[list[str]]:
        return [[_bin("rq"), "worker", queue, "--burst", "--url", url, *extra] for _ in range(WORKERS)]

    return commands


OURS = System("ours", None, _enqueue_ours, _email_ours, _rq_commands("email"), peer=False)
SYSTEMS = (
    OURS,
    System(
        "rq-simpleworker",
        None,
        _enqueue_rq,
        _email_rq,
        _rq_commands(RQ_QUEUE, "-w", "rq.SimpleWorker"),
        peer=False,
    ),
    System("rq-worker", None, _enqueue_rq, _email_rq, _rq_commands(RQ_QUEUE), peer=False, noop_share=5),
    System(
        "dramatiq",
        "dramatiq",
        _enqueue_dramatiq,
        _email_dramatiq,
        lambda url: [[_bin("dramatiq"), "bench.peer_apps.dramatiq_app", "--processes", str(WORKERS)]],
        peer=True,
    ),
    System(
        "celery",
        "celery",
        _enqueue_celery,
        _email_celery,
        lambda url: [
            [_bin("celery"), "-A", CELERY_APP, "worker", "--pool", "threads", "-n", f"w{n}@%h"]
            for n in range(WORKERS)
        ],
        peer=True,
    ),
    System(
        "huey",
        "huey",
        _enqueue_huey,
        _email_huey,
        lambda url: [[_bin("huey_consumer"), "bench.peer_apps.huey_app.huey"] for _ in range(WORKERS)],
        peer=True,
    ),
)


def installed(
    systems: Sequence[System], is_installed: Callable[[str], bool]
) -> tuple[list[System], list[dict[str, str]]]:
    """(the systems whose package imports, a skipped line for each other); arq is always skipped."""
    present = [s for s in systems if s.module is None or is_installed(s.module)]
    skipped = [
        {"bench": "peers", "metric": f"peer_{s.name}", "skipped": f"{s.module} is not installed"}
        for s in systems
        if s not in present
    ]
    skipped.append({"bench": "peers", "metric": "peer_arq", "skipped": ARQ_SKIPPED})
    return present, skipped


def start(
    system: System, url: str, logdir: str, *, smtp_port: int = 0, overrides: Mapping[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """The system's worker processes, each in its own session (stop with `stop_process_groups`)."""
    ours = system.name == OURS.name
    env = worker_env(url, ours=ours, smtp_port=smtp_port, overrides=overrides)
    return spawn_logged(system.commands(url), env=env, logdir=logdir, prefix=system.name)
