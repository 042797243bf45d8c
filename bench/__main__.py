"""`python -m bench NAME [NAME ...] [--option value ...]` or `python -m bench all`: one JSON object per line.

Each benchmark is a module `bench.<name>` with `run() -> list[dict]`; it starts the
servers it needs and measures its baseline in the same run. Options (everything from the
first `--`) go to `run(argv)` of the modules that take them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

import bench

# Modules in bench/ that are helpers, not benchmarks.
NOT_BENCHMARKS = {"common", "baseline_jobs", "peer_apps"}
# Run by name only: `soak` is a long robustness run (workers SIGKILLed, Redis restarted).
NOT_IN_ALL = {"soak"}


def available() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules([str(Path(bench.__file__).parent)])]
    return sorted(n for n in names if not n.startswith("_") and n not in NOT_BENCHMARKS)


def main(argv: list[str]) -> int:
    names = available()
    split = next((i for i, arg in enumerate(argv) if arg.startswith("--")), len(argv))
    argv, options = argv[:split], argv[split:]
    wanted = [n for n in names if n not in NOT_IN_ALL] if argv == ["all"] else argv
    if not argv:
        print(f"usage: python -m bench NAME|all   (benchmarks: {', '.join(names)})", file=sys.stderr)
        return 2
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "host": platform.node()}
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        takes_options = bool(inspect.signature(module.run).parameters)
        for row in module.run(options) if takes_options else module.run():
            row.setdefault("bench", name)
            row.setdefault("machine", machine)
            print(json.dumps(row), flush=True)
        print(f"# {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
