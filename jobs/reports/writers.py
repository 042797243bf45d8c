"""CSV, JSON Lines and HTML writers: row batches in, bytes out, one batch at a time.

Each writer holds at most one batch (CSV, JSON Lines) or a bounded preview (HTML) in
memory, whatever the number of rows. They know nothing about files or databases: they
write to any `Sink` and call `on_batch(rows_done)` after each batch.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined, Template, TemplateNotFound, select_autoescape

from cache.errors import ConfigError
from jobs.errors import JobError
from jobs.reports.registry import ReportType

HTML_MAX_ROWS = 10_000  # rows shown in the HTML table; summary, totals and chart cover all rows
CHART_WIDTH = 720
CHART_HEIGHT = 240
CHART_PAD = 40
REPORT_TEMPLATE = "reports/report.html"

Row = Sequence[Any]
Batches = Iterable[Sequence[Row]]
OnBatch = Callable[[int], None]


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True, kw_only=True)
class ReportMeta:
    """What the HTML summary shows besides the rows."""

    report_id: str
    filters: dict[str, Any]
    generated_at: dt.datetime
    rows_total: int | None = None


@dataclass(kw_only=True)
class WriteResult:
    rows: int
    truncated: bool = False  # HTML only: the table shows the first HTML_MAX_ROWS rows
    totals: dict[str, int] = field(default_factory=dict)


def utc_iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC; naive values (SQLite) are UTC already."""
    value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value.isoformat()


def utc_minute(value: dt.datetime) -> str:
    """`2026-12-01 21:05 UTC`: a moment for people to read (naive values are UTC)."""
    value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def row_converter(report: ReportType) -> Callable[[Row], Row] | None:
    """A function making a row's datetimes ISO strings, or None when no column needs it (fast path)."""
    indexes = [i for i, column in enumerate(report.columns) if column.kind == "datetime"]
    if not indexes:
        return None

    def convert(row: Row) -> Row:
        values = list(row)
        for i in indexes:
            if values[i] is not None:
                values[i] = utc_iso(values[i])
        return values

    return convert


def write_csv(
    report: ReportType, batches: Batches, sink: Sink, on_batch: OnBatch, meta: ReportMeta
) -> WriteResult:
    """RFC 4180 CSV (header row, CRLF, minimal quoting), UTF-8; NULL is an empty field."""
    del meta
    convert = row_converter(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(report.column_names)
    rows = 0
    for batch in batches:
        writer.writerows(batch if convert is None else map(convert, batch))
        rows += len(batch)
        sink.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        on_batch(rows)
    if buffer.tell():  # an empty report still gets its header
        sink.write(buffer.getvalue().encode())
    return WriteResult(rows=rows)


def write_jsonl(
    report: ReportType, batches: Batches, sink: Sink, on_batch: OnBatch, meta: ReportMeta
) -> WriteResult:
    """One JSON object per line, keyed by column name; dates and datetimes as ISO 8601 strings."""
    del meta
    names = report.column_names
    convert = row_converter(report)
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    rows = 0
    for batch in batches:
        source = batch if convert is None else map(convert, batch)
        sink.write(b"".join(dumps(dict(zip(names, row, strict=True)), option=option) for row in source))
        rows += len(batch)
        on_batch(rows)
    return WriteResult(rows=rows)


@dataclass(frozen=True, kw_only=True)
class Chart:
    """An SVG line chart in plain numbers, drawn by the template."""

    points: str  # "x,y x,y ..." for <polyline>
    width: int
    height: int
    pad: int
    y_max: int
    x_first: str
    x_last: str
    count: int


def line_chart(
    series: Sequence[tuple[str, int]],
    width: int = CHART_WIDTH,
    height: int = CHART_HEIGHT,
    pad: int = CHART_PAD,
) -> Chart | None:
    """Scale (label, value) points into the chart box; None for fewer than two points. Pure."""
    if len(series) < 2:
        return None
    y_max = max(max(value for _, value in series), 1)
    span_x = width - 2 * pad
    span_y = height - 2 * pad
    step = span_x / (len(series) - 1)
    points = " ".join(
        f"{pad + i * step:.1f},{height - pad - span_y * value / y_max:.1f}"
        for i, (_, value) in enumerate(series)
    )
    return Chart(
        points=points,
        width=width,
        height=height,
        pad=pad,
        y_max=y_max,
        x_first=series[0][0],
        x_last=series[-1][0],
        count=len(series),
    )


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return utc_iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


class _HtmlAccumulator:
    """Totals and the chart series over every row; the table over the first `limit` rows."""

    def __init__(self, report: ReportType, limit: int) -> None:
        self.limit = limit
        self.rows = 0
        self.preview: list[list[str]] = []
        self._totals = [(i, c.name) for i, c in enumerate(report.columns) if c.total]
        self.totals = {name: 0 for _, name in self._totals}
        names = report.column_names
        self._series = (
            (names.index(report.series[0]), names.index(report.series[1])) if report.series else None
        )
        self.series: dict[str, int] = {}

    def add(self, batch: Sequence[Row]) -> None:
        for row in batch:
            if len(self.preview) < self.limit:
                self.preview.append([_display(v) for v in row])
            for i, name in self._totals:
                self.totals[name] += row[i] or 0
            if self._series is not None:
                x = _display(row[self._series[0]])
                self.series[x] = self.series.get(x, 0) + (row[self._series[1]] or 0)
        self.rows += len(batch)


class ReportTemplatesMissing(JobError, ConfigError):
    """The HTML report template is not installed: a configuration problem, not a transient one."""


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("jobs", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_html(
    report: ReportType,
    batches: Batches,
    sink: Sink,
    on_batch: OnBatch,
    meta: ReportMeta,
    *,
    max_rows: int = HTML_MAX_ROWS,
) -> WriteResult:
    """A self-contained HTML page (jinja2, autoescaped): summary, totals, chart, table.

    The page loads nothing and runs no script (its Content-Security-Policy forbids both).
    """
    acc = _HtmlAccumulator(report, max_rows)
    for batch in batches:
        acc.add(batch)
        on_batch(acc.rows)
    chart = line_chart(sorted(acc.series.items())) if report.series else None
    template = _report_template()
    chunks: Iterator[str] = template.generate(
        report=report,
        meta=meta,
        rows=acc.rows,
        totals=acc.totals,
        preview=acc.preview,
        truncated=acc.rows > len(acc.preview),
        chart=chart,
        series_label=report.series[1] if report.series else "",
        generated_at=utc_minute(meta.generated_at),
        generated_iso=utc_iso(meta.generated_at),
    )
    pending: list[str] = []
    for chunk in chunks:
        pending.append(chunk)
        if len(pending) >= 512:
            sink.write("".join(pending).encode())
            pending.clear()
    sink.write("".join(pending).encode())
    return WriteResult(rows=acc.rows, truncated=acc.rows > len(acc.preview), totals=dict(acc.totals))


def _report_template() -> Template:
    try:
        return _environment().get_template(REPORT_TEMPLATE)
    except (TemplateNotFound, ValueError) as exc:  # ValueError: PackageLoader found no directory
        raise ReportTemplatesMissing(
            f"HTML report template jobs/templates/{REPORT_TEMPLATE} is missing: the installation is "
            f"incomplete ({type(exc).__name__}: {exc})"
        ) from None


Writer = Callable[[ReportType, Batches, Sink, OnBatch, ReportMeta], WriteResult]
WRITERS: dict[str, Writer] = {"csv": write_csv, "jsonl": write_jsonl, "html": write_html}
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "html": "html"}
CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "html": "text/html"}
