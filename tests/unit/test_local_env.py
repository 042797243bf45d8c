"""`var/local.env` and the busy-port message of the local stack: pure, no server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from workers.dev.localstack import LocalPorts, env_file_text, ports_in_use_message, stack_ports


def test_sourcing_local_env_sets_the_settings_and_puts_the_stacks_bin_first_on_path(tmp_path: Path) -> None:
    odd_bin = tmp_path / 'a dir with "$HOME" and `ticks`' / "bin"
    env_file = tmp_path / "local.env"
    env_file.write_text(
        env_file_text({"REDIS_URL": "redis://127.0.0.1:16379/0", "REPORTS_DIR": "/x y/r"}, odd_bin)
    )
    shown = subprocess.run(
        ["bash", "-c", f'source "{env_file}"; printf "%s\\n" "$REDIS_URL" "$REPORTS_DIR" "$PATH"'],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown == ["redis://127.0.0.1:16379/0", "/x y/r", f"{odd_bin}:/usr/bin:/bin"]


def test_the_busy_port_message_names_every_port_and_what_to_do() -> None:
    assert ports_in_use_message([16379]) == (
        "port 16379 is in use (another `make run`?); stop it, or whatever listens there "
        "(`ss -ltnp | grep 16379` names it), and start again"
    )
    assert ports_in_use_message([16379, 9181]).startswith("ports 16379, 9181 are in use")


def test_the_stack_checks_every_port_it_will_listen_on() -> None:
    assert stack_ports(LocalPorts(), cluster=False) == [16379, 16380, 1025, 9181]
    cluster = stack_ports(LocalPorts(), cluster=True)
    assert cluster == [*range(17000, 17006), *range(27000, 27006), 1025, 9181]
