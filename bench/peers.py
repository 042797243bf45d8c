"""No-op job throughput, ours against RQ's own workers and peer job systems: `python -m bench peers`.

Options: `--jobs N` (default 2,000; 0 skips the no-op workload), `--rounds R` (default 3),
`--emails N` (default 0: no email workload), `--smtp-delay-ms D` (default 100). One private redis-server
(the shipped redis.conf), 2 worker processes per system, each system at its documented
defaults:
- ours: 2 `rq worker email --burst` processes with the README environment (KryonixWorker);
- rq-worker / rq-simpleworker: 2 `rq worker --burst` processes with RQ's default classes
  (forking `Worker`, in-process `SimpleWorker`), pickle;
- dramatiq: `dramatiq bench.peer_apps.dramatiq_app --processes 2` (8 threads each, its default);
- celery: 2 `celery worker --pool threads` processes (concurrency = CPU count, its default);
- huey: 2 `huey_consumer` processes (1 worker thread each, its default).
arq is not measured: every arq release pins redis<6 (the project runs redis-py 8).

Per system and round: flush, queue N jobs, CONFIG RESETSTAT, start the workers, time from
the first job taken to the last one done (process start-up excluded; the wall time with
start-up is reported too), then read INFO commandstats: Redis commands per job is all calls,
minus the bench's own polls and the peers' one INCR per job, over N. The RQ workers are timed
to their burst exit, so their shutdown commands are included. Rounds interleave the systems;
medians are reported, with ours against each system and against the best peer.

Email workload (`--emails N`): N welcome emails queued first, then sent to bench.email's
aiosmtpd sink, which holds each DATA answer D ms (a remote relay's latency); emails/s from
the first to the last delivery the sink saw, repeats counted (must be 0). Ours runs
`enqueue_email`; the others run bench.email's `baseline_send` (a new smtplib connection
and an `EmailMessage` per email), as plain code on those systems would.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from bench.common import median, private_primary, row, stop_process_groups
from bench.peer_apps import DONE_KEY
from workers.dev.servers import PROJECT_ROOT

JOBS = 2_000
ROUNDS = 3
WORKERS = 2
WAIT_S = 180.0
POLL_S = 0.005
RQ_QUEUE = "bench-noop"
NOOP = "jobs.diagnostics.noop"
PEERS = ("dramatiq", "celery", "huey")
CELERY_APP = "bench.peer_apps.celery_app"


@dataclass(frozen=True)
class System:
    name: str
    module: str | None  # the package that must be importable (None: always there)
    enqueue: Callable[[redis.Redis, int], None]
    enqueue_email: Callable[[Mail, list[str]], None]
    commands: Callable[[str], list[list[str]]]
    peer: bool  # True: finished when the done counter reaches N; False: RQ burst exit


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


SYSTEMS = (
    System("ours", None, _enqueue_ours, _email_ours, _rq_commands("email"), peer=False),
    System(
        "rq-simpleworker",
        None,
        _enqueue_rq,
        _email_rq,
        _rq_commands(RQ_QUEUE, "-w", "rq.SimpleWorker"),
        peer=False,
    ),
    System("rq-worker", None, _enqueue_rq, _email_rq, _rq_commands(RQ_QUEUE), peer=False),
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


def _env(url: str, *, ours: bool, smtp_port: int = 0) -> dict[str, str]:
    prefixes = ("RQ_", "REDIS_", "CACHE_REDIS", "SMTP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(REDIS_URL=url, CACHE_REDIS_URL=url, BENCH_PEERS_REDIS_URL=url)
    if smtp_port:  # the email workload's sink; a no-op run leaves SMTP at its defaults
        env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port))
    if ours:  # the README's environment
        env.update(
            RQ_REDIS_URL=url,
            RQ_WORKER_CLASS="workers.worker.KryonixWorker",
            RQ_JOB_CLASS="workers.job.KryonixJob",
            RQ_QUEUE_CLASS="jobs.queues.KryonixQueue",
        )
    return env


def _start(system: System, url: str, logdir: str, smtp_port: int = 0) -> list[subprocess.Popen[bytes]]:
    processes = []
    for n, command in enumerate(system.commands(url)):
        with open(Path(logdir) / f"{system.name}-{n}.log", "ab") as log:
            processes.append(
                subprocess.Popen(
                    command,
                    env=_env(url, ours=system.name == "ours", smtp_port=smtp_port),
                    cwd=PROJECT_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return processes


@dataclass(frozen=True)
class Drain:
    jobs_per_s: float
    wall_jobs_per_s: float  # start-up included
    commands_per_job: float
    complete: bool


def _drain(system: System, client: redis.Redis, url: str, jobs: int, logdir: str) -> Drain:
    client.flushall()
    system.enqueue(client, jobs)
    queue_key = f"rq:queue:{'email' if system.name == 'ours' else RQ_QUEUE}"
    client.config_resetstat()
    polls = 0
    processes = _start(system, url, logdir)
    started = time.perf_counter()
    first: float | None = None
    complete = False
    try:
        while time.perf_counter() - started < WAIT_S:
            if system.peer:
                polls += 1
                done = int(client.get(DONE_KEY) or 0)
                if first is None and done > 0:
                    first = time.perf_counter()
                if done >= jobs:
                    complete = True
                    break
            else:
                if first is None:
                    polls += 1
                    if int(client.llen(queue_key)) < jobs:
                        first = time.perf_counter()
                if all(p.poll() is not None for p in processes):
                    complete = int(client.llen(queue_key)) == 0
                    polls += 1
                    break
            time.sleep(POLL_S)
        finished = time.perf_counter()
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        stop_process_groups(processes)
    calls = sum(int(v["calls"]) for v in stats.values())
    own = polls + (jobs if system.peer else 0)
    return Drain(
        jobs_per_s=jobs / (finished - (first or started)),
        wall_jobs_per_s=jobs / (finished - started),
        commands_per_job=(calls - own) / jobs,
        complete=complete,
    )


def _email_drain(
    system: System, client: redis.Redis, url: str, mail: Mail, emails: int, tag: str, sink: Any, logdir: str
) -> tuple[float, int, bool]:
    """(emails/s first to last delivery as the sink saw them, duplicates, complete)."""
    client.flushall()
    system.enqueue_email(mail, [f"{system.name}{tag}-{n}@example.com" for n in range(emails)])
    sink.reset()
    processes = _start(system, url, logdir, smtp_port=mail.port)
    try:
        first, last, complete = sink.wait_for(emails)
        time.sleep(0.2)  # a repeat delivered just after the last one is still counted
    finally:
        stop_process_groups(processes)
    return (emails - 1) / max(last - first, 1e-9), int(sink.duplicates.value), complete


def _email_rows(
    present: list[System], url: str, client: redis.Redis, options: argparse.Namespace, logdir: str
) -> list[dict[str, Any]]:
    from bench.email import _sample_message, _Sink
    from workers.dev.servers import free_port

    sink = _Sink(free_port(), delay_s=options.smtp_delay_ms / 1000)
    try:
        sample = _sample_message()
        mail = Mail(
            sink.port,
            sample["From"],
            sample["Subject"],
            sample.get_body(("plain",)).get_content(),
            sample.get_body(("html",)).get_content(),
        )
        results: dict[str, list[tuple[float, int, bool]]] = {s.name: [] for s in present}
        for r in range(options.rounds):
            for system in present:
                results[system.name].append(
                    _email_drain(system, client, url, mail, options.emails, str(r), sink, logdir)
                )
    finally:
        sink.stop()
    rate = {name: median([x[0] for x in runs]) for name, runs in results.items()}
    dups = {name: sum(x[1] for x in runs) for name, runs in results.items()}
    complete = {name: all(x[2] for x in runs) for name, runs in results.items()}
    common = {
        "emails": options.emails,
        "smtp_delay_ms": options.smtp_delay_ms,
        "rounds": options.rounds,
        "worker_processes": WORKERS,
    }
    rows = [
        row(
            "peers",
            f"emails_per_s_ours_vs_{name}",
            rate["ours"],
            "emails/s",
            rate[name],
            "higher",
            duplicates=dups["ours"],
            baseline_duplicates=dups[name],
            complete=complete["ours"] and complete[name],
            **common,
        )
        for name in results
        if name != "ours"
    ]
    peers = [name for name in results if name in PEERS]
    if peers:
        best = max(peers, key=lambda name: rate[name])
        rows.append(
            row(
                "peers",
                "emails_per_s_ours_vs_best_peer",
                rate["ours"],
                "emails/s",
                rate[best],
                "higher",
                best_peer=best,
                **common,
            )
        )
    return rows


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench peers")
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--emails", type=int, default=0, help="email workload size (0: no email workload)")
    parser.add_argument("--smtp-delay-ms", type=float, default=100.0, help="the sink's answer delay")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    options = _options(argv or [])
    present = [s for s in SYSTEMS if s.module is None or importlib.util.find_spec(s.module) is not None]
    rows: list[dict[str, Any]] = [
        {"bench": "peers", "metric": f"peer_{s.name}", "skipped": f"{s.module} is not installed"}
        for s in SYSTEMS
        if s not in present
    ]
    rows.append({"bench": "peers", "metric": "peer_arq", "skipped": "arq pins redis<6"})
    results: dict[str, list[Drain]] = {s.name: [] for s in present}
    with private_primary("peers") as server, tempfile.TemporaryDirectory(prefix="kx-bench-peers-") as logdir:
        client = server.client()
        os.environ["BENCH_PEERS_REDIS_URL"] = server.url  # the peers' apps, imported here to enqueue
        for _ in range(options.rounds if options.jobs else 0):
            for system in present:
                results[system.name].append(_drain(system, client, server.url, options.jobs, logdir))
        email_rows = _email_rows(present, server.url, client, options, logdir) if options.emails else []
        client.flushall()
    if not options.jobs:
        return rows + email_rows
    rate = {name: median([d.jobs_per_s for d in drains]) for name, drains in results.items()}
    wall = {name: median([d.wall_jobs_per_s for d in drains]) for name, drains in results.items()}
    commands = {name: median([d.commands_per_job for d in drains]) for name, drains in results.items()}
    complete = {name: all(d.complete for d in drains) for name, drains in results.items()}
    common = {"jobs": options.jobs, "rounds": options.rounds, "worker_processes": WORKERS}
    for name in results:
        if name == "ours":
            continue
        rows.append(
            row(
                "peers",
                f"noop_jobs_per_s_ours_vs_{name}",
                rate["ours"],
                "jobs/s",
                rate[name],
                "higher",
                wall_with_startup=round(wall["ours"], 1),
                baseline_wall_with_startup=round(wall[name], 1),
                complete=complete["ours"] and complete[name],
                **common,
            )
        )
        rows.append(
            row(
                "peers",
                f"redis_commands_per_job_ours_vs_{name}",
                commands["ours"],
                "commands/job",
                commands[name],
                "lower",
                **common,
            )
        )
    peers = [name for name in results if name in PEERS]
    if peers:
        best = max(peers, key=lambda name: rate[name])
        rows.append(
            row(
                "peers",
                "noop_jobs_per_s_ours_vs_best_peer",
                rate["ours"],
                "jobs/s",
                rate[best],
                "higher",
                best_peer=best,
                **common,
            )
        )
    return rows + email_rows
