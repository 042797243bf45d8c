"""The README's 5-minute walkthrough, pasted as written, against the stack `make run` starts (marker `ops`).

The ```bash block under "## A 5-minute walkthrough" is read from README.md at test time
and run by bash in a fresh environment (no `.venv/bin` on PATH, no settings: only what
`source var/local.env` gives), from a directory laid out like the checkout: `var/` is the
stack's, `supervisord.conf` the project's. The stack is `run_local_stack`, as `python -m
workers dev` runs it, on free ports. The output must show what "What you should see" promises.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq.worker import Worker

from tests.integration.local_stack import running_stack, stack_script, without_session_settings
from tests.waiting import wait_until
from workers.dev.servers import PROJECT_ROOT, free_port

pytestmark = pytest.mark.ops

README = PROJECT_ROOT / "README.md"
# Promises quoted in "What you should see" whose exact text the output must contain
# (`...` stands for anything): job lines, the Subject lines, the report's rows, the tail's lines.
QUOTED_PROMISES = re.compile(r"^(job |Subject: |'rows': |user:\d+:events )")


def readme_section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def walkthrough_block() -> str:
    [block] = re.findall(r"^```bash\n(.*?)^```", readme_section("A 5-minute walkthrough"), re.M | re.S)
    return block


def promised_snippets() -> list[str]:
    seen = readme_section("A 5-minute walkthrough").split("What you should see:", 1)[1]
    quoted = re.findall(r"`([^`]+)`", seen.replace("\n  ", " "))
    return [snippet for snippet in quoted if QUOTED_PROMISES.match(snippet)]


def snippet_pattern(snippet: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in snippet.split("...")))


def _fresh_env() -> dict[str, str]:
    """A new terminal's environment: none of the stack's settings, the project's Python not on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = without_session_settings()
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if p and p != venv_bin)
    return env


def test_the_walkthrough_block_is_found_and_makes_promises() -> None:
    block = walkthrough_block()
    assert block.startswith("source var/local.env\n"), block
    assert "9181" not in block.replace("http://127.0.0.1:9181/ in a browser", ""), (
        "the block must read the dashboard's port from var/local.env ($DASHBOARD_PORT)"
    )
    assert any(s.startswith("Subject: ") for s in promised_snippets())


@pytest.mark.timeout(600)
def test_readme_walkthrough_runs_as_written_against_the_local_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp_path = tmp_path_factory.mktemp(
        "readme"
    )  # short: supervisord's socket path must fit AF_UNIX's 108 bytes
    checkout = tmp_path / "checkout"
    var = checkout / "var"
    var.mkdir(parents=True)
    (checkout / "supervisord.conf").symlink_to(PROJECT_ROOT / "supervisord.conf")
    ports = (
        f"LocalPorts(primary={free_port()}, cache={free_port()}, smtp={free_port()}, dashboard={free_port()})"
    )
    script = stack_script(var, ports)
    with running_stack(script, tmp_path / "stack.log") as stack:
        # The reader waits for that line, then pastes: by then the workers have registered.
        local = (var / "local.env").read_text()
        [primary_url] = re.findall(r"^export REDIS_URL=(\S+)$", local, re.M)
        client = redis.Redis.from_url(primary_url)
        ended = lambda: stack.process.poll() is not None  # noqa: E731
        registered = lambda: ended() or len(Worker.all(connection=client)) >= 3  # noqa: E731
        wait_until(registered, 120, "2 email + 1 report workers, or the stack ended")
        client.close()
        stack.check_running()
        result = subprocess.run(
            ["bash", "-eu", "-c", walkthrough_block()],
            cwd=checkout, env=_fresh_env(), capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        # A second `make run` while this one is up: one line naming the ports, nothing started.
        second = subprocess.run(
            [sys.executable, "-c", script.replace(str(var), str(tmp_path / "second"))],
            cwd=PROJECT_ROOT, env=without_session_settings(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    output = result.stdout
    shown = f"exit {result.returncode}\n--- stdout:\n{output}\n--- stderr:\n{result.stderr}"
    assert result.returncode == 0, shown
    assert "Traceback" not in result.stderr and "command not found" not in result.stderr, shown
    _check_promises(output, shown)
    assert second.returncode == 1 and second.stdout == "", second
    [line] = second.stderr.splitlines()
    assert line.startswith("ports ") and "are in use (another `make run`?); stop it" in line, line
    assert not (tmp_path / "second").exists()
    stack.check_stopped_cleanly()


def _check_promises(output: str, shown: str) -> None:
    # `python -m workers status`: both Redis roles, the queues, 3 live workers.
    for line in ("[primary] redis", "[cache] redis", "[queues]", "  email: ", "  report: ", "3 live worker"):
        assert line in output, f"status shows {line!r}\n{shown}"
    for snippet in promised_snippets():
        assert snippet_pattern(snippet).search(output), f"the README promises `{snippet}`\n{shown}"
    assert re.search(r"\.csv$", output, re.M), f"`ls -l var/reports/` lists the CSV\n{shown}"
    assert "sha256" in output, shown
    # The dashboard counts finished jobs: 2 on `email` (welcome, report ready), 1 on `report`.
    counts = _dashboard_counts(output)
    assert counts.get("email", 0) >= 2 and counts.get("report", 0) >= 1, f"{counts}\n{shown}"
    running = [line for line in output.splitlines() if re.match(r"kryonix:\S+\s+RUNNING", line)]
    assert len(running) == 5, f"supervisorctl shows five programs RUNNING\n{shown}"


def _dashboard_counts(output: str) -> dict[str, int]:
    """The grep keeps one `"name"` and one `"finished_job_registry_count"` line per queue, in queue order."""
    names = re.findall(r'^\s*"name": "([^"]+)"', output, re.M)
    counts = re.findall(r'^\s*"finished_job_registry_count": (\d+)', output, re.M)
    assert len(names) == len(counts), output
    return {name: int(count) for name, count in zip(names, counts, strict=True)}
