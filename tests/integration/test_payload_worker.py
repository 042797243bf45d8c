"""Hand-written email and report jobs in a real worker: the enqueue API's checks run there too.

Each hostile job is written straight into Redis (HSET + RPUSH, JSON data, as RQ stores a
job, with retries left), bypassing the enqueue API as whoever can write to Redis would.
A real `rq worker` (KryonixWorker, from the README's environment) processes it next to
a good job: the hostile one ends in the failed registry as a permanent failure naming
its reason, after one attempt, and the SMTP sink (aiosmtpd) never hears of it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import Engine

from cache.appcache.platform import activity, companies, projects, users
from jobs.email import jobs as email_jobs
from jobs.email import templates
from jobs.email.api import SEND_BULK_CHUNK, SEND_EMAIL, build_request
from jobs.email.templates import TemplateLibrary
from jobs.errors import PermanentJobError
from jobs.queues import KryonixQueue
from jobs.reports import jobs as report_jobs
from jobs.reports import writers
from jobs.reports.registry import REPORT_TYPES
from tests.hostile_payloads import HOSTILE_CHUNKS, HOSTILE_EMAILS, HOSTILE_REPORTS, chunk_payload
from tests.integration.email_fixtures import SmtpServer
from tests.integration.processes import Processes, log_of
from tests.integration.reports_fixtures import (
    T0,
    db_url,
    insert_known,
    read_csv,
    visible_files,
)
from workers.cli.failed import FailedJob, list_failed

pytestmark = pytest.mark.security

DIGEST = "jobs.email.digest.send_failed_jobs_digest"
REPORT = "jobs.reports.jobs.generate_report"
SCHEDULED_REPORT = "jobs.reports.jobs.generate_scheduled_report"
WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}


def write_job(primary: redis.Redis, queue: str, func: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """One job as RQ stores it, JSON-serialized, with 3 retries left: written by hand, not enqueued."""
    job_id = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    primary.hset(
        f"rq:job:{job_id}",
        mapping={
            "data": json.dumps([func, None, args, kwargs]),
            "origin": queue,
            "status": "queued",
            "created_at": now,
            "enqueued_at": now,
            "description": "hand-written",
            "timeout": 60,
            "retries_left": 3,
            "retry_intervals": json.dumps([1, 1, 1]),
        },
    )
    primary.sadd("rq:queues", f"rq:queue:{queue}")
    primary.rpush(f"rq:queue:{queue}", job_id)
    return job_id


def assert_refused(
    primary: redis.Redis, queue: str, refused: dict[str, tuple[str, str]], prefix: str
) -> dict[str, FailedJob]:
    """Every job of `refused` (id -> (label, expected reason part)) failed permanently, once."""
    failed = {row.id: row for row in list_failed(primary, queue=queue)}
    for job_id, (label, expected) in refused.items():
        row = failed.get(job_id)
        assert row is not None, f"{label}: not in the failed registry"
        assert (row.kind, row.attempts) == ("permanent", 1), f"{label}: {row}"
        assert row.reason.startswith(prefix) and expected in row.reason, f"{label}: {row.reason}"
    assert set(failed) == set(refused), "only the hostile jobs failed"
    assert KryonixQueue(queue, connection=primary).scheduled_job_registry.count == 0, "nothing retried"
    return failed


def test_hand_written_hostile_email_jobs_fail_permanently_and_send_nothing(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    good = build_request("good@example.com", "welcome", WELCOME).to_payload()
    refused: dict[str, tuple[str, str]] = {}
    for label, payload, expected in HOSTILE_EMAILS:
        refused[write_job(primary, "email", SEND_EMAIL, [payload], {})] = (label, expected)
    refused[write_job(primary, "email", SEND_EMAIL, [good, "x"], {})] = (
        "extra argument",
        "unexpected argument",
    )
    refused[write_job(primary, "email", SEND_EMAIL, [good], {"bcc": "x@evil.example"})] = (
        "extra keyword",
        "keyword ['bcc']",
    )
    for label, args, expected in [
        ("digest to a Bcc line", [["ops@example.com\r\nBcc: all@evil.example"]], "header injection refused"),
        ("digest to 60 recipients", [[f"user{i}" for i in range(60)]], "60 recipients exceed the limit"),
        ("digest over a year", [["ops@example.com"], 9000], "since_hours must be an integer from 1 to 744"),
    ]:  # fmt: skip
        refused[write_job(primary, "email", DIGEST, args, {})] = (label, expected)
    good_id = write_job(primary, "email", SEND_EMAIL, [good], {})
    worker = processes.worker("email", burst=True, **smtp_server.env())
    assert worker.wait(120) == 0, log_of(worker)
    failed = assert_refused(primary, "email", refused, "")
    prefixes = ("invalid email job: ", "send_email refused: ", "invalid digest job: ")
    assert all(row.reason.startswith(prefixes) for row in failed.values())
    assert good_id not in failed
    assert [r.rcpt_tos for r in smtp_server.received] == [["good@example.com"]], "nothing else reached SMTP"
    assert b"Bcc" not in smtp_server.received[0].data


def test_hand_written_hostile_bulk_chunks_fail_permanently_and_send_nothing(
    primary: redis.Redis, processes: Processes, smtp_server: SmtpServer
) -> None:
    refused = {
        write_job(primary, "email", SEND_BULK_CHUNK, [payload], {}): (label, expected)
        for label, payload, expected in HOSTILE_CHUNKS
    }
    good = chunk_payload(
        bulk_id=uuid.uuid4().hex,
        recipients=[{"to": ["Good", "good-bulk@example.com"], "context": {"name": "Good"}}],
    )
    good_id = write_job(primary, "email", SEND_BULK_CHUNK, [good], {})
    worker = processes.worker("email", burst=True, **smtp_server.env())
    assert worker.wait(120) == 0, log_of(worker)
    failed = assert_refused(primary, "email", refused, "invalid bulk chunk job: ")
    assert good_id not in failed
    assert [r.rcpt_tos for r in smtp_server.received] == [["good-bulk@example.com"]]


@pytest.mark.timeout(180)
def test_hand_written_hostile_report_jobs_fail_permanently(
    db_engine: Engine, primary: redis.Redis, processes: Processes, reports_dir: Path
) -> None:
    insert_known(db_engine)
    refused = {
        write_job(primary, "report", REPORT, list(args), kwargs): (label, expected)
        for label, args, kwargs, expected in HOSTILE_REPORTS
    }
    for label, kwargs, expected in [
        ("report id with a trailing newline", {"report_id": "x\n"}, "report id 'x\\n' must be"),
        ("report id with a path", {"report_id": "../x"}, "report id '../x' must be"),
        ("unknown argument (a field)", {"columns": ["password"]}, "keyword ['columns']"),
        ("notify_email outside REPORTS_NOTIFY_DOMAINS", {"notify_email": "eve@evil.example"},
         "outside REPORTS_NOTIFY_DOMAINS (example.com)"),
    ]:  # fmt: skip
        refused[write_job(primary, "report", REPORT, ["users", {}], kwargs)] = (label, expected)
    scheduled = write_job(
        primary,
        "report",
        SCHEDULED_REPORT,
        ["nightly", "users", {}],
        {"recipients": ["Eve <eve@evil.example>"]},
    )
    refused[scheduled] = ("scheduled report to a named recipient outside", "outside REPORTS_NOTIFY_DOMAINS")
    good_id = write_job(primary, "report", REPORT, ["users", {}], {"notify_email": "ops@example.com"})
    worker = processes.worker(
        "report",
        burst=True,
        DATABASE_URL=db_url(db_engine),
        REPORTS_DIR=str(reports_dir),
        REPORTS_NOTIFY_DOMAINS="example.com",
    )
    assert worker.wait(150) == 0, log_of(worker)
    failed = assert_refused(primary, "report", refused, "")
    assert all(
        row.reason.startswith(("invalid report definition: ", "generate_report refused: ", "report id "))
        for row in failed.values()
    ), [row.reason for row in failed.values()]
    assert visible_files(reports_dir) == [f"{good_id}.csv"], "no file for any hostile job"
    assert primary.llen("rq:queue:email") == 1, "one 'report ready' email, for the good job only"


HOSTILE_CELLS = [
    "\n=1+1", "\r=1+1", "\t=1+1", " =1+1", "  @SUM(A1)", "\x0b=1", "\x0c+1", "\x1f-1", "\x7f=1",
    "\u00a0=1", "\u2028=1", "\u3000@A1", "\ufeff=1", "=1", "+1", "-1", "@A1",
]  # fmt: skip


def _hostile_dataset(engine: Engine) -> None:
    """Every text field of every table starts with a formula a spreadsheet could run."""
    cells = iter(HOSTILE_CELLS * 10)
    with engine.begin() as conn:
        conn.execute(
            companies.insert(),
            [{"id": i, "name": next(cells), "plan": next(cells), "created_at": T0} for i in (1, 2)],
        )
        conn.execute(
            projects.insert(),
            [
                {"id": i, "company_id": i, "name": next(cells), "status": "active", "created_at": T0}
                for i in (1, 2)
            ],
        )
        conn.execute(
            users.insert(),
            [
                {"id": i, "company_id": 1 + i % 2, "email": f"{next(cells)}{i}@x.test", "name": next(cells),
                 "status": next(cells), "created_at": T0, "last_login_at": None}
                for i in range(1, 9)
            ],
        )  # fmt: skip
        conn.execute(
            activity.insert(),
            [
                {"id": i, "company_id": 1 + i % 2, "user_id": i, "project_id": 1 + i % 2,
                 "day": dt.date(2025, 6, 1), "action": next(cells), "count": 1}
                for i in range(1, 9)
            ],
        )  # fmt: skip


@pytest.mark.parametrize("report_type", sorted(REPORT_TYPES))
def test_csv_guards_every_text_cell(db_engine: Engine, report_settings: Path, report_type: str) -> None:
    _hostile_dataset(db_engine)
    filters = {}
    for date_range in REPORT_TYPES[report_type].ranges:  # all of 2025, where the type has a range
        filters.update({date_range.start: "2025-01-01", date_range.end: "2025-12-31"})
    result = report_jobs.generate_report(report_type, filters, report_id=f"guard-{report_type}")
    header, *rows = read_csv(Path(result["path"]))
    text_columns = [i for i, c in enumerate(REPORT_TYPES[report_type].columns) if c.kind == "str"]
    assert rows and text_columns
    for row in rows:
        for i in text_columns:
            assert row[i].startswith("'"), f"{report_type}.{header[i]} = {row[i]!r} is not guarded"


def test_missing_email_templates_are_a_permanent_configuration_failure(
    email_env: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = build_request("ana@example.com", "welcome", WELCOME).to_payload()
    monkeypatch.setattr(templates, "_default", TemplateLibrary(tmp_path / "not-installed"))
    with pytest.raises(PermanentJobError, match=r"configuration error: email templates directory .* missing"):
        email_jobs.send_email(payload)
    assert email_env.received == []


def test_missing_report_template_is_a_permanent_configuration_failure(
    db_engine: Engine, report_settings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_installed = Environment(loader=FileSystemLoader(tmp_path / "not-installed"))
    monkeypatch.setattr(writers, "_environment", lambda: not_installed)
    with pytest.raises(PermanentJobError, match=r"configuration error: HTML report template .* is missing"):
        report_jobs.generate_report("users", {}, format="html", report_id="no-template")
    assert visible_files(report_settings) == []
