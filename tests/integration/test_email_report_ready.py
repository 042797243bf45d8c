"""The "report ready" email as the SMTP server receives it: subject, greeting, row count."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from jobs.email.jobs import send_email
from jobs.enqueue import fetch_job
from jobs.reports import notify
from jobs.reports.build import ReportFile
from tests.integration.email_fixtures import SmtpServer

pytestmark = pytest.mark.email


def _report(directory: Path, rows: int) -> ReportFile:
    path = directory / "r-7.csv"
    path.write_bytes(b"day,count\r\n2026-01-01,5\r\n")
    return ReportFile(
        report_id="r-7",
        report_type="activity_detail",
        format="csv",
        path=path,
        rows=rows,
        size_bytes=path.stat().st_size,
        sha256="ab" * 32,
        filters={},
        generated_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


def _send_all(job_ids: list[str]) -> None:
    for job_id in job_ids:
        job = fetch_job(job_id=job_id)
        assert job is not None
        send_email(*job.args)


@pytest.mark.parametrize(("rows", "counted"), [(45000, "(45,000 rows)"), (1, "(1 row)")])
def test_the_ready_email_reads_right(email_env: SmtpServer, tmp_path: Path, rows: int, counted: str) -> None:
    recipients = ["ana@example.com", ("José Silva", "jose@example.com")]
    _send_all(notify.email_ready(recipients, _report(tmp_path, rows), "Activity records"))
    by_address = {r.rcpt_tos[0]: r.message for r in email_env.received}
    assert set(by_address) == {"ana@example.com", "jose@example.com"}
    for message in by_address.values():
        assert message["Subject"] == 'Your report "Activity records" is ready'
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f'Your report "Activity records" is ready {counted}.' in text
    greetings = {
        address: message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for address, message in by_address.items()
    }
    assert greetings["ana@example.com"].splitlines()[0] == "Hello,"  # not "Hello ana,"
    assert greetings["jose@example.com"].splitlines()[0] == "Hello José Silva,"
    assert by_address["jose@example.com"]["To"].addresses[0].display_name == "José Silva"
