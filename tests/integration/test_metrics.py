"""The metrics endpoint, served for real and scraped over HTTP (marker `ops`)."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq.utils import utcformat
from rq.worker import Worker

from cache import connections
from cache.appcache.stats import CacheStats, flush_counters
from cache.connections import Role
from cache.errors import ConfigError
from cache.ratelimit.service import RateLimiter
from cache.settings import Settings
from jobs.email import idempotency
from jobs.enqueue import enqueue
from jobs.queues import get_queue
from tests.integration.processes import Processes, log_of
from tests.waiting import wait_until
from workers.cli.metrics import KryonixCollector, MetricsServer, serve_metrics
from workers.dev.servers import CACHE_CONF, RedisServer, free_port
from workers.job import KryonixJob
from workers.job_stats import DURATION_BUCKETS_S, JobStats

pytestmark = pytest.mark.ops

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Fetch and parse with prometheus-client's own parser: unparseable text fails here."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


@pytest.fixture
def metrics_server(redis_env: dict[str, str]) -> Iterator[MetricsServer]:
    server = serve_metrics(0, "127.0.0.1")  # the default collector: the settings' two roles
    yield server
    server.close()


def _make_known_state(primary: redis.Redis, cache_redis: redis.Redis, processes: Processes) -> list[str]:
    """3 queued on email (the oldest an hour old), 1 failed on report, totals, counters, limits."""
    email_ids = [enqueue("email", "jobs.diagnostics.noop") for _ in range(3)]
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    primary.hset(KryonixJob.key_for(email_ids[0]), "enqueued_at", utcformat(hour_ago))

    enqueue("report", "jobs.diagnostics.fail_permanently", "boom")
    worker = processes.worker("report", burst=True, name="burst")
    assert worker.wait(timeout=120) == 0, log_of(worker)
    assert get_queue(name="report").failed_job_registry.count == 1, log_of(worker)

    stats = JobStats(primary)
    stats.record("email", "finished", 0.02)
    stats.record("email", "finished", 0.03)
    stats.record("email", "failed", 0.3)
    stats.record("email", "retried", 7.0)
    stats.flush()

    counters = CacheStats()
    counters.incr("hits", 5)
    counters.incr("misses", 2)
    counters.incr("fail_open")
    flush_counters(cache_redis, counters)

    limiter = RateLimiter(client=primary)
    for ip in ("203.0.113.7", "203.0.113.8", "203.0.113.8"):
        assert limiter.limit_by_ip(ip).allowed

    for attempt in (1, 2):  # the second finds the first's claim: one possible duplicate
        idempotency.begin_send(primary, idempotency_key="welcome-1", attempt={"attempt": attempt})
    idempotency.mark_sent(primary, idempotency_key="welcome-1", record={"possible_duplicate": True})
    return email_ids


def test_scrape_reflects_a_known_state(
    primary: redis.Redis, cache_redis: redis.Redis, processes: Processes, metrics_server: MetricsServer
) -> None:
    _make_known_state(primary, cache_redis, processes)
    live = processes.worker("report", name="live")
    wait_until(lambda: len(Worker.all(connection=primary)) == 1, 60, "a live report worker")

    s = scrape(metrics_server.url)

    assert value(s, "kryonix_queue_depth", queue="email") == 3
    assert value(s, "kryonix_queue_depth", queue="report") == 0
    for registry in ("started", "scheduled", "deferred", "failed", "finished"):
        assert value(s, "kryonix_queue_registry_jobs", queue="email", registry=registry) == 0
        expected = 1 if registry == "failed" else 0
        assert value(s, "kryonix_queue_registry_jobs", queue="report", registry=registry) == expected
    age = value(s, "kryonix_queue_oldest_job_age_seconds", queue="email")
    assert 3600 <= age < 3600 + 300, "the head of the queue was enqueued an hour ago"
    assert value(s, "kryonix_queue_oldest_job_age_seconds", queue="report") == 0

    for outcome, count in {"finished": 2, "failed": 1, "retried": 1, "stopped": 0}.items():
        assert value(s, "kryonix_jobs_total", queue="email", outcome=outcome) == count
    for outcome, count in {"finished": 0, "failed": 1, "retried": 0, "stopped": 0}.items():
        assert value(s, "kryonix_jobs_total", queue="report", outcome=outcome) == count, (
            "written by the worker"
        )

    # 0.02 and 0.03 s are <= 0.05, 0.3 s <= 0.5, 7 s <= 10: cumulative counts.
    for bound in DURATION_BUCKETS_S:
        expected = (bound >= 0.05) * 2 + (bound >= 0.5) + (bound >= 10.0)
        le = repr(float(bound))
        assert value(s, "kryonix_job_duration_seconds_bucket", queue="email", le=le) == expected, le
    assert value(s, "kryonix_job_duration_seconds_bucket", queue="email", le="+Inf") == 4
    assert value(s, "kryonix_job_duration_seconds_count", queue="email") == 4
    assert value(s, "kryonix_job_duration_seconds_sum", queue="email") == pytest.approx(7.35)
    assert value(s, "kryonix_job_duration_seconds_count", queue="report") == 1

    assert value(s, "kryonix_email_possible_duplicates_total") == 1

    assert value(s, "kryonix_workers", queue="report") == 1, log_of(live)
    assert value(s, "kryonix_workers", queue="email") == 0
    assert value(s, "kryonix_workers_busy", queue="report") == 0

    assert value(s, "kryonix_cache_events_total", event="hits") == 5
    assert value(s, "kryonix_cache_events_total", event="misses") == 2
    assert value(s, "kryonix_cache_events_total", event="fail_open") == 1
    assert value(s, "kryonix_cache_events_total", event="stale_hits") == 0

    assert value(s, "kryonix_ratelimit_active_identifiers", scope="ip", window_ms="60000") == 2
    assert value(s, "kryonix_ratelimit_scan_complete") == 1

    for section in ("queues", "jobs", "workers", "cache", "ratelimit"):
        assert value(s, "kryonix_scrape_error", section=section) == 0


def test_redis_memory_and_persistence_of_both_roles(
    primary: redis.Redis, cache_redis: redis.Redis, metrics_server: MetricsServer
) -> None:
    before = {role: client.info() for role, client in (("primary", primary), ("cache", cache_redis))}
    s = scrape(metrics_server.url)
    for role, client in (("primary", primary), ("cache", cache_redis)):
        info = client.info()
        assert value(s, "kryonix_redis_up", role=role) == 1
        assert value(s, "kryonix_redis_memory_used_bytes", role=role) > 0
        assert value(s, "kryonix_redis_memory_peak_bytes", role=role) > 0
        assert value(s, "kryonix_redis_memory_max_bytes", role=role) == info["maxmemory"]
        # A background save may finish during the scrape (the test server saves on its own).
        saved_at = value(s, "kryonix_redis_rdb_last_save_timestamp_seconds", role=role)
        assert before[role]["rdb_last_save_time"] <= saved_at <= info["rdb_last_save_time"]
        assert value(s, "kryonix_redis_rdb_last_bgsave_ok", role=role) == 1
        assert value(s, "kryonix_redis_aof_last_write_ok", role=role) == 1
        assert value(s, "kryonix_redis_rdb_changes_since_last_save", role=role) >= 0
    assert value(s, "kryonix_redis_memory_max_bytes", role="primary") == 4 * 1024**3  # redis.conf
    assert value(s, "kryonix_redis_memory_max_bytes", role="cache") == 2 * 1024**3  # redis-cache.conf
    assert value(s, "kryonix_redis_aof_enabled", role="primary") == 1
    assert value(s, "kryonix_redis_aof_enabled", role="cache") == 0
    assert value(s, "kryonix_redis_maxmemory_policy_info", role="primary", policy="noeviction") == 1
    assert value(s, "kryonix_redis_maxmemory_policy_info", role="cache", policy="allkeys-lru") == 1


def test_empty_redis_still_exports_every_queue_series(metrics_server: MetricsServer) -> None:
    s = scrape(metrics_server.url)
    for queue in ("email", "report"):
        assert value(s, "kryonix_queue_depth", queue=queue) == 0
        assert value(s, "kryonix_workers", queue=queue) == 0
        assert value(s, "kryonix_job_duration_seconds_count", queue=queue) == 0
        for outcome in ("finished", "failed", "retried", "stopped"):
            assert value(s, "kryonix_jobs_total", queue=queue, outcome=outcome) == 0
    assert value(s, "kryonix_email_possible_duplicates_total") == 0


def test_scrape_writes_nothing(
    primary: redis.Redis, cache_redis: redis.Redis, metrics_server: MetricsServer
) -> None:
    scrape(metrics_server.url)
    assert primary.dbsize() == 0
    assert cache_redis.dbsize() == 0


def test_a_dead_cache_role_is_down_not_a_failed_scrape(
    primary: redis.Redis, redis_factory: object, tmp_path: Path
) -> None:
    cache_server: RedisServer = redis_factory(CACHE_CONF, name="cache")  # type: ignore[operator]
    settings = Settings.from_env({"REDIS_URL": cache_server.url, "REDIS_RETRY_ATTEMPTS": "1"})
    dead_cache = connections.build_client(Role.PRIMARY, settings)
    cache_server.kill()
    server = serve_metrics(0, collector=KryonixCollector(primary=primary, cache=dead_cache))
    try:
        enqueue("email", "jobs.diagnostics.noop")
        s = scrape(server.url)
    finally:
        server.close()
    assert value(s, "kryonix_redis_up", role="primary") == 1
    assert value(s, "kryonix_redis_up", role="cache") == 0
    assert value(s, "kryonix_scrape_error", section="cache") == 1
    assert value(s, "kryonix_scrape_error", section="queues") == 0
    assert value(s, "kryonix_queue_depth", queue="email") == 1
    assert not any(name == "kryonix_cache_events_total" for name, _ in s)
    assert ("kryonix_redis_memory_used_bytes", (("role", "cache"),)) not in s


def test_port_in_use_is_a_clear_error(metrics_server: MetricsServer) -> None:
    with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1:{metrics_server.port}"):
        serve_metrics(metrics_server.port, "127.0.0.1")


def test_unknown_address_is_a_clear_error(redis_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"cannot serve metrics on 192\.0\.2\.1:0"):
        serve_metrics(0, "192.0.2.1")  # TEST-NET-1: never a local address


def test_metrics_command_serves_until_sigterm(processes: Processes, primary: redis.Redis) -> None:
    port = free_port()
    enqueue("report", "jobs.diagnostics.noop")
    proc = processes.start(
        sys.executable,
        "-c",
        f"from workers.cli.metrics import metrics_command; metrics_command({port}, '127.0.0.1')",
        name="metrics",
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return value(scrape(url), "kryonix_queue_depth", queue="report") == 1
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(answers, 60, f"metrics on {url}; log: {log_of(proc)}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_of(proc)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
