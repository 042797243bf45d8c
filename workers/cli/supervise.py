"""`python -m workers supervise`: run supervisord on the shipped `supervisord.conf`.

Fills in the defaults the config file expects and the RQ classes (for a `rq worker`
run by hand from this environment; `python -m workers worker` sets them itself), so
the same tree runs under `make run`, in Docker and on a plain host.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from workers.dev.servers import PROJECT_ROOT

RQ_ENVIRONMENT = {
    "RQ_WORKER_CLASS": "workers.worker.KryonixWorker",
    "RQ_JOB_CLASS": "workers.job.KryonixJob",
    "RQ_QUEUE_CLASS": "jobs.queues.KryonixQueue",
}
DEFAULTS = {"KRYONIX_EMAIL_WORKERS": "2", "KRYONIX_REPORT_WORKERS": "1"}


def supervisor_environment(base: dict[str, str], run_dir: Path) -> dict[str, str]:
    """`base` plus what supervisord.conf and `rq worker` need (values in `base` win)."""
    env = dict(base)
    env.setdefault("KRYONIX_RUN_DIR", str(run_dir))
    for name, value in {**DEFAULTS, **RQ_ENVIRONMENT}.items():
        env.setdefault(name, value)
    # RQ_REDIS_URL is left to `python -m workers worker`: it derives it from REDIS_URL
    # and REDIS_PASSWORD (RQ reads no password variable of ours).
    # Programs run `rq` and `python` from the interpreter's own environment.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def supervisord_command(config: Path) -> list[str]:
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or "supervisord"
    return [supervisord, "-n", "-c", str(config)]


def exec_supervisord(config: Path | None = None, run_dir: Path | None = None) -> None:
    """Replace this process with supervisord (signals then reach it directly)."""
    config = config or PROJECT_ROOT / "supervisord.conf"
    env = supervisor_environment(dict(os.environ), run_dir or Path("var/run").resolve())
    Path(env["KRYONIX_RUN_DIR"]).mkdir(parents=True, exist_ok=True)
    command = supervisord_command(config)
    os.execvpe(command[0], command, env)  # noqa: S606 - a fixed argv, no shell
