"""Rate-limit decisions in the metrics endpoint, served for real and scraped over HTTP (marker `ops`)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from cache import keys
from cache.connections import Role, build_client
from cache.ratelimit.service import FailurePolicy, RateLimiter, flush_ratelimit_stats, reset_ratelimit_stats
from cache.settings import Settings
from workers.cli.metrics import KryonixCollector, MetricsServer, serve_metrics
from workers.dev.servers import free_port

pytestmark = pytest.mark.ops

DECISIONS = "kryonix_ratelimit_decisions_total"


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """`{sample name: {sorted labels: value}}`, parsed by prometheus-client's own parser."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def decisions(**by_scope: tuple[int, int, int, int]) -> dict[tuple[tuple[str, str], ...], float]:
    """Expected samples: scope -> (allowed, denied, fail_open, fail_closed)."""
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for scope, values in by_scope.items():
        for decision, value in zip(("allowed", "denied", "fail_open", "fail_closed"), values, strict=True):
            expected[(("decision", decision), ("scope", scope))] = float(value)
    return expected


@pytest.fixture
def server(primary: redis.Redis, cache_redis: redis.Redis) -> Iterator[MetricsServer]:
    reset_ratelimit_stats()
    metrics = serve_metrics(0, "127.0.0.1", collector=KryonixCollector(primary=primary, cache=cache_redis))
    yield metrics
    metrics.close()
    reset_ratelimit_stats()


@pytest.fixture
def dead() -> Iterator[redis.Redis]:
    """A PRIMARY client for a port nothing listens on: every check is an outage."""
    settings = Settings.from_env(
        {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_RETRY_ATTEMPTS": "1"}
    )
    client = build_client(Role.PRIMARY, settings)
    yield client
    client.close()


def test_scrape_shows_every_flushed_decision_and_nothing_unflushed(
    primary: redis.Redis, dead: redis.Redis, server: MetricsServer
) -> None:
    assert DECISIONS not in scrape(server.url), "no decisions recorded, no series"

    login = RateLimiter(primary, scope="login")
    for _ in range(3):
        login.check("bob", 2, 60)  # 2 allowed, 1 denied
    limiter = RateLimiter(primary)
    assert limiter.limit_by_ip("203.0.113.7").allowed
    assert limiter.limit_by_ip("203.0.113.8").allowed
    outage = RateLimiter(dead)
    assert outage.limit_by_ip("203.0.113.9").degraded  # ip: fails open
    assert not outage.limit_api("secret-key").allowed  # api: fails closed
    assert RateLimiter(dead, scope="login", failure_policy=FailurePolicy.CLOSED).check("eve", 2, 60).degraded
    assert flush_ratelimit_stats(primary)
    login.check("carol", 2, 60)  # counted in this process only, after the flush

    s = scrape(server.url)

    assert s[DECISIONS] == decisions(login=(2, 1, 0, 1), ip=(2, 0, 1, 0), api=(0, 0, 0, 1))
    active = s["kryonix_ratelimit_active_identifiers"]
    assert active == {
        (("scope", "ip"), ("window_ms", "60000")): 2.0,
        (("scope", "login"), ("window_ms", "60000")): 2.0,  # bob and carol
    }, "the counters hash is not a client's log"
    assert s["kryonix_scrape_error"][(("section", "ratelimit"),)] == 0
    assert primary.hget(keys.rate_limit_counters(), "login:allowed") == b"2", "a scrape never flushes"

    assert flush_ratelimit_stats(primary)
    assert scrape(server.url)[DECISIONS][(("decision", "allowed"), ("scope", "login"))] == 3


def test_a_corrupt_counter_fails_only_the_ratelimit_section(
    primary: redis.Redis, server: MetricsServer
) -> None:
    primary.hset(keys.rate_limit_counters(), mapping={"ip:allowed": "7", "ip:denied": "lots"})
    s = scrape(server.url)
    assert s["kryonix_scrape_error"][(("section", "ratelimit"),)] == 1
    assert s["kryonix_scrape_error"][(("section", "queues"),)] == 0
    assert DECISIONS not in s
