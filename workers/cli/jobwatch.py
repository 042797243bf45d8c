"""`python -m workers job ID --watch`: follow a job until it ends.

On a terminal one progress bar redraws in place (rich); elsewhere (a pipe, a log) one
line is written per change of status, progress or message, never the same line twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from cache.text import printable
from workers.cli.jobview import job_percent, render_job

ENDED = ("finished", "failed", "stopped", "canceled")

Describe = Callable[[], dict[str, Any]]


def progress_line(info: dict[str, Any]) -> str:
    """`started 40.0% 4,000 / 10,000 rows`: the job's state in one escaped line."""
    parts = [str(info["status"])]
    percent = job_percent(info.get("progress"))
    if percent is not None:
        parts.append(f"{percent:.1f}%")
        message = info["progress"].get("message")
        if message:
            parts.append(str(message))
    return printable(" ".join(parts))


def watch_job(describe: Describe, *, out: TextIO, interval_s: float = 1.0) -> dict[str, Any]:
    """Follow the job `describe` reads until it ends; its last description.

    Raises:
        LookupError: the job is gone (from `describe`).
    """
    info = describe()  # first: a missing job is one error line, not an empty bar before it
    follow = _follow_live if out.isatty() else _follow_lines
    info = follow(describe, out, interval_s, info)
    out.write(render_job(info) + "\n")
    out.flush()
    return info


def _follow_lines(describe: Describe, out: TextIO, interval_s: float, info: dict[str, Any]) -> dict[str, Any]:
    last = None
    while True:
        line = progress_line(info)
        if line != last:
            out.write(line + "\n")
            out.flush()
            last = line
        if info["status"] in ENDED:
            return info
        time.sleep(interval_s)
        info = describe()


def _follow_live(describe: Describe, out: TextIO, interval_s: float, info: dict[str, Any]) -> dict[str, Any]:
    console = Console(file=out, highlight=False, markup=False, emoji=False)
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[message]}", markup=False),
    )
    with Progress(*columns, console=console, redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task("", total=100.0, message="")
        while True:
            percent = job_percent(info.get("progress"))
            message = info["progress"].get("message", "") if percent is not None else ""
            bar.update(
                task,
                description=printable(str(info["status"])),
                completed=percent or 0.0,
                message=printable(str(message)),
            )
            if info["status"] in ENDED:
                bar.refresh()
                return info
            time.sleep(interval_s)
            info = describe()
