"""The dashboard's job list fits the window, whatever a job's description (marker `ops`).

RQ describes a job by its call, arguments included: a report job's runs to thousands of
characters on one line. The list shows it cut with an ellipsis, the whole text in the
row's tooltip and on the job's page, so the Age and Actions columns stay on screen.
Driven in headless Chromium at 1400x900, as an operator's laptop shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result

from jobs.queues import KryonixQueue
from jobs.serialization import JSONSerializer
from tests.integration.dashboard_fixtures import Dashboard

pytestmark = [pytest.mark.ops, pytest.mark.timeout(120)]

VIEWPORT = {"width": 1400, "height": 900}
# Long, one line, with markup and quotes that must stay text in the cell and its tooltip.
LONG = "jobs.reports.jobs.build_report(" + ", ".join(f"'<b>\"f{n}\"</b>'" for n in range(200)) + ")"


@pytest.fixture
def page(browser: Any) -> Any:
    context = browser.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


def _cells(page: Any, job_id: str) -> dict[str, dict[str, float]]:
    row = page.locator(f"tr[data-role=job][data-job-id='{job_id}']")
    return {
        "description": row.locator("span.description").bounding_box(),
        "age": row.locator("td").nth(1).bounding_box(),
        "delete": row.locator("[data-role=delete-job-btn]").bounding_box(),
    }


def _failed(client: redis.Redis) -> Job:
    """A failed report job whose traceback is one long line too."""
    job = Job.create(
        "jobs.diagnostics.noop",
        description=LONG,
        connection=client,
        serializer=JSONSerializer,
        origin="report",
        id="long-failed",
    )
    job.save()
    FailedJobRegistry("report", connection=client, serializer=JSONSerializer).add(job, ttl=3600)
    Result.create_failure(job, ttl=3600, exc_string=f"Traceback (most recent call last):\nValueError: {LONG}")
    job.set_status("failed")
    return job


@pytest.mark.parametrize("registry", ["queued", "failed"])
def test_a_2000_character_description_leaves_age_and_delete_on_screen(
    dashboard: Dashboard, primary: redis.Redis, page: Any, tmp_path: Path, registry: str
) -> None:
    assert len(LONG) > 2000
    if registry == "queued":
        queue = KryonixQueue("report", connection=primary)
        job = queue.enqueue("jobs.diagnostics.noop", description=LONG, job_id="long-description")
    else:
        job = _failed(primary)
    page.goto(f"{dashboard.origin}/0/view/jobs/report/{registry}/8/asc/1")
    page.wait_for_selector(f"tr[data-job-id='{job.id}']", timeout=20_000)
    page.screenshot(path=str(tmp_path / f"jobs-{registry}-1400.png"))
    cells = _cells(page, job.id)
    for name in ("age", "delete"):
        box = cells[name]
        assert box is not None, name
        assert box["x"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"], (name, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"], "no sideways scroll"

    description = page.locator(f"tr[data-job-id='{job.id}'] span.description")
    assert description.evaluate("e => getComputedStyle(e).textOverflow") == "ellipsis"
    assert description.evaluate("e => e.scrollWidth > e.clientWidth"), "the text is cut, not wrapped"
    assert cells["description"]["height"] < 40, "one line"
    assert description.text_content() == LONG, "the markup is text, not elements"
    assert description.get_attribute("title") == LONG, "the whole description on hover"
    assert page.locator("table#jobs b").count() == 0
