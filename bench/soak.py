"""Soak: N email jobs through a 100 ms relay while workers are SIGKILLed and Redis restarts.

`python -m bench soak [--jobs 50000] [--kill-every-s 5] [--smtp-delay-ms 100] [--wait-s 7200]`
(`--jobs 2000` for a trial). Not in `python -m bench all`, not in CI.

The bench's own redis-server (the shipped redis.conf, `appendonly yes`, `appendfsync
everysec`, in a temp dir) and an aiosmtpd sink holding each DATA answer 100 ms. N
`enqueue_email("welcome")` jobs (one recipient each) are queued first; then the bench
plays supervisord: 2 `python -m workers worker email` processes and `python -m workers
scheduler` (due retries, crash recovery), each restarted when it exits. Every
`--kill-every-s` one worker (alternately) is SIGKILLed with its process group; once half
the jobs are finished redis-server is stopped with SIGTERM and started again on the same
port and dir. At the end, printed as JSON lines: jobs by status (every one must be
finished), recipients the sink saw (every one must get its email), repeated deliveries
against the jobs whose result says `possible_duplicate` (a repeat that no result flags is
a lost email-idempotency guarantee), and throughput.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from bench.common import private_primary, stop_process_groups, worker_env
from bench.email import LOGIN_URL, _Sink
from workers.dev.servers import PROJECT_ROOT, RedisServer, free_port

JOBS = 50_000
EMAIL_WORKERS = 2
KILL_EVERY_S = 5.0
RELAY_DELAY_MS = 100.0
WAIT_S = 7200.0  # the longest the drain may take before the soak reports what it has
RESTART_AFTER_S = 0.5  # how soon an exited process is started again (supervisord: at once)
POLL_S = 0.1
FETCH_BATCH = 1000
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
EMAIL_QUEUE = "email"


@dataclass
class Supervisor:
    """Our email workers and the scheduler, each restarted when it exits, as supervisord would."""

    env: dict[str, str]
    logdir: Path
    workers: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    scheduler: subprocess.Popen[bytes] | None = None
    exited_at: dict[int, float] = field(default_factory=dict)
    kills: int = 0
    restarts: int = 0  # exits the bench did not cause (e.g. while Redis was down) included

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "workers", *args],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        self.workers = [self._spawn(f"worker-{n}", "worker", EMAIL_QUEUE) for n in range(EMAIL_WORKERS)]
        self.scheduler = self._spawn("scheduler", "scheduler")

    def kill(self, index: int) -> None:
        """SIGKILL worker `index` and its group: no warm shutdown, its job is abandoned mid-flight."""
        process = self.workers[index]
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.kills += 1

    def tend(self, now: float) -> None:
        """Start again every process that exited at least RESTART_AFTER_S ago."""
        for n, process in enumerate(self.workers):
            exited = process is not None and process.poll() is not None
            if exited and now - self.exited_at.setdefault(n, now) >= RESTART_AFTER_S:
                self.workers[n] = self._spawn(f"worker-{n}", "worker", EMAIL_QUEUE)
                self.exited_at.pop(n)
                self.restarts += 1
        if self.scheduler is not None and self.scheduler.poll() is not None:
            self.scheduler = self._spawn("scheduler", "scheduler")
            self.restarts += 1

    def stop(self) -> None:
        stop_process_groups([p for p in (*self.workers, self.scheduler) if p is not None])


@dataclass
class Progress:
    first_delivery: float | None = None
    last_delivery: float = 0.0
    delivered: int = 0
    redis_restart_s: float | None = None
    redis_restarted_at_finished: int | None = None
    done: bool = False


def _enqueue(jobs: int, client: redis.Redis) -> dict[str, str]:
    """job id -> recipient, one welcome email each."""
    from jobs.email import enqueue_email

    recipients = [f"soak-{n}@example.com" for n in range(jobs)]
    return {
        enqueue_email(to, "welcome", {"name": f"User {n}", "login_url": LOGIN_URL}, client=client): to
        for n, to in enumerate(recipients)
    }


def _ended(client: redis.Redis) -> tuple[int, int]:
    """(finished, failed) registry counts of the email queue."""
    finished = FinishedJobRegistry(EMAIL_QUEUE, connection=client)
    failed = FailedJobRegistry(EMAIL_QUEUE, connection=client)
    return int(client.zcard(finished.key)), int(client.zcard(failed.key))


def _drain(
    server: RedisServer, sink: _Sink, supervisor: Supervisor, jobs: int, options: argparse.Namespace
) -> Progress:
    """Kill a worker every few seconds, restart Redis once midway, until every job ended."""
    client = server.client(socket_timeout=5)
    progress = Progress()
    started = time.perf_counter()
    next_kill, victim = started + options.kill_every_s, 0
    while time.perf_counter() - started < options.wait_s:
        now = time.perf_counter()
        received = int(sink.received.value)
        if received > progress.delivered:
            progress.first_delivery = progress.first_delivery or now
            progress.last_delivery, progress.delivered = now, received
        supervisor.tend(now)
        if options.kill_every_s and now >= next_kill:
            supervisor.kill(victim)
            victim, next_kill = (victim + 1) % EMAIL_WORKERS, now + options.kill_every_s
        try:
            finished, failed = _ended(client)
        except redis.RedisError:
            time.sleep(POLL_S)
            continue
        if progress.redis_restart_s is None and finished >= jobs // 2:
            progress.redis_restarted_at_finished = finished
            began = time.perf_counter()
            server.restart(kill=False)  # SIGTERM (AOF fsynced), then the same port and dir
            progress.redis_restart_s = time.perf_counter() - began
        if finished + failed >= jobs:
            progress.done = True
            break
        time.sleep(POLL_S)
    time.sleep(1.0)  # a repeat delivered just after the last job ended is still counted
    return progress


def _outcomes(client: redis.Redis, recipients: dict[str, str]) -> tuple[Counter[str], Counter[str], set[str]]:
    """(jobs by status, results by their `status`, recipients of jobs flagged possible_duplicate)."""
    from workers.job import KryonixJob

    statuses: Counter[str] = Counter()
    results: Counter[str] = Counter()
    flagged: set[str] = set()
    ids = list(recipients)
    for start in range(0, len(ids), FETCH_BATCH):
        batch = ids[start : start + FETCH_BATCH]
        for job_id, job in zip(batch, KryonixJob.fetch_many(batch, connection=client), strict=True):
            if job is None:
                statuses["missing"] += 1
                continue
            status = job.get_status(refresh=False)
            statuses[str(status.value)] += 1
            value = job.return_value() if status is JobStatus.FINISHED else None
            if isinstance(value, dict):
                results[str(value.get("status"))] += 1
                if value.get("possible_duplicate"):
                    flagged.add(recipients[job_id])
    return statuses, results, flagged


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--kill-every-s", type=float, default=KILL_EVERY_S, help="0: kill no worker")
    parser.add_argument("--smtp-delay-ms", type=float, default=RELAY_DELAY_MS)
    parser.add_argument("--wait-s", type=float, default=WAIT_S)
    parser.add_argument(
        "--email-concurrency", type=int, default=None, help="EMAIL_CONCURRENCY for the workers"
    )
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    options = _options(argv or [])
    jobs = options.jobs
    overrides = {"EMAIL_CONCURRENCY": str(options.email_concurrency)} if options.email_concurrency else {}
    with private_primary("soak", AOF) as server, tempfile.TemporaryDirectory(prefix="kx-bench-soak-") as tmp:
        repeats = Path(tmp) / "repeats.txt"
        sink = _Sink(free_port(), delay_s=options.smtp_delay_ms / 1000, repeats_path=str(repeats))
        env = worker_env(server.url, ours=True, smtp_port=sink.port, overrides=overrides)
        supervisor = Supervisor(env, Path(tmp))
        try:
            began = time.perf_counter()
            recipients = _enqueue(jobs, server.client())
            enqueued_s = time.perf_counter() - began
            supervisor.start()
            began = time.perf_counter()
            progress = _drain(server, sink, supervisor, jobs, options)
            drained_s = time.perf_counter() - began
        finally:
            supervisor.stop()
            sink.stop()
        client = server.client()
        statuses, results, flagged = _outcomes(client, recipients)
        from jobs.email.idempotency import possible_duplicates

        counter = possible_duplicates(client)
        repeated = repeats.read_text(encoding="utf-8").split() if repeats.exists() else []
    return _rows(
        options,
        progress,
        supervisor,
        statuses,
        results,
        flagged,
        repeated,
        counter,
        sink,
        enqueued_s,
        drained_s,
    )


def _rows(
    options: argparse.Namespace,
    progress: Progress,
    supervisor: Supervisor,
    statuses: Counter[str],
    results: Counter[str],
    flagged: set[str],
    repeated: list[str],
    counter: int,
    sink: _Sink,
    enqueued_s: float,
    drained_s: float,
) -> list[dict[str, Any]]:
    jobs = options.jobs
    distinct = int(sink.received.value) - int(sink.duplicates.value)
    unflagged = sorted(set(repeated) - flagged)
    span = progress.last_delivery - (progress.first_delivery or progress.last_delivery)
    common = {"bench": "soak", "jobs": jobs, "kill_every_s": options.kill_every_s}
    return [
        {
            **common,
            "metric": "jobs_by_status",
            "statuses": dict(statuses),
            "results": dict(results),
            "all_finished": statuses.get("finished", 0) == jobs,
            "drained": progress.done,
        },
        {
            **common,
            "metric": "recipients",
            "delivered": distinct,
            "missing": jobs - distinct,
            "all": distinct >= jobs,
        },
        {
            **common,
            "metric": "duplicates",
            "repeated_deliveries": int(sink.duplicates.value),
            "repeated_recipients": len(set(repeated)),
            "flagged_possible_duplicate": len(flagged),
            "possible_duplicates_counter": counter,
            "repeated_but_not_flagged": len(unflagged),
            "examples_not_flagged": unflagged[:5],
        },
        {
            **common,
            "metric": "throughput",
            "emails_per_s": round((jobs - 1) / span, 1) if span > 0 else None,
            "drain_wall_s": round(drained_s, 1),
            "enqueue_per_s": round(jobs / enqueued_s, 1),
            "worker_kills": supervisor.kills,
            "process_restarts": supervisor.restarts,
            "redis_restart_s": round(progress.redis_restart_s, 2)
            if progress.redis_restart_s is not None
            else None,
            "redis_restarted_at_finished": progress.redis_restarted_at_finished,
            "smtp_delay_ms": options.smtp_delay_ms,
            "email_workers": EMAIL_WORKERS,
            **({"email_concurrency": options.email_concurrency} if options.email_concurrency else {}),
        },
    ]
