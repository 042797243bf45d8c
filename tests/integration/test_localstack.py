"""`make run`: the local stack starts, delivers an email end to end, and stops cleanly (marker `ops`).

The end-to-end test runs on fixed ports (16379, 16380, 1025, 9181), as `make run` does;
it is skipped, saying which, when one of them is already taken on this machine. A stack
whose ports are taken, or whose redis-server exits at start, says why in a few lines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq.worker import Worker

from cache import connections
from cache.settings import reset_settings
from jobs.email import enqueue_email
from tests.integration.local_stack import (
    STOP_TIMEOUT_S,
    check_caught_and_served,
    listening,
    running_stack,
    stack_script,
    without_session_settings,
)
from tests.waiting import wait_until
from workers.dev.localstack import LOCAL_CACHE_PORT, LOCAL_PRIMARY_PORT, LOCAL_SMTP_PORT, hold_var_directory
from workers.dev.servers import PRIMARY_CONF, PROJECT_ROOT, RedisServer, ServerStartError, free_port

pytestmark = pytest.mark.ops

DASHBOARD_PORT = 9181
PORTS = (LOCAL_PRIMARY_PORT, LOCAL_CACHE_PORT, LOCAL_SMTP_PORT, DASHBOARD_PORT)


def _local_env(path: Path) -> dict[str, str]:
    """The stack's settings in `var/local.env` (its PATH line is for shells, not for this process)."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)
    return {name: value for name, value in pairs if name != "PATH"}


@pytest.mark.timeout(300)
def test_local_stack_delivers_an_email_and_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [port for port in PORTS if listening(port)]
    if busy:
        pytest.skip(f"the local stack's ports are taken on this machine: {busy}")
    var = tmp_path / "var"
    try:
        with running_stack(stack_script(var), tmp_path / "stack.log") as stack:
            local = _local_env(var / "local.env")
            for name, value in local.items():
                monkeypatch.setenv(name, value)
            reset_settings()
            connections.reset_clients()
            client = redis.Redis.from_url(local["REDIS_URL"])
            wait_until(
                lambda: len(Worker.all(connection=client)) >= 3, 90, "2 email + 1 report workers registered"
            )

            enqueue_email(
                "ana@example.com", "welcome", {"name": "Ana", "login_url": "https://app.example.com/login"}
            )
            check_caught_and_served(var, DASHBOARD_PORT, timeout_s=60)
            client.close()
    finally:
        reset_settings()
        connections.reset_clients()
    stack.check_stopped_cleanly()
    wait_until(lambda: not any(listening(port) for port in PORTS), 30, "every port of the stack is closed")


def test_a_second_stack_on_taken_ports_names_them_and_starts_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with socket.socket() as first, socket.socket() as second:
        taken = []
        for sock in (first, second):
            port = free_port()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            taken.append(port)
        ports = (
            f"LocalPorts(primary={taken[0]}, cache={free_port()}, smtp={free_port()}, dashboard={taken[1]})"
        )
        script = stack_script(var, ports)
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=without_session_settings(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stdout == "", "nothing started, nothing announced"
    assert result.stderr == (
        f"ports {taken[0]}, {taken[1]} are in use (another `make run`?); stop it, or whatever listens "
        f"there (`ss -ltnp | grep {taken[0]}` names it), and start again\n"
    )
    assert not var.exists(), "no server, no data directory, no local.env"


def _free_ports() -> str:
    primary, cache, smtp, dashboard = (free_port() for _ in range(4))
    return f"LocalPorts(primary={primary}, cache={cache}, smtp={smtp}, dashboard={dashboard})"


def test_a_second_stack_on_the_same_var_directory_is_refused_whatever_its_ports(tmp_path: Path) -> None:
    var = tmp_path / "var"
    holder = hold_var_directory(var)  # as a running stack holds it
    assert holder is not None
    try:
        (var / "local.env").write_text("export REDIS_URL=redis://127.0.0.1:1/0\n")
        result = subprocess.run(
            [sys.executable, "-c", stack_script(var, _free_ports())], cwd=PROJECT_ROOT,
            env=without_session_settings(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.close()
    assert result.returncode == 1, result
    assert result.stdout == "", "nothing started, nothing announced"
    assert result.stderr == (
        f"{var} is in use by another local stack (pid {os.getpid()}; `make run` or `python -m workers up`); "
        "stop it first, or give this one another directory\n"
    )
    assert sorted(path.name for path in var.iterdir()) == [".stack.lock", "local.env"], "no server started"
    assert (var / "local.env").read_text() == "export REDIS_URL=redis://127.0.0.1:1/0\n", "not overwritten"
    again = hold_var_directory(var)
    assert again is not None, "free again once its holder has gone"
    again.close()


def _supervisord_under(pid: int) -> int:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"supervisord" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"no supervisord under pid {pid}")


@pytest.mark.timeout(300)
def test_a_stack_whose_supervisord_dies_stops_and_exits_1(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with running_stack(stack_script(var, _free_ports()), tmp_path / "stack.log") as stack:
        os.kill(_supervisord_under(stack.process.pid), signal.SIGKILL)
        stack.process.wait(STOP_TIMEOUT_S)
    output = stack.output()
    assert stack.process.returncode == 1, output[-6000:]
    assert "supervisord exited with -9; stopping the stack" in output
    assert output.rstrip().endswith("local stack stopped"), "the servers it started are stopped too"


def test_a_redis_server_that_exits_at_start_reports_the_end_of_its_log(tmp_path: Path) -> None:
    """The first server answers PING on the port; the second, which could not bind, is the one reported."""
    directory = tmp_path / "redis-primary"
    first = RedisServer(PRIMARY_CONF, tmp_path / "first").start()
    try:
        port = first.port
        server = RedisServer(PRIMARY_CONF, directory, port=port)
        with pytest.raises(ServerStartError) as caught:
            server.start()
    finally:
        first.stop()
    first, *tail = str(caught.value).splitlines()
    assert (
        first
        == f"redis-server on port {port} exited with 1 at start; last lines of {directory / 'redis.log'}:"
    )
    assert any("Address already in use" in line for line in tail), tail
    assert all(line.startswith("    ") for line in tail)
