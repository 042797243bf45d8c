"""A job hash RQ's restore fails on in an unexpected way breaks no dashboard page (marker `security`).

RQ's `parse_timeout` asserts on a `timeout` such as `1.5`: the AssertionError was not
among the errors the dashboard turns into an "undecodable" row, so the job's page and
every list holding the entry answered 500.
"""

from __future__ import annotations

import json

import pytest
import redis
from rq.job import Job

from jobs.serialization import JSONSerializer
from tests.integration.dashboard_fixtures import QUEUE, Dashboard

pytestmark = [pytest.mark.security, pytest.mark.timeout(180)]

GARBLED_FIELDS = [{"timeout": "1.5"}, {"timeout": "1e3"}]


@pytest.mark.parametrize("fields", GARBLED_FIELDS, ids=lambda f: f"timeout={f['timeout']}")
def test_a_timeout_rq_asserts_on_is_an_undecodable_row_not_a_500(
    dashboard: Dashboard, primary: redis.Redis, fields: dict[str, str]
) -> None:
    job = Job.create(
        "jobs.diagnostics.noop", connection=primary, serializer=JSONSerializer, origin=QUEUE, id="garbled"
    )
    job.save()
    primary.hset(job.key, mapping=fields)
    primary.rpush(f"rq:queue:{QUEUE}", "garbled")

    reply = dashboard.get(f"/0/data/jobs/{QUEUE}/queued/20/asc/1.json")
    assert reply.status == 200, reply.text()[-500:]
    rows = {row["id"]: row["description"] for row in json.loads(reply.body)["jobs"]}
    assert rows["garbled"].startswith("undecodable")
    page = dashboard.get("/0/data/job/garbled.json")
    assert page.status == 422, page.text()[-500:]
    assert "job data is undecodable" in page.text()
