"""Shared pieces of the benchmarks: a private redis-server and the result row."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cache import connections
from cache.settings import reset_settings
from workers.dev.servers import PRIMARY_CONF, PROJECT_ROOT, RedisServer
from workers.startup import SAFE_CLASSES

# Our email worker's knobs: passed through from the caller's environment to our workers only.
OUR_PASSTHROUGH = ("EMAIL_CONCURRENCY", "SMTP_MAX_CONNECTIONS")


@contextlib.contextmanager
def private_primary(name: str, extra_args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A redis-server on the shipped redis.conf plus `extra_args`, the process settings pointed at it."""
    with tempfile.TemporaryDirectory(prefix=f"kx-bench-{name}-") as tmp:
        server = RedisServer(PRIMARY_CONF, Path(tmp) / "primary", extra_args=list(extra_args)).start()
        saved = {k: os.environ.get(k) for k in ("REDIS_URL", "CACHE_REDIS_URL")}
        os.environ["REDIS_URL"] = os.environ["CACHE_REDIS_URL"] = server.url
        reset_settings()
        connections.reset_clients()
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            reset_settings()
            connections.reset_clients()
            server.stop()


def row(
    bench: str,
    metric: str,
    value: float,
    unit: str,
    baseline: float,
    better: str,
    target: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": bench,
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 3) if baseline else None,
        "better": better,
    }
    if target is not None:
        result["target"] = target
    result.update(extra)
    return result


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def stop_process_groups(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """SIGTERM each process's group (a worker and its children), then SIGKILL what outlives `timeout_s`."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spawn_logged(
    commands: Sequence[Sequence[str]], *, env: dict[str, str], logdir: str | Path, prefix: str
) -> list[subprocess.Popen[bytes]]:
    """One process per command, each in its own session, logging to `logdir/prefix-N.log`
    (stop them with `stop_process_groups`)."""
    processes = []
    for n, command in enumerate(commands):
        with open(Path(logdir) / f"{prefix}-{n}.log", "ab") as log:
            processes.append(
                subprocess.Popen(
                    list(command),
                    env=env,
                    cwd=PROJECT_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return processes


def worker_env(
    url: str, *, ours: bool, smtp_port: int = 0, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The caller's environment pointed at the bench's Redis (and sink); ours also gets the README's.

    Our email worker's knobs (`OUR_PASSTHROUGH`) survive the SMTP_* cleanup; `overrides`
    (e.g. `EMAIL_CONCURRENCY` from `--email-concurrency`) go to ours only.
    """
    prefixes = ("RQ_", "REDIS_", "CACHE_REDIS", "SMTP_", *OUR_PASSTHROUGH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(REDIS_URL=url, CACHE_REDIS_URL=url, BENCH_PEERS_REDIS_URL=url)
    if smtp_port:  # the email workload's sink; a no-op run leaves SMTP at its defaults
        env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port))
    if ours:  # the README's environment
        env.update(SAFE_CLASSES, RQ_REDIS_URL=url)
        env.update({k: os.environ[k] for k in OUR_PASSTHROUGH if k in os.environ})
        env.update(overrides or {})
    return env
