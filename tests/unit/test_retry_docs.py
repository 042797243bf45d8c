"""The retry numbers the docs state are the ones the queues use (docs drifted once: 5 vs 8)."""

from __future__ import annotations

import re

import pytest

from jobs.queues import EMAIL, REPORT, QueueSpec
from jobs.retry import RetryPolicy
from workers.dev.servers import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"


def _row(table_doc: str, first_cell: str) -> list[str]:
    for line in (DOCS / table_doc).read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in docs/{table_doc}")


@pytest.mark.parametrize("spec", [EMAIL, REPORT], ids=lambda spec: spec.name)
def test_the_queue_table_states_each_queues_policy(spec: QueueSpec) -> None:
    stated = _row("jobs.md", f"`{spec.name}`")[-1]
    policy = spec.retry
    cap = f"{policy.cap_s / 3600:g} h" if policy.cap_s >= 3600 else f"{policy.cap_s / 60:g} min"
    assert stated == f"{policy.attempts}, base {policy.base_s:g} s, factor {policy.factor:g}, cap {cap}"


def test_the_retry_policy_table_states_every_field() -> None:
    default = RetryPolicy()
    for field in ("attempts", "base_s", "factor", "cap_s"):
        cells = _row("jobs.md", f"`{field}`")
        stated = [float(cell) for cell in cells[2:]]
        assert stated == [getattr(p, field) for p in (EMAIL.retry, REPORT.retry, default)], field


def test_email_and_reports_docs_state_the_retry_counts() -> None:
    email = (DOCS / "email.md").read_text()
    match = re.search(r"\((\d+) retries, (\d+) s \.\. (\d+) h, full jitter[;)]", email)
    assert match is not None, "docs/email.md no longer states the email retries"
    assert [int(n) for n in match.groups()] == [
        EMAIL.retry.attempts,
        int(EMAIL.retry.base_s),
        int(EMAIL.retry.cap_s // 3600),
    ]
    reports = (DOCS / "reports.md").read_text()
    match = re.search(r"\((\d+) retries, (\d+) s base", reports)
    assert match is not None, "docs/reports.md no longer states the report retries"
    assert [int(n) for n in match.groups()] == [REPORT.retry.attempts, int(REPORT.retry.base_s)]
