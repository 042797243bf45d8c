"""A 1,000,000-row CSV report: our streamed writer against fetch-all-then-csv.writer.

`python -m bench reports`. Seeds a SQLite database in a temporary directory with
1,000,000 activity rows (seeding is not measured), then writes the `activity_detail`
report over all of them, alternating our way and the naive baseline, each run in its
own child process so peak RSS (VmHWM) belongs to that run alone:

- streamed: `jobs.reports.build.build_report`, the code the report job runs (rows
  fetched `yield_per` at a time, CSV written per batch, SHA-256 on the fly, atomic
  rename); only the per-batch Redis progress write of the job is left out.
- baseline: the same SQL, `fetchall()`, then `csv.writer(...).writerows(rows)`.

Both files must be byte-identical, or the benchmark fails.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS = 1_000_000
ROUNDS = 5  # interleaved; medians, because the machines are noisy
UNTIL = dt.date(2026, 1, 31)
DAYS = 365
CHILD_TIMEOUT_S = 600  # one run on a very slow machine; bounds the benchmark
FILTERS = {"date_from": (UNTIL - dt.timedelta(days=DAYS - 1)).isoformat(), "date_to": UNTIL.isoformat()}


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sha256(path: Path) -> str:
    """Chunked, so checking the file does not raise this run's peak RSS."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _child(mode: str, url: str, out_dir: str) -> dict[str, Any]:
    from cache.appcache.platform import make_engine
    from jobs.reports.build import build_report
    from jobs.reports.queries import build_query
    from jobs.reports.registry import get_report_type, validate_filters

    report = get_report_type("activity_detail")
    filters = validate_filters(report, FILTERS)
    engine = make_engine(url)
    started, cpu_started = time.perf_counter(), _cpu_s()
    if mode == "streamed":
        built = build_report(engine, report, filters, "csv", Path(out_dir), "streamed")
        rows, path = built.rows, built.path
    else:
        query = build_query(report, filters, guard_formulas=True)
        with engine.connect() as conn:
            fetched = conn.execute(query.rows).fetchall()
        path = Path(out_dir) / "baseline.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(report.column_names)
            writer.writerows(fetched)
        rows = len(fetched)
    seconds, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_started
    digest = _sha256(path)
    path.unlink()
    return {"rows": rows, "seconds": seconds, "cpu_s": cpu_s, "peak_rss_mb": _peak_rss_mb(), "sha256": digest}


def _run_child(mode: str, url: str, out_dir: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.reports", "--child", mode, url, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _seed(url: str) -> float:
    from cache.appcache.platform import make_engine
    from jobs.reports.seed import SeedPlan, seed_demo

    engine = make_engine(url)
    try:
        plan = SeedPlan(companies=500, users=20_000, days=DAYS, activity=ROWS, until=UNTIL)
        return seed_demo(engine, plan, reset=True, batch_rows=20_000).seconds
    finally:
        engine.dispose()


def _row(
    metric: str, unit: str, value: float, baseline: float, target: float, better: str, **extra: Any
) -> dict[str, Any]:
    return {
        "bench": "reports",
        "metric": metric,
        "value": round(value, 1),
        "unit": unit,
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 3),
        "target": target,
        "better": better,
        **extra,
    }


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kx-bench-reports-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        seed_s = _seed(url)
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        runs: dict[str, list[dict[str, Any]]] = {"streamed": [], "baseline": []}
        for _ in range(ROUNDS):  # interleaved, so a noisy neighbour hurts both alike
            for mode in runs:
                runs[mode].append(_run_child(mode, url, out_dir))
        digests = {r["sha256"] for rs in runs.values() for r in rs}
        rows = {r["rows"] for rs in runs.values() for r in rs}
        if len(digests) != 1 or rows != {ROWS}:
            raise RuntimeError(f"streamed and baseline files differ: rows {rows}, digests {digests}")

        def median(mode: str, key: str) -> float:
            return statistics.median(
                r[key] if key != "rows_per_s" else r["rows"] / r["seconds"] for r in runs[mode]
            )

        # CPU seconds are less disturbed by other processes than wall time: context for the rows/s ratio.
        common = {
            "rows": ROWS,
            "rounds": ROUNDS,
            "seed_s": round(seed_s, 1),
            "database": "sqlite",
            "cpu_s": round(median("streamed", "cpu_s"), 2),
            "baseline_cpu_s": round(median("baseline", "cpu_s"), 2),
        }
        return [
            _row(
                "csv_rows_per_s",
                "rows/s",
                median("streamed", "rows_per_s"),
                median("baseline", "rows_per_s"),
                0.8,
                "higher",
                **common,
            ),
            _row(
                "csv_peak_rss",
                "MiB",
                median("streamed", "peak_rss_mb"),
                median("baseline", "peak_rss_mb"),
                0.2,
                "lower",
                **common,
            ),
        ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        for line in run():
            print(json.dumps(line))
