"""The dashboard against hostile job data and hostile pages (marker `security`).

Served as in production (`python -m workers dashboard`, waitress) against the test
Redis. Pickle canaries sit in meta, data and results of jobs in every registry and on
a worker; every route is visited and every mutating route called, and no canary may
fire. Cross-site POSTs, mutating GETs and foreign Host headers must be refused with
nothing changed. The XSS cases run in headless Chromium.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
import redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.worker import Worker

from jobs.email import enqueue_email
from jobs.serialization import JSONSerializer
from tests.integration.dashboard_fixtures import (
    QUEUE,
    REGISTRIES,
    XSS,
    Dashboard,
    HostileJobs,
)

pytestmark = [pytest.mark.security, pytest.mark.timeout(180)]

WELCOME = {"name": "Ana", "login_url": "https://app.example.com/login"}


def _pages(jobs: HostileJobs) -> list[str]:
    """Every GET route of rq-dashboard 0.9 that reads jobs, queues or workers."""
    paths = ["/", "/0/view/workers", "/0/view/jobs"]
    paths += ["/0/data/queues.json", "/0/data/workers.json"]
    for registry in REGISTRIES:
        paths.append(f"/0/view/jobs/{QUEUE}/{registry}/8/asc/1")
        paths.append(f"/0/data/jobs/{QUEUE}/{registry}/8/asc/1.json")
        paths.append(f"/0/data/jobs/{QUEUE}/{registry}/8/dsc/1.json")
    for job_id in jobs.ids:
        paths += [f"/0/view/job/{job_id}", f"/0/data/job/{job_id}.json"]
    return paths


def _mutations(jobs: HostileJobs) -> list[str]:
    """Every POST route, in an order where each still has something to act on."""
    return [
        f"/requeue/{QUEUE}",
        f"/job/{jobs.finished}/delete",
        f"/queue/{QUEUE}/compact",
        *[f"/queue/{QUEUE}/{registry}/empty" for registry in REGISTRIES],
    ]


# --- 1. no pickle ---------------------------------------------------------------------------


def test_no_route_unpickles_meta_data_or_result(
    dashboard: Dashboard, hostile_jobs: HostileJobs, primary: redis.Redis
) -> None:
    meta_before = primary.hget(Job.key_for(hostile_jobs.failed), "meta")
    statuses = {path: dashboard.get(path).status for path in _pages(hostile_jobs)}
    assert hostile_jobs.unpickled() == []
    assert {path: status for path, status in statuses.items() if status != 200} == {}

    # Shown as undecodable, not as a 500 and not as the pickle.
    finished = json.loads(dashboard.get(f"/0/data/job/{hostile_jobs.finished}.json").body)
    assert finished["result"] == "undecodable"
    assert json.loads(finished["metadata"]) == "undecodable"
    workers = json.loads(dashboard.get("/0/data/workers.json").body)["workers"]
    assert [w["current_job"]["job_id"] for w in workers] == [hostile_jobs.started]

    requeued = dashboard.post(f"/job/{hostile_jobs.failed}/requeue")
    assert hostile_jobs.unpickled() == []
    assert requeued.status == 200, requeued.text()[-500:]
    # Nothing lost: the meta it could not read is written back byte for byte (RQ 3 keeps it).
    assert primary.hget(Job.key_for(hostile_jobs.failed), "meta") == meta_before
    assert hostile_jobs.failed in Queue(QUEUE, connection=primary).get_job_ids()

    replies = {path: dashboard.post(path) for path in _mutations(hostile_jobs)}
    assert hostile_jobs.unpickled() == []
    assert {path: reply.status for path, reply in replies.items() if reply.status != 200} == {}
    assert {json.loads(reply.body)["status"] for reply in replies.values()} == {"OK"}


def test_a_missing_job_is_a_clear_404_not_a_crash(dashboard: Dashboard) -> None:
    reply = dashboard.get("/0/data/job/no-such-job.json")
    assert reply.status == 404
    assert "no such job" in reply.text()


# --- 4. dependencies on rq 3 ----------------------------------------------------------------


def test_the_page_of_a_job_with_dependencies_answers(dashboard: Dashboard, primary: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=primary, serializer=JSONSerializer)
    parent = queue.enqueue("jobs.diagnostics.noop")
    gone = queue.enqueue("jobs.diagnostics.noop")
    child = queue.enqueue("jobs.diagnostics.noop", depends_on=[parent, gone])
    gone.delete()
    reply = dashboard.get(f"/0/data/job/{child.id}.json")
    assert reply.status == 200, reply.text()[-500:]
    info = json.loads(reply.body)
    statuses = dict(zip(info["depends_on"], info["depends_on_status"], strict=True))
    assert statuses == {parent.id: "active", gone.id: "expired"}
    assert dashboard.get(f"/0/view/job/{child.id}").status == 200


# --- 3. CSRF, mutating GETs, Host -----------------------------------------------------------


@pytest.fixture
def plain_jobs(primary: redis.Redis) -> dict[str, str]:
    """Two queued jobs and one failed one, JSON, to see whether anything changed."""
    queue = Queue(QUEUE, connection=primary, serializer=JSONSerializer)
    queued = [queue.enqueue("jobs.diagnostics.noop").id for _ in range(2)]
    failed = Job.create("jobs.diagnostics.noop", connection=primary, serializer=JSONSerializer, origin=QUEUE)
    failed.save()
    FailedJobRegistry(QUEUE, connection=primary, serializer=JSONSerializer).add(failed, ttl=3600)
    failed.set_status("failed")
    return {"queued": queued[0], "other": queued[1], "failed": failed.id}


def _state(primary: redis.Redis, jobs: dict[str, str]) -> tuple[object, ...]:
    """Everything a mutating route could change."""
    queue = Queue(QUEUE, connection=primary, serializer=JSONSerializer)
    failed = FailedJobRegistry(QUEUE, connection=primary, serializer=JSONSerializer)
    return (
        queue.get_job_ids(),
        failed.get_job_ids(),
        sorted(bool(primary.exists(Job.key_for(job_id))) for job_id in jobs.values()),
    )


def _mutating_routes(jobs: dict[str, str]) -> list[str]:
    return [
        f"/queue/{QUEUE}/queued/empty",
        f"/queue/{QUEUE}/failed/empty",
        f"/requeue/{QUEUE}",
        f"/job/{jobs['failed']}/requeue",
        f"/job/{jobs['queued']}/delete",
        f"/queue/{QUEUE}/compact",
    ]


CROSS_SITE_HEADERS = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # sandboxed frames, data: URLs
    {"Origin": "http://127.0.0.1:1"},  # another port is another origin
    {"Origin": "http://127.0.0.1.evil.example"},
    {"Origin": "", "Referer": "http://evil.example/page"},
    {"Origin": ""},  # neither Origin nor Referer
    {"Origin": "", "Content-Type": "text/plain"},
    {"Origin": "", "Content-Type": "multipart/form-data; boundary=x"},
]


def test_cross_site_posts_are_refused_and_change_nothing(
    dashboard: Dashboard, primary: redis.Redis, plain_jobs: dict[str, str]
) -> None:
    before = _state(primary, plain_jobs)
    for path in _mutating_routes(plain_jobs):
        for headers in CROSS_SITE_HEADERS:
            reply = dashboard.post(path, headers)
            assert reply.status == 403, (path, headers, reply.status)
            assert "cross-site request refused" in reply.text()
    assert _state(primary, plain_jobs) == before

    # The dashboard's own page still works: Origin, or only a same-origin Referer.
    assert dashboard.post(f"/job/{plain_jobs['other']}/delete").status == 200
    referer_only = {"Origin": "", "Referer": f"{dashboard.origin}/0/view/jobs"}
    assert dashboard.post(f"/queue/{QUEUE}/queued/empty", referer_only).status == 200
    assert Queue(QUEUE, connection=primary).count == 0


def test_mutating_routes_refuse_get_and_head(
    dashboard: Dashboard, primary: redis.Redis, plain_jobs: dict[str, str]
) -> None:
    before = _state(primary, plain_jobs)
    answers = {
        (method, path): dashboard.request(method, path).status
        for path in _mutating_routes(plain_jobs)
        for method in ("GET", "HEAD", "OPTIONS")
    }
    assert {key: status for key, status in answers.items() if status != 405} == {}
    assert _state(primary, plain_jobs) == before
    assert FailedJobRegistry(QUEUE, connection=primary).get_job_ids() == [plain_jobs["failed"]]


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:{port}",
    "127.0.0.1.evil.example:{port}",  # a DNS-rebinding name
    "localhost.evil.example",
    "localhost:{port}@evil.example",
    "[::2]:{port}",
    "0.0.0.0:{port}",
    "",
]


def test_foreign_host_headers_get_400_on_every_kind_of_route(
    start_dashboard: Callable[..., Dashboard], primary: redis.Redis, plain_jobs: dict[str, str]
) -> None:
    dashboard = start_dashboard(DASHBOARD_ALLOWED_HOSTS="jobs.example.com, 10.0.0.5")
    before = _state(primary, plain_jobs)
    paths = ["/", "/0/data/queues.json", f"/0/data/job/{plain_jobs['queued']}.json", "/static/css/main.css"]
    for template in FOREIGN_HOSTS:
        host = template.format(port=dashboard.port)
        for path in paths:
            reply = dashboard.get(path, Host=host)
            assert reply.status == 400, (host, path, reply.status)
            assert "is not allowed (DASHBOARD_ALLOWED_HOSTS)" in reply.text()
        # A rebinding page is "same-origin" with itself: the Host check still refuses it.
        reply = dashboard.post(f"/queue/{QUEUE}/queued/empty", {"Host": host, "Origin": f"http://{host}"})
        assert reply.status == 400, host
    assert _state(primary, plain_jobs) == before

    for host in ("127.0.0.1", "localhost", "LOCALHOST.", "[::1]", "jobs.example.com", "10.0.0.5"):
        assert dashboard.get("/0/data/queues.json", Host=f"{host}:{dashboard.port}").status == 200, host


def _assert_security_headers(reply: Any, what: str) -> None:
    csp = reply.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert "'unsafe-inline'" not in directives["script-src"], what
    assert "'nonce-" in directives["script-src"], what
    assert directives["frame-ancestors"] == "'none'", what
    assert directives["default-src"] == "'none'", what
    assert reply.headers["X-Frame-Options"] == "DENY", what
    assert reply.headers["X-Content-Type-Options"] == "nosniff", what
    assert reply.headers["Referrer-Policy"] == "same-origin", what


def test_every_response_carries_the_security_headers(
    start_dashboard: Callable[..., Dashboard], plain_jobs: dict[str, str]
) -> None:
    dashboard = start_dashboard()
    job = plain_jobs["queued"]
    replies = {
        "page": dashboard.get("/"),
        "job page": dashboard.get(f"/0/view/job/{job}"),
        "json": dashboard.get(f"/0/data/job/{job}.json"),
        "static css": dashboard.get("/static/css/main.css"),
        "static js": dashboard.get("/static/js/jquery-3.5.1.min.js"),
        "favicon": dashboard.get("/favicon.ico"),
        "404": dashboard.get("/no/such/page"),
        "400 host": dashboard.get("/", Host="evil.example"),
        "403 origin": dashboard.post(f"/requeue/{QUEUE}", {"Origin": "http://evil.example"}),
        "405 get": dashboard.get(f"/requeue/{QUEUE}"),
    }
    for what, reply in replies.items():
        _assert_security_headers(reply, what)
    assert replies["static css"].status == 200
    nonces = {r.headers["Content-Security-Policy"] for r in (dashboard.get("/"), dashboard.get("/"))}
    assert len(nonces) == 2, "a fresh nonce per response"

    authed = start_dashboard(DASHBOARD_USERNAME="ops", DASHBOARD_PASSWORD="s3cret")
    refused = authed.get("/")
    assert refused.status == 401
    _assert_security_headers(refused, "401")


# --- 2. stored (and reflected) XSS, in Chromium ---------------------------------------------

# Each would set window.__pwned, the title, or log PWNED if it ever ran.
PAYLOADS = [
    XSS,
    "<svg onload=\"window.__pwned=2;console.log('PWNED')\"></svg>",
    "<script>window.__pwned=3;console.log('PWNED')</script>",
    "</pre></div><img src=x onerror=\"window.__pwned=4;console.log('PWNED')\">",
    "'\"><img src=x onerror=window.__pwned=5>",
    "<%= (window.__pwned=6) %>",  # underscore template syntax inside the data
    '<iframe srcdoc="<script>parent.__pwned=7</script>"></iframe>',
]
JOB_RENDERED = "#job-data .description-scroll"  # the job page's template has been filled in
HOSTILE_NAME = '"<img src=x onerror=window.__pwned=8>" <alice@example.com>'


def _xss_jobs(primary: redis.Redis) -> dict[str, str]:
    """Job data carrying PAYLOADS everywhere the dashboard shows it; name -> job id."""
    ids = {"email": enqueue_email(HOSTILE_NAME, "welcome", WELCOME)}  # the real enqueue API
    queue = Queue(QUEUE, connection=primary, serializer=JSONSerializer)
    for n, payload in enumerate(PAYLOADS):
        failed = Job.create(
            "jobs.diagnostics.noop",
            args=(payload,),
            description=payload,
            meta={"note": payload},
            connection=primary,
            serializer=JSONSerializer,
            origin=QUEUE,
            id=f"xss-failed-{n}",
        )
        failed.save()
        FailedJobRegistry(QUEUE, connection=primary, serializer=JSONSerializer).add(failed, ttl=3600)
        Result.create_failure(failed, ttl=3600, exc_string=f"Traceback (most recent call last):\n{payload}")
        failed.set_status("failed")
        finished = queue.enqueue("jobs.diagnostics.noop", description=payload, job_id=f"xss-finished-{n}")
        Result.create(finished, Result.Type.SUCCESSFUL, ttl=3600, return_value={"html": payload})
        FinishedJobRegistry(QUEUE, connection=primary, serializer=JSONSerializer).add(finished, ttl=3600)
        finished.set_status("finished")
        ids[f"failed-{n}"], ids[f"finished-{n}"] = failed.id, finished.id
    running = queue.enqueue(
        "jobs.diagnostics.noop", PAYLOADS[0], description=PAYLOADS[3], job_id="xss-running"
    )
    worker = Worker([queue], connection=primary, name="xss-worker", serializer=JSONSerializer)
    worker.register_birth()
    worker.prepare_execution(running)
    primary.sadd("rq:queues", f"rq:queue:{PAYLOADS[4]}")  # a queue named by an attacker
    return ids


class Watched:
    """A page whose every sign of script running (or of CSP blocking anything) is recorded."""

    def __init__(self, context: Any, url: str) -> None:
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.add_init_script(
            "window.__violations = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        self.page.goto(url)

    def wait_rendered(self, selector: str) -> None:
        """Until the dashboard's scripts rendered job data into `selector` and the page went quiet.

        Quiet (no request for 500 ms) means any `<img src=x>` that got in has failed to
        load and fired its handler by now.
        """
        self.page.wait_for_selector(selector, state="attached", timeout=20_000)
        self.page.wait_for_load_state("networkidle", timeout=20_000)

    def assert_shows(self, text: str, where: str) -> None:
        assert text in self.page.inner_text("body"), f"{where}: {text!r} not shown as text"

    def assert_no_script_ran(self, where: str) -> None:
        assert self.page.evaluate("window.__pwned") is None, where
        assert self.page.title() != "pwned", where
        assert not [m for m in self.console if "PWNED" in m], where
        assert self.dialogs == [], where
        assert self.page.locator("#job-data img, table img, pre img, iframe, svg[onload]").count() == 0, where
        # Nothing was even left for the CSP to block: escaping did it, and the dashboard's own
        # scripts and styles all pass the policy.
        assert self.page.evaluate("window.__violations") == [], where


@pytest.fixture
def chromium(browser: Any) -> Any:
    context = browser.new_context()
    yield context
    context.close()


def test_job_pages_run_no_script_from_job_data_and_show_it_as_text(
    dashboard: Dashboard, primary: redis.Redis, chromium: Any
) -> None:
    ids = _xss_jobs(primary)
    email = Watched(chromium, f"{dashboard.origin}/0/view/job/{ids['email']}")
    email.wait_rendered(JOB_RENDERED)
    email.assert_no_script_ran("email job page")
    email.assert_shows("<img src=x onerror=window.__pwned=8>", "email job page")  # the display name
    for n, payload in enumerate(PAYLOADS):
        for kind in ("failed", "finished"):
            page = Watched(chromium, f"{dashboard.origin}/0/view/job/{ids[f'{kind}-{n}']}")
            page.wait_rendered(JOB_RENDERED)
            page.assert_no_script_ran(f"{kind} job page, payload {n}")
            text = page.page.inner_text("#job-data")
            # description, and meta + exc_info (failed) or the result (finished), each as text
            shown = [json.dumps({"note": payload})] if kind == "failed" else []
            shown.append(payload if kind == "failed" else json.dumps({"html": payload}, indent=2))
            assert all(part in text for part in shown), (kind, n, text)
            page.page.close()
        email.assert_no_script_ran("email job page, after a few refreshes")


def test_list_workers_and_queues_pages_run_no_script_from_job_data(
    dashboard: Dashboard, primary: redis.Redis, chromium: Any
) -> None:
    _xss_jobs(primary)
    for registry in ("failed", "finished", "queued"):
        page = Watched(chromium, f"{dashboard.origin}/0/view/jobs/{QUEUE}/{registry}/50/asc/1")
        page.wait_rendered("tr[data-role=job]")
        page.assert_no_script_ran(f"{registry} list")
        page.assert_shows(PAYLOADS[1] if registry != "queued" else HOSTILE_NAME.split('"')[1], registry)
    workers = Watched(chromium, f"{dashboard.origin}/0/view/workers")
    workers.wait_rendered("tr[data-role=worker]")
    workers.assert_no_script_ran("workers page")
    workers.assert_shows("xss-worker", "workers page")
    queues = Watched(chromium, f"{dashboard.origin}/")
    queues.wait_rendered("tr[data-role=queue]")
    queues.assert_no_script_ran("queues page")
    queues.assert_shows(PAYLOADS[4], "queues page")


def test_a_queue_name_in_the_url_is_not_script(dashboard: Dashboard, chromium: Any) -> None:
    # Closes rq-dashboard's `$(this).val('{{ queue.name }}')` handler and runs at load.
    name = "');}});window.__pwned=9;console.log('PWNED');(function(){if(0){('"
    page = Watched(chromium, f"{dashboard.origin}/0/view/jobs/{quote(name, safe='')}/queued/8/asc/1")
    page.wait_rendered("#select-queue")
    page.assert_no_script_ran("reflected queue name")
    assert page.page.input_value("#select-queue") == name


def test_the_csp_blocks_an_inline_handler_even_if_markup_got_in(
    dashboard: Dashboard, primary: redis.Redis, chromium: Any
) -> None:
    ids = _xss_jobs(primary)
    page = Watched(chromium, f"{dashboard.origin}/0/view/job/{ids['failed-0']}")
    page.wait_rendered(JOB_RENDERED)
    page.page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"window.__pwned=10\">')"
    )
    page.page.wait_for_function("window.__violations.length > 0", timeout=20_000)
    assert page.page.evaluate("window.__pwned") is None
    assert any(v.startswith("script-src") for v in page.page.evaluate("window.__violations"))


def test_an_unreadable_entry_is_one_row_not_a_broken_list(dashboard: Dashboard, primary: redis.Redis) -> None:
    failed = FailedJobRegistry(QUEUE, connection=primary, serializer=JSONSerializer)
    good = Job.create("jobs.diagnostics.noop", connection=primary, serializer=JSONSerializer, origin=QUEUE)
    good.save()
    failed.add(good, ttl=3600)
    garbled = Job.create(
        "jobs.diagnostics.noop", connection=primary, serializer=JSONSerializer, origin=QUEUE, id="garbled"
    )
    garbled.save()
    primary.hset(garbled.key, mapping={"created_at": "not a date", "status": "bogus"})
    primary.zadd(failed.key, {"garbled": 1e12, "bad.id/../x": 1e12})  # hand-written entries

    reply = dashboard.get(f"/0/data/jobs/{QUEUE}/failed/20/asc/1.json")
    assert reply.status == 200, reply.text()[-500:]
    rows = {row["id"]: row["description"] for row in json.loads(reply.body)["jobs"]}
    assert rows[good.id] == good.description
    assert rows["garbled"].startswith("undecodable")
    assert rows["bad.id/../x"].startswith("undecodable")
    page = dashboard.get("/0/data/job/garbled.json")
    assert page.status == 422
    assert "job data is undecodable" in page.text()
