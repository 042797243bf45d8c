"""Real worker, scheduler and CLI processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.dev.servers import PROJECT_ROOT

# The README's environment for `rq worker`.
RQ_ENV = {
    "RQ_WORKER_CLASS": "workers.worker.KryonixWorker",
    "RQ_JOB_CLASS": "workers.job.KryonixJob",
    "RQ_QUEUE_CLASS": "jobs.queues.KryonixQueue",
}


def process_env(redis_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "REDIS_", "CACHE_REDIS"))}
    env.update(redis_env)
    env.update(RQ_ENV)
    env["RQ_REDIS_URL"] = redis_env["REDIS_URL"]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def rq_bin() -> str:
    return str(Path(sys.executable).parent / "rq")


class Processes:
    """Starts processes and guarantees they are gone after the test."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, *command: str, name: str = "proc", split_stderr: bool = False, **extra_env: str
    ) -> subprocess.Popen[bytes]:
        """With `split_stderr`, stderr goes to its own file (`stderr_of`), not into the log."""
        log = self.logdir / f"{name}-{len(self.started)}.log"
        errors = self.logdir / f"{name}-{len(self.started)}.stderr"
        with open(log, "wb") as out, open(errors, "wb") as err:
            process = subprocess.Popen(
                list(command),
                env={**self.env, **extra_env},
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=err if split_stderr else subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = log  # type: ignore[attr-defined]
        process.stderr_path = errors  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def worker(
        self, *queues: str, burst: bool = False, name: str = "worker", **extra_env: str
    ) -> subprocess.Popen[bytes]:
        args = [rq_bin(), "worker", *queues]
        if burst:
            args.append("--burst")
        return self.start(*args, name=name, **extra_env)

    def scheduler(self, name: str = "scheduler") -> subprocess.Popen[bytes]:
        return self.start(
            sys.executable,
            "-m",
            "workers",
            "scheduler",
            "--tick",
            "0.5",
            "--maintenance-interval",
            "1",
            name=name,
        )

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers", *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()


def log_of(process: subprocess.Popen[bytes]) -> str:
    return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def stderr_of(process: subprocess.Popen[bytes]) -> str:
    """What a process started with `split_stderr` wrote to stderr."""
    return Path(process.stderr_path).read_text(errors="replace")  # type: ignore[attr-defined]


@pytest.fixture
def processes(redis_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(process_env(redis_env), tmp_path)
    yield procs
    procs.stop_all()
