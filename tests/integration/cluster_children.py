"""Run a cluster test module's `_child_<name>` functions in child processes.

RQ reads `RQ_KEY_PREFIX` once, when `rq` is first imported, and the test process
imported it with the single-server prefix. So a step that uses RQ on the cluster runs
in a child whose environment names the cluster (`REDIS_CLUSTER_NODES`) and none of the
test session's Redis, SMTP or stack settings: the project itself must set `{rq}` there.
A child prints its result as JSON on its last line.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

from tests.integration.local_stack import without_session_settings
from workers.dev.servers import PROJECT_ROOT


def child_env(nodes: str, **extra: str) -> dict[str, str]:
    """This environment without the session's own settings, on the cluster `nodes`."""
    env = without_session_settings()
    env.update(REDIS_CLUSTER_NODES=nodes, PYTHONUNBUFFERED="1", **extra)
    return env


def child_command(module: str, name: str, *args: str) -> list[str]:
    """The command that runs `module._child_<name>(*args)` through `child`."""
    call = (
        f"from tests.integration.cluster_children import child; child({module!r}, {name!r}, *{list(args)!r})"
    )
    return [sys.executable, "-c", call]


def child(module: str, name: str, *args: str) -> None:
    """Entry point of a child process: run `module._child_<name>` and print its result as JSON."""
    function = getattr(importlib.import_module(module), f"_child_{name}")
    print(json.dumps(function(*args)))


def run_child(module: str, nodes: str, name: str, *args: str, timeout_s: float = 120, **env: str) -> Any:
    """Run `module._child_<name>(*args)` to its end on the cluster `nodes`; the JSON it printed last."""
    done = subprocess.run(
        child_command(module, name, *args),
        env=child_env(nodes, **env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"child {name} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])
