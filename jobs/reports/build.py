"""Build one report file: query, stream, write, commit. No Redis here: the job adds that.

`build_report` is what the job runs and what the benchmark measures; progress and
pacing arrive as callbacks so the arithmetic stays pure and testable.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from jobs.reports.output import AtomicReportFile
from jobs.reports.queries import build_query, stream_rows
from jobs.reports.registry import ReportType, filters_as_json
from jobs.reports.writers import EXTENSIONS, WRITERS, ReportMeta

DEFAULT_BATCH_ROWS = 5_000  # rows per fetch, per write and per progress update (one Redis write)

ProgressFn = Callable[[int, int], None]  # (rows done, rows total)


@dataclass(frozen=True, kw_only=True)
class ReportFile:
    """A finished report; `as_result()` is the job's return value."""

    report_id: str
    report_type: str
    format: str
    path: Path
    rows: int
    size_bytes: int
    sha256: str
    filters: dict[str, Any]
    generated_at: dt.datetime
    truncated: bool = False
    note: str | None = None  # an empty report says which filters matched nothing

    def as_result(self) -> dict[str, Any]:
        note = {} if self.note is None else {"note": self.note}
        return {
            "report_id": self.report_id,
            "report_type": self.report_type,
            "format": self.format,
            "path": str(self.path),
            "rows": self.rows,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "filters": self.filters,
            "generated_at": self.generated_at.isoformat(),
            "truncated": self.truncated,
            **note,
        }


def empty_report_note(report: ReportType, filters: Mapping[str, Any]) -> str:
    """Why a report has no rows, in its filters' terms. Pure.

    E.g. `0 rows: no activity rows for company_id=42 between 2026-01-01 and 2026-01-31`:
    an empty file alone does not tell a wrong company from a range with no data.
    """
    values = filters_as_json({k: v for k, v in filters.items() if v is not None})
    in_ranges = {name for r in report.ranges for name in (r.start, r.end)}
    parts = [f"{name}={values[name]}" for name in values if name not in in_ranges]
    words = [f"for {', '.join(parts)}"] if parts else []
    for r in report.ranges:
        start, end = values.get(r.start), values.get(r.end)
        stem = r.start.removesuffix("_from")
        subject = "" if stem == "date" else f"{stem} "
        if start is not None and end is not None:
            words.append(f"{subject}between {start} and {end}")
        elif start is not None:
            words.append(f"{subject}from {start}")
        elif end is not None:
            words.append(f"{subject}until {end}")
    return (
        f"0 rows: no {report.name} rows {' '.join(words)}"
        if words
        else f"0 rows: no {report.name} rows at all"
    )


def progress_percent(done: int, total: int) -> float:
    """Percent for the progress bar; never 100 before the file is committed. Pure."""
    if total <= 0:
        return 0.0
    return min(99.0, 100.0 * done / total)


def pace_delay_s(rows_done: int, rows_per_s: float | None, elapsed_s: float) -> float:
    """How long to sleep so `rows_done` took at least rows_done / rows_per_s seconds. Pure."""
    if not rows_per_s:
        return 0.0
    return max(0.0, rows_done / rows_per_s - elapsed_s)


def _paced(
    batches: Iterator[Sequence[Sequence[Any]]],
    rows_per_s: float | None,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[Sequence[Sequence[Any]]]:
    started = monotonic()
    done = 0
    for batch in batches:
        yield batch
        done += len(batch)
        delay = pace_delay_s(done, rows_per_s, monotonic() - started)
        if delay > 0:
            sleep(delay)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector while rows stream through.

    Rows are acyclic (tuples of scalars), so reference counting frees each batch as soon
    as it is written. Left on, the collector promotes every batch that outlives a few
    young collections and then re-traverses every long-lived object of the process
    (all of SQLAlchemy, jinja2, rq...) about every fourth batch, finding nothing: a
    fifth of the CPU time of a large report. Restored (and never left off) on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_report(
    engine: Engine,
    report: ReportType,
    filters: Mapping[str, Any],
    fmt: str,
    directory: Path,
    report_id: str,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_progress: ProgressFn | None = None,
    rows_per_s: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: dt.datetime | None = None,
) -> ReportFile:
    """Write `report` for validated `filters` as `directory/<report_id>.<ext>`, atomically.

    Args:
        rows_per_s: pace the read (spares a busy database); None reads flat out.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was left on disk.
        OSError: the file could not be written (disk full, permissions); nothing left.
    """
    query = build_query(report, filters, guard_formulas=fmt == "csv")
    generated_at = now or dt.datetime.now(dt.UTC)
    meta_filters = filters_as_json(filters)
    with (
        AtomicReportFile(directory, report_id, EXTENSIONS[fmt]) as out,
        stream_rows(engine, query, batch_rows) as (total, batches),
    ):
        meta = ReportMeta(
            report_id=report_id, filters=meta_filters, generated_at=generated_at, rows_total=total
        )

        def on_batch(done: int) -> None:
            if on_progress is not None:
                on_progress(done, total)

        with gc_paused():
            written = WRITERS[fmt](report, _paced(batches, rows_per_s, monotonic, sleep), out, on_batch, meta)
        path = out.commit()
    return ReportFile(
        report_id=report_id,
        report_type=report.name,
        format=fmt,
        path=path.resolve(),
        rows=written.rows,
        size_bytes=out.size,
        sha256=out.sha256,
        filters=meta_filters,
        generated_at=generated_at,
        truncated=written.truncated,
        note=empty_report_note(report, filters) if written.rows == 0 else None,
    )
