"""Writers, chart, progress and pacing arithmetic: pure, no database (marker `reports`)."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gc
import html.parser
import io
import json
from collections.abc import Sequence
from typing import Any

import pytest

from jobs.reports.build import _paced, gc_paused, pace_delay_s, progress_percent
from jobs.reports.registry import get_report_type
from jobs.reports.writers import (
    ReportMeta,
    line_chart,
    row_converter,
    utc_iso,
    write_csv,
    write_html,
    write_jsonl,
)

pytestmark = pytest.mark.reports

USERS = get_report_type("users")
ACTIVITY = get_report_type("activity")
TRICKY = [
    "Smith, Jones & Co",
    'The "Quoted" One',
    "two\nlines",
    "cr\r\nlf",
    "<script>alert(1)</script>",
    "Zoë",
]
META = ReportMeta(
    report_id="r1", filters={"status": "active"}, generated_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
)


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()


def _user_rows(n: int) -> list[tuple[Any, ...]]:
    created = dt.datetime(2025, 5, 6, 7, 8, 9)  # naive, as SQLite returns it
    return [
        (i, f"u{i}@example.com", TRICKY[i % len(TRICKY)], 1, "Acme, Inc.", "active", created, None)
        for i in range(1, n + 1)
    ]


def _batches(rows: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def test_csv_round_trips_commas_quotes_and_newlines() -> None:
    rows = _user_rows(12)
    sink, progress = Sink(), []
    result = write_csv(USERS, _batches(rows, 5), sink, progress.append, META)
    assert result.rows == 12
    assert progress == [5, 10, 12], "progress once per batch"
    assert len(sink.chunks) == 3, "one write per batch"
    parsed = list(csv.reader(io.StringIO(sink.text, newline="")))
    assert parsed[0] == list(USERS.column_names)
    assert [r[2] for r in parsed[1:]] == [r[2] for r in rows]
    assert parsed[1][6] == "2025-05-06T07:08:09+00:00" and parsed[1][7] == ""
    assert sink.text.startswith("id,email,name") and sink.text.count('"The ""Quoted"" One"') == 2


def test_empty_csv_still_has_its_header() -> None:
    sink = Sink()
    assert write_csv(USERS, [], sink, lambda _: None, META).rows == 0
    assert sink.text == ",".join(USERS.column_names) + "\r\n"


def test_jsonl_is_one_object_per_line_with_iso_dates() -> None:
    rows = _user_rows(7)
    sink = Sink()
    assert write_jsonl(USERS, _batches(rows, 3), sink, lambda _: None, META).rows == 7
    lines = sink.text.split("\n")
    assert lines[-1] == "" and len(lines) == 8, "every record ends in a newline, none inside a record"
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["name"] for r in records] == [r[2] for r in rows]
    assert records[0]["created_at"] == "2025-05-06T07:08:09+00:00" and records[0]["last_login_at"] is None


class _Cells(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.scripts = 0
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._in_td = tag == "td"
        self.scripts += tag == "script"
        if tag == "td":
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_td = False if tag == "td" else self._in_td

    def handle_data(self, data: str) -> None:
        if self._in_td:
            self.cells[-1] += data


def test_html_escapes_every_value_and_summarizes() -> None:
    rows = _user_rows(6)
    sink = Sink()
    result = write_html(USERS, _batches(rows, 4), sink, lambda _: None, META)
    page = sink.text
    assert result.rows == 6 and not result.truncated
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = _Cells()
    parser.feed(page)
    assert parser.scripts == 0
    names = parser.cells[2 :: len(USERS.columns)]
    assert names == [r[2] for r in rows], "the browser shows exactly the stored text"
    assert '<dd id="row-count">6</dd>' in page
    assert "default-src 'none'" in page
    assert "<svg" not in page, "users have no time series"


def test_html_table_is_bounded_but_totals_and_chart_cover_every_row() -> None:
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=d) for d in range(10)]
    rows = [(day, c, f"Co {c}", 10 * c, 1) for day in days for c in (1, 2)]  # 20 rows, events 30/day
    sink = Sink()
    result = write_html(ACTIVITY, _batches(rows, 7), sink, lambda _: None, META, max_rows=5)
    page = sink.text
    assert result.rows == 20 and result.truncated
    assert result.totals == {"events": 300}
    assert page.count("<tr>") == 1 + 5, "header plus the first 5 rows"
    assert 'id="truncated"' in page and "first 5 of 20 rows" in page
    assert '<dd class="total" data-column="events">300</dd>' in page
    assert "<svg" in page and "2026-01-01" in page and "2026-01-10" in page


@pytest.mark.parametrize(
    ("series", "expected_points"),
    [
        ([("a", 0), ("b", 10)], "40.0,200.0 680.0,40.0"),
        ([("a", 5), ("b", 5), ("c", 0)], "40.0,40.0 360.0,40.0 680.0,200.0"),
        ([("a", 0), ("b", 0)], "40.0,200.0 680.0,200.0"),
    ],
)
def test_line_chart_scales_into_the_box(series: list[tuple[str, int]], expected_points: str) -> None:
    chart = line_chart(series)
    assert chart is not None
    assert chart.points == expected_points
    assert (chart.x_first, chart.x_last, chart.count) == (series[0][0], series[-1][0], len(series))


def test_line_chart_needs_two_points() -> None:
    assert line_chart([]) is None and line_chart([("a", 1)]) is None


def test_datetimes_become_utc_iso() -> None:
    assert utc_iso(dt.datetime(2025, 1, 1, 12)) == "2025-01-01T12:00:00+00:00"
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert utc_iso(dt.datetime(2025, 1, 1, 12, tzinfo=plus_two)) == "2025-01-01T10:00:00+00:00"
    assert row_converter(ACTIVITY) is None, "no datetime column: rows pass through untouched"


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [(0, 100, 0.0), (50, 100, 50.0), (100, 100, 99.0), (120, 100, 99.0), (5, 0, 0.0)],
)
def test_progress_percent_never_claims_done_before_commit(done: int, total: int, expected: float) -> None:
    assert progress_percent(done, total) == expected


@pytest.mark.parametrize(
    ("rows_done", "rate", "elapsed", "expected"),
    [(1000, None, 0.0, 0.0), (1000, 1000.0, 0.25, 0.75), (1000, 1000.0, 2.0, 0.0), (0, 10.0, 0.0, 0.0)],
)
def test_pace_delay(rows_done: int, rate: float | None, elapsed: float, expected: float) -> None:
    assert pace_delay_s(rows_done, rate, elapsed) == pytest.approx(expected)


def test_paced_batches_sleep_on_a_fake_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    batches = [[(i,)] * 100 for i in range(4)]
    assert list(_paced(iter(batches), 200.0, lambda: now[0], sleep)) == batches
    assert slept == [0.5, 0.5, 0.5, 0.5] and now[0] == 2.0
    slept.clear()
    assert len(list(_paced(iter(batches), None, lambda: now[0], sleep))) == 4 and slept == []


def test_gc_is_paused_while_streaming_and_restored() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("write failed")
    assert gc.isenabled(), "restored even when the report fails"
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()


def test_html_shows_when_it_was_generated_to_the_minute_in_utc() -> None:
    sink = Sink()
    when = dt.datetime(2026, 12, 1, 22, 5, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    write_html(
        USERS, _batches(_user_rows(1), 1), sink, lambda _: None, dataclasses.replace(META, generated_at=when)
    )
    assert (
        '<dd><time datetime="2026-12-01T21:05:09.123456+00:00">2026-12-01 21:05 UTC</time></dd>' in sink.text
    )
