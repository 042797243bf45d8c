"""The shipped supervisord tree, started for real: the `tree` fixture and its controls."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import Processes
from tests.waiting import wait_until
from workers.dev.servers import PROJECT_ROOT, free_port


class Tree:
    """supervisord started for real on the shipped supervisord.conf."""

    def __init__(self, processes: Processes, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.env = {**processes.env, "KRYONIX_RUN_DIR": str(run_dir), "DASHBOARD_PORT": str(free_port())}
        self.process = processes.start(
            sys.executable, "-m", "workers", "supervise", "--run-dir", str(run_dir), name="supervisord",
            **{k: v for k, v in self.env.items() if k in ("KRYONIX_RUN_DIR", "DASHBOARD_PORT")},
        )  # fmt: skip

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(Path(sys.executable).parent / "supervisorctl"),
                "-c",
                str(PROJECT_ROOT / "supervisord.conf"),
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def states(self) -> dict[str, str]:
        lines = self.ctl("status").stdout.splitlines()
        return {line.split()[0]: line.split()[1] for line in lines if len(line.split()) >= 2}

    def pid(self, name: str) -> int:
        return int(self.ctl("pid", name).stdout.strip())


@pytest.fixture
def tree(processes: Processes, tmp_path: Path) -> Iterator[Tree]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = Tree(processes, run_dir)
    expected = {
        "kryonix:email-worker-00",
        "kryonix:email-worker-01",
        "kryonix:report-worker-00",
        "kryonix:scheduler",
        "kryonix:dashboard",
    }

    def all_running() -> bool:
        states = started.states()
        return expected <= set(states) and all(states[name] == "RUNNING" for name in expected)

    wait_until(all_running, 60, "every supervisord program RUNNING")
    yield started
    started.process.send_signal(signal.SIGTERM)
    try:
        started.process.wait(60)
    except subprocess.TimeoutExpired:
        pass
