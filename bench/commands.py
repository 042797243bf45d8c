"""Redis commands per no-op job, by command: `python -m bench commands`.

Options: `--jobs N` (default 300), `--trace N` (default 0): with N > 0, also print to
stderr the MONITOR trace of one worker draining N jobs of each queue (`[lua]`: run by
a script the worker called).

One private redis-server (the shipped redis.conf). Per queue (`email`: in-process,
`report`: a forked horse per job) and per worker count (1 and 2 `python -m workers
worker QUEUE --burst` processes): flush, queue N `jobs.diagnostics.noop` jobs, CONFIG
RESETSTAT, run the workers to their burst exit, read INFO commandstats. The same run on
an empty queue gives a worker's fixed cost (start-up, registration, shutdown); commands
per job is (calls with N jobs - calls with none) / N, so it is what one more job costs.
Commands run inside a Lua script count there one by one. A second figure counts what
one worker sends (MONITOR lines not run by a script), where a script call is one.
Baseline: RQ's own classes on the same server and job (pickle, `rq worker --burst`):
`SimpleWorker` against the in-process queue, `Worker` (fork) against the forking one;
RQ runs no script here, so what it sends is what runs.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from bench.common import private_primary, row, stop_process_groups
from jobs.enqueue import enqueue_bulk
from workers.dev.servers import PROJECT_ROOT

JOBS = 300
NOOP = "jobs.diagnostics.noop"
RQ_QUEUE = "bench-noop"
WAIT_S = 300.0
GOAL_COMMANDS_PER_JOB = 20  # issue 4: at most this many per no-op job, both queues
# The bench's own commands, not the workers'.
OWN = {"config|resetstat", "flushall", "info", "monitor", "ping", "config"}
Counter = collections.Counter[str]
# (queue, RQ worker class whose commands are the baseline)
CASES = (("email", "rq.SimpleWorker"), ("report", "rq.Worker"))


def _env(url: str, *, ours: bool) -> dict[str, str]:
    prefixes = ("RQ_", "REDIS_", "CACHE_REDIS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(REDIS_URL=url, CACHE_REDIS_URL=url)
    if not ours:
        env["RQ_REDIS_URL"] = url
    return env


def _command(queue: str, url: str, rq_class: str | None) -> list[str]:
    if rq_class is None:
        return [sys.executable, "-m", "workers", "worker", queue, "--burst"]
    rq = str(Path(sys.executable).parent / "rq")
    return [rq, "worker", RQ_QUEUE, "--burst", "--url", url, "-w", rq_class]


def _enqueue(client: redis.Redis, queue: str, jobs: int, *, ours: bool) -> None:
    if not jobs:
        return
    if ours:
        enqueue_bulk(queue, NOOP, [((), {}) for _ in range(jobs)], client=client)
        return
    plain = Queue(RQ_QUEUE, connection=client)
    with client.pipeline() as pipe:
        plain.enqueue_many([Queue.prepare_data(NOOP) for _ in range(jobs)], pipeline=pipe)
        pipe.execute()


def _drain(
    client: redis.Redis, url: str, queue: str, jobs: int, workers: int, rq_class: str | None
) -> Counter:
    """Calls by command while `workers` processes drain `jobs` no-op jobs of `queue`."""
    client.flushall()
    _enqueue(client, queue, jobs, ours=rq_class is None)
    client.config_resetstat()
    processes = [
        subprocess.Popen(
            _command(queue, url, rq_class),
            env=_env(url, ours=rq_class is None),
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + WAIT_S
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        stop_process_groups(processes)
    left = int(client.llen(f"rq:queue:{queue if rq_class is None else RQ_QUEUE}"))
    if left:
        raise RuntimeError(f"{left} jobs left on {queue} after the workers exited")
    calls: Counter = collections.Counter()
    for name, values in stats.items():
        command = name.removeprefix("cmdstat_")
        if command not in OWN:
            calls[command] += int(values["calls"])
    return calls


def per_job(
    client: redis.Redis, url: str, queue: str, jobs: int, workers: int, rq_class: str | None
) -> dict[str, float]:
    """Commands one more job costs, by command (fixed worker costs subtracted)."""
    loaded = _drain(client, url, queue, jobs, workers, rq_class)
    empty = _drain(client, url, queue, 0, workers, rq_class)
    marginal = {name: (loaded[name] - empty[name]) / jobs for name in loaded | empty}
    return {
        name: round(v, 2) for name, v in sorted(marginal.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.005
    }


def trace(client: redis.Redis, url: str, queue: str, jobs: int) -> list[tuple[str, str]]:
    """(client type, command) of each MONITOR line while one of our workers drains `jobs` jobs.

    The client type is `lua` for a command a script ran, so the commands the worker sent
    are the other lines.
    """
    client.flushall()
    _enqueue(client, queue, jobs, ours=True)
    lines: list[tuple[str, str]] = []
    stop = threading.Event()

    def listen() -> None:
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            for entry in monitor.listen():
                if stop.is_set():
                    return
                lines.append((str(entry.get("client_type")), entry["command"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.2)
    process = subprocess.Popen(
        _command(queue, url, None),
        env=_env(url, ours=True),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        process.wait(WAIT_S)
    finally:
        stop_process_groups([process])
    time.sleep(0.2)
    stop.set()
    client.ping()  # wakes the listener so it sees `stop`
    listener.join(5)
    return lines


def sent_per_job(client: redis.Redis, url: str, queue: str, jobs: int) -> dict[str, float]:
    """Commands one more job makes one worker send (a script call is one), by command."""
    counts = []
    for n in (jobs, 0):
        sent: Counter = collections.Counter(
            command.split(" ", 1)[0].lower()
            for kind, command in trace(client, url, queue, n)
            if kind != "lua"
        )
        counts.append(sent)
    loaded, empty = counts
    marginal = {name: (loaded[name] - empty[name]) / jobs for name in loaded | empty if name not in OWN}
    return {
        name: round(v, 2) for name, v in sorted(marginal.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.005
    }


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench commands")
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--trace", type=int, default=0, help="print a MONITOR trace of N jobs per queue")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    options = _options(argv or [])
    rows = []
    with private_primary("commands") as server:
        client = server.client()
        for queue, rq_class in CASES:
            if options.trace:
                for kind, line in trace(client, server.url, queue, options.trace):
                    print(f"{queue}: {'  [lua] ' if kind == 'lua' else ''}{line}", file=sys.stderr)
            baseline = per_job(client, server.url, queue, options.jobs, 1, rq_class)
            sent = sent_per_job(client, server.url, queue, options.jobs)
            rows.append(
                row(
                    "commands",
                    f"redis_commands_sent_per_job_{queue}",
                    sum(sent.values()),
                    "commands/job",
                    sum(baseline.values()),  # RQ runs no script: what it sends is what runs
                    "lower",
                    goal=GOAL_COMMANDS_PER_JOB,
                    jobs=options.jobs,
                    worker_processes=1,
                    baseline_class=rq_class,
                    by_command=sent,
                )
            )
            for workers in (1, 2):
                ours = per_job(client, server.url, queue, options.jobs, workers, None)
                rows.append(
                    row(
                        "commands",
                        f"redis_commands_per_job_{queue}_{workers}_workers",
                        sum(ours.values()),
                        "commands/job",
                        sum(baseline.values()),
                        "lower",
                        goal=GOAL_COMMANDS_PER_JOB,
                        jobs=options.jobs,
                        worker_processes=workers,
                        baseline_class=rq_class,
                        by_command=ours,
                        baseline_by_command=baseline,
                    )
                )
        client.flushall()
    return rows
