"""The sliding-log limiter against a real PRIMARY redis-server (marker `ratelimit`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import keys
from cache.identifiers import InvalidIdentifier
from cache.ratelimit.headers import rate_limit_headers
from cache.ratelimit.service import API, BY_IP, BY_USER, Decision, Preset, RateLimiter, RateLimitError
from tests.integration.ratelimit_fixtures import SlidingLog

pytestmark = pytest.mark.ratelimit
BACKENDS = ("single", "cluster")  # tests using redis_env run on both (tests/conftest.py)

T0 = 1_700_000_000_000  # a fixed "now" in ms; tests move it by hand instead of sleeping


@pytest.fixture
def limiter(primary: redis.Redis) -> RateLimiter:
    return RateLimiter(primary, scope="test")


def limiter_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match="kx:rl:*", count=1000))


def ms(seconds: float) -> int:
    return round(seconds * 1000)


# --- the limit itself -----------------------------------------------------------------------


def test_limit_reached_exactly(limiter: RateLimiter) -> None:
    decisions = [limiter.check("alice", 5, 60, now_ms=T0 + i) for i in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert all(d.limit == 5 and d.window_s == 60 for d in decisions)
    assert decisions[5].reason == "rate limit 'test' exceeded: 5 per 60 s; retry after 59.995 s"


def test_denied_request_reports_when_it_would_fit(limiter: RateLimiter) -> None:
    for at in (0, 10_000, 20_000):
        assert limiter.check("bob", 3, 60, now_ms=T0 + at).allowed
    denied = limiter.check("bob", 3, 60, now_ms=T0 + 30_000)
    assert not denied.allowed
    assert denied.retry_after_s == 30.0  # the first request leaves the window at T0 + 60 s
    assert denied.reset_after_s == 50.0  # the last one leaves at T0 + 80 s
    assert not limiter.check("bob", 3, 60, now_ms=T0 + 59_999).allowed
    admitted = limiter.check("bob", 3, 60, now_ms=T0 + 60_000)
    assert admitted.allowed
    assert admitted.remaining == 0
    assert admitted.retry_after_s == 0
    assert admitted.reset_after_s == 60.0


def test_whole_limit_is_back_after_the_window(limiter: RateLimiter) -> None:
    for i in range(4):
        assert limiter.check("carol", 4, 10, now_ms=T0 + i).allowed
    assert not limiter.check("carol", 4, 10, now_ms=T0 + 9_999).allowed
    later = [limiter.check("carol", 4, 10, now_ms=T0 + 10_003) for _ in range(4)]
    assert [d.allowed for d in later] == [True] * 4
    assert not limiter.check("carol", 4, 10, now_ms=T0 + 10_003).allowed


def test_no_double_limit_across_a_window_boundary(limiter: RateLimiter) -> None:
    """The fixed-window sketch admits 2 x limit around a boundary; the sliding log does not."""
    first = [limiter.check("dave", 100, 60, now_ms=T0 + 59_900).allowed for _ in range(100)]
    second = [limiter.check("dave", 100, 60, now_ms=T0 + 60_100).allowed for _ in range(100)]
    assert sum(first) == 100
    assert sum(second) == 0


def test_cost_greater_than_one(limiter: RateLimiter) -> None:
    first = limiter.check("erin", 10, 60, cost=4, now_ms=T0)
    second = limiter.check("erin", 10, 60, cost=4, now_ms=T0 + 1_000)
    assert (first.allowed, first.remaining) == (True, 6)
    assert (second.allowed, second.remaining) == (True, 2)
    too_big = limiter.check("erin", 10, 60, cost=3, now_ms=T0 + 2_000)
    assert not too_big.allowed
    assert too_big.remaining == 2  # a denied request uses nothing
    assert too_big.retry_after_s == 58.0  # the first 4 units free at T0 + 60 s
    assert limiter.check("erin", 10, 60, cost=2, now_ms=T0 + 2_000).allowed
    needs_both = limiter.check("erin", 10, 60, cost=10, now_ms=T0 + 3_000)
    assert needs_both.retry_after_s == 59.0  # all three earlier requests must leave: T0 + 62 s
    assert limiter.check("erin", 10, 60, cost=10, now_ms=T0 + 62_000).allowed


def test_identifiers_windows_and_scopes_are_kept_apart(primary: redis.Redis) -> None:
    a = RateLimiter(primary, scope="a")
    b = RateLimiter(primary, scope="b")
    assert a.check("x", 1, 60, now_ms=T0).allowed
    assert not a.check("x", 1, 60, now_ms=T0).allowed
    assert a.check("y", 1, 60, now_ms=T0).allowed
    assert b.check("x", 1, 60, now_ms=T0).allowed
    # A 10-second window of the same scope must not trim the 60-second log.
    assert a.check("x", 1, 10, now_ms=T0 + 15_000).allowed
    assert not a.check("x", 1, 60, now_ms=T0 + 15_000).allowed
    assert len(limiter_keys(primary)) == 4


def test_out_of_order_clock_is_recorded_at_the_newest_time(limiter: RateLimiter) -> None:
    """A caller whose clock lags is counted as if it came last: longer, never shorter."""
    assert limiter.check("frank", 2, 10, now_ms=T0 + 100_000).allowed
    late = limiter.check("frank", 2, 10, now_ms=T0 + 50_000)
    assert late.allowed
    assert late.reset_after_s == 60.0  # recorded at T0 + 100 s: leaves at T0 + 110 s
    assert not limiter.check("frank", 2, 10, now_ms=T0 + 109_999).allowed
    assert limiter.check("frank", 2, 10, now_ms=T0 + 110_000).allowed


def test_server_clock_by_default(limiter: RateLimiter, primary: redis.Redis) -> None:
    assert limiter.check("gina", 2, 30).allowed
    assert limiter.check("gina", 2, 30).allowed
    denied = limiter.check("gina", 2, 30)
    assert not denied.allowed
    assert 0 < denied.retry_after_s <= 30
    (key,) = limiter_keys(primary)
    assert 20_000 < primary.pttl(key) <= 60_000  # one to two windows
    _, newest = primary.zrange(key, -1, -1, withscores=True)[0]
    seconds, micros = primary.time()
    assert abs(newest - (seconds * 1000 + micros // 1000)) < 30_000


def test_every_key_has_a_ttl_of_one_to_two_windows(limiter: RateLimiter, primary: redis.Redis) -> None:
    for i in range(50):
        limiter.check(f"user-{i}", 3, 20, cost=1 + i % 3)
        limiter.check(f"user-{i}", 3, 20)
    found = limiter_keys(primary)
    assert len(found) == 50
    assert all(10_000 < primary.pttl(key) <= 40_000 for key in found)


@pytest.mark.single_only("counts PEXPIREs in one server's INFO commandstats")
def test_ttl_is_refreshed_once_per_window_not_per_request(limiter: RateLimiter, primary: redis.Redis) -> None:
    primary.config_resetstat()
    for i in range(100):  # 100 admissions within one 60 s window: one PEXPIRE
        assert limiter.check("lena", 1_000, 60, now_ms=T0 + i * 100).allowed
    assert primary.info("commandstats")["cmdstat_pexpire"]["calls"] == 1
    # Past the first window the TTL no longer covers a new member's window: refreshed.
    assert limiter.check("lena", 1_000, 60, now_ms=T0 + 61_000).allowed
    assert primary.info("commandstats")["cmdstat_pexpire"]["calls"] == 2
    (key,) = limiter_keys(primary)
    assert 60_000 < primary.pttl(key) <= 120_000


def test_reloads_the_script_after_script_flush(limiter: RateLimiter, primary: redis.Redis) -> None:
    assert limiter.check("hank", 2, 60, now_ms=T0).allowed
    primary.script_flush()
    assert limiter.check("hank", 2, 60, now_ms=T0).allowed
    assert not limiter.check("hank", 2, 60, now_ms=T0).allowed


def test_foreign_value_at_the_key_is_a_loud_error(limiter: RateLimiter, primary: redis.Redis) -> None:
    primary.set(keys.rate_limit_log("test", 60_000, "ivan"), "not a log")
    with pytest.raises(RateLimitError, match=r"rate limit 'test': Redis refused the check: .*WRONGTYPE"):
        limiter.check("ivan", 2, 60)


def test_a_coarser_resolution_bounds_the_log_and_never_exceeds_the_limit(
    limiter: RateLimiter, primary: redis.Redis
) -> None:
    """1,000 requests, one every 10 ms, against 1,000 per 10 s at a 100 ms resolution."""
    decisions = [limiter.check("kate", 1_000, 10, now_ms=T0 + 10 * i, resolution_s=0.1) for i in range(1_000)]
    assert all(d.allowed for d in decisions)
    (key,) = limiter_keys(primary)
    assert primary.zcard(key) <= 101  # ~ window / resolution members, not 1,000
    assert not limiter.check("kate", 1_000, 10, now_ms=T0 + 10_000, resolution_s=0.1).allowed
    # The first 10 requests shared a member that moved to T0 + 90 ms: back at T0 + 10.09 s.
    late = limiter.check("kate", 1_000, 10, now_ms=T0 + 10_000, cost=1, resolution_s=0.1)
    assert late.retry_after_s == 0.09
    assert limiter.check("kate", 1_000, 10, now_ms=T0 + 10_090, cost=10, resolution_s=0.1).allowed


# --- presets and headers -----------------------------------------------------------------------


def test_presets_as_planned(primary: redis.Redis) -> None:
    assert (BY_IP.limit, BY_IP.window_s) == (100, 60)
    assert (BY_USER.limit, BY_USER.window_s) == (1_000, 60)
    assert (API.limit, API.window_s) == (10_000, 3_600)
    limiter = RateLimiter(primary)
    ip = [limiter.limit_by_ip("198.51.100.7", now_ms=T0) for _ in range(101)]
    assert sum(d.allowed for d in ip) == 100
    assert limiter.limit_by_user(42, cost=1_000, now_ms=T0).allowed
    assert not limiter.limit_by_user(42, now_ms=T0).allowed
    assert limiter.limit_api("sk_live_abc", cost=10_000, now_ms=T0).allowed
    assert not limiter.limit_api("sk_live_abc", now_ms=T0 + 3_599_999).allowed
    assert limiter.limit_api("sk_live_abc", now_ms=T0 + 3_600_000).allowed
    names = [k.decode() for k in limiter_keys(primary)]
    assert "kx:rl:{ip:60000:198.51.100.7}" in names
    assert "kx:rl:{user:60000:42}" in names
    assert not any("sk_live_abc" in name for name in names), "API keys are hashed, never stored"


def test_presets_are_configurable(primary: redis.Redis) -> None:
    login = Preset(scope="login", limit=2, window_s=10, failure_policy="closed", identifier_kind="ip")  # type: ignore[arg-type]
    limiter = RateLimiter(primary, by_ip=login)
    results = [limiter.limit_by_ip("198.51.100.8", now_ms=T0).allowed for _ in range(3)]
    assert results == [True, True, False]
    assert limiter.limit_by_ip("198.51.100.8", now_ms=T0 + 10_000).allowed
    assert limiter.check_preset(login, "198.51.100.9", now_ms=T0).allowed
    assert {k.decode() for k in limiter_keys(primary)} == {
        "kx:rl:{login:10000:198.51.100.8}",
        "kx:rl:{login:10000:198.51.100.9}",
    }


def test_headers_from_real_decisions(limiter: RateLimiter) -> None:
    ok = limiter.check("jack", 2, 60, now_ms=T0)
    assert rate_limit_headers(ok) == {
        "RateLimit-Policy": '"test";q=2;w=60',
        "RateLimit": '"test";r=1;t=60',
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "60",
    }
    limiter.check("jack", 2, 60, now_ms=T0 + 500)
    denied = limiter.check("jack", 2, 60, now_ms=T0 + 1_000)
    headers = rate_limit_headers(denied)
    assert headers["Retry-After"] == "59"
    assert headers["RateLimit"] == '"test";r=0;t=60'  # 59.5 s rounded up


# --- hostile identifiers -------------------------------------------------------------------------


def test_hostile_identifiers_get_bounded_distinct_keys(limiter: RateLimiter, primary: redis.Redis) -> None:
    hostile = [
        "x" * 1_000_000,
        "x" * 999_999 + "y",
        "ünïcødé",
        "用户",
        "unicode\u0301",
        "a\nb",
        "a b",
        "a\r\nSet-Cookie: x",
        "}{evil}",
        "*",
        "h:0123456789abcdef0123456789abcdef",
        "\x00",
        "\ud800",
    ]
    for value in hostile:
        assert limiter.check(value, 1, 60, now_ms=T0).allowed, value
        assert not limiter.check(value, 1, 60, now_ms=T0).allowed, value
    names = limiter_keys(primary)
    assert len(names) == len(hostile), "two identifiers shared a key"
    for name in names:
        assert len(name) < 100
        assert name.count(b"{") == 1 and name.count(b"}") == 1
        assert all(32 < byte < 127 for byte in name)


def test_ipv6_variants_share_one_limit_per_56(primary: redis.Redis) -> None:
    limiter = RateLimiter(
        primary, by_ip=Preset(scope="ip", limit=4, window_s=60, identifier_kind=BY_IP.identifier_kind)
    )
    same_64 = [
        "2001:db8:1:2::1",
        "2001:DB8:1:2:0:0:0:2",
        "[2001:db8:1:2::3]",
        "fe80::1%eth0",
        " 2001:db8:1:2:ffff::9 ",
    ]
    assert [limiter.limit_by_ip(ip, now_ms=T0).allowed for ip in same_64[:3]] == [True] * 3
    assert limiter.limit_by_ip(same_64[4], now_ms=T0).allowed
    assert not limiter.limit_by_ip(same_64[0], now_ms=T0).allowed
    assert not limiter.limit_by_ip("2001:db8:1:3::1", now_ms=T0).allowed  # another /64 of the same /56
    assert limiter.limit_by_ip("2001:db8:1:100::1", now_ms=T0).allowed  # the next /56 is someone else
    assert limiter.limit_by_ip(same_64[3], now_ms=T0).allowed  # link-local, zone dropped
    for mapped in ("::ffff:192.0.2.1", "192.0.2.1", "::FFFF:c000:201"):
        assert limiter.limit_by_ip(mapped, now_ms=T0 + 1).allowed
    names = {k.decode() for k in limiter_keys(primary)}
    assert names == {
        "kx:rl:{ip:60000:2001:db8:1::/56}",
        "kx:rl:{ip:60000:2001:db8:1:100::/56}",
        "kx:rl:{ip:60000:fe80::/56}",
        "kx:rl:{ip:60000:192.0.2.1}",
    }


@pytest.mark.security
def test_transition_addresses_and_the_prefix_setting_key_the_limit(
    primary: redis.Redis, settings_env: Callable[..., None]
) -> None:
    """NAT64 clients apart, a 6to4 owner once, native IPv6 by RATELIMIT_IPV6_PREFIX."""
    settings_env(RATELIMIT_IPV6_PREFIX="48")
    preset = Preset(scope="ip", limit=2, window_s=60, identifier_kind=BY_IP.identifier_kind)
    limiter = RateLimiter(primary, by_ip=preset)
    for i in range(1, 6):  # five clients behind one NAT64 gateway: each has its own limit
        assert limiter.limit_by_ip(f"64:ff9b::198.51.100.{i}", now_ms=T0).allowed
    sixtofour = ["2002:cb00:7107::1", "2002:cb00:7107:ffff::1", "203.0.113.7"]  # one IPv4 owner
    assert [limiter.limit_by_ip(ip, now_ms=T0).allowed for ip in sixtofour] == [True, True, False]
    native = ["2001:db8:1:0::1", "2001:db8:1:ff00::1", "2001:db8:1:ffff::1"]  # one /48
    assert [limiter.limit_by_ip(ip, now_ms=T0).allowed for ip in native] == [True, True, False]
    names = {k.decode() for k in limiter_keys(primary)}
    assert "kx:rl:{ip:60000:2001:db8:1::/48}" in names
    assert "kx:rl:{ip:60000:203.0.113.7}" in names
    assert len(names) == 7


@pytest.mark.parametrize("bad", ["", "not-an-ip", "1.2.3.4:80", "1.2.3.4\n5.6.7.8", "::1" * 100, "999.1.1.1"])
def test_invalid_ip_is_rejected_before_redis(limiter: RateLimiter, primary: redis.Redis, bad: str) -> None:
    with pytest.raises(InvalidIdentifier, match="not an IP address"):
        limiter.limit_by_ip(bad)
    assert limiter_keys(primary) == []


# --- property: never more than `limit` in any window, and exact -------------------------------

_fresh = itertools.count()


def _admitted_in_window(admitted: list[tuple[int, int]], end: int, window: int) -> int:
    return sum(cost for at, cost in admitted if end - window < at <= end)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[int, int]]]:
    """(limit, window ms, resolution ms, [(ms since the previous request, cost)]).

    Windows are whole seconds from 10 to 60 s, because the log's TTL runs on real time
    while the test's clock is fake: a tiny window could expire in Redis during a slow
    moment of the test. Steps mix same-millisecond bursts, whole seconds (so that
    requests land exactly on window boundaries) and steps of a window or a resolution
    plus or minus one millisecond.
    """
    limit = draw(st.integers(min_value=1, max_value=20))
    window = 1_000 * draw(st.integers(min_value=10, max_value=60))
    resolution = draw(
        st.one_of(
            st.just(1),
            st.integers(min_value=1, max_value=window // 1_000).map(lambda n: n * 1_000),
            st.integers(min_value=1, max_value=window),
        )
    )
    delta = st.one_of(
        st.integers(min_value=0, max_value=3),
        st.integers(min_value=0, max_value=2 * window // 1_000).map(lambda n: n * 1_000),
        st.sampled_from([window - 1, window, window + 1, resolution - 1, resolution, resolution + 1]),
    )
    steps = draw(st.lists(st.tuples(delta, st.integers(min_value=1, max_value=8)), min_size=1, max_size=60))
    return limit, window, resolution, steps


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_matches_the_reference_model_and_never_exceeds_the_limit(
    limiter: RateLimiter, scenario: tuple[int, int, int, list[tuple[int, int]]]
) -> None:
    limit, window, resolution, steps = scenario
    identifier = f"prop-{next(_fresh)}"
    model = SlidingLog()
    admitted: list[tuple[int, int]] = []
    now = T0
    for delta, raw_cost in steps:
        now += delta
        cost = min(raw_cost, limit)
        decision: Decision = limiter.check(
            identifier, limit, window / 1000, cost=cost, now_ms=now, resolution_s=resolution / 1000
        )
        expected = model.check(now, limit, window, cost, resolution)
        assert decision.allowed == expected.allowed
        assert decision.remaining == limit - expected.used
        assert ms(decision.retry_after_s) == expected.retry_after_ms
        assert ms(decision.reset_after_s) == expected.reset_after_ms
        in_window = _admitted_in_window(admitted, now, window)
        if resolution == 1:
            # Exact: admitted if and only if it fits.
            assert decision.allowed == (in_window + cost <= limit)
        if decision.allowed:
            admitted.append((now, cost))
            # Never more than `limit` in any window, exact or not.
            assert _admitted_in_window(admitted, now, window) <= limit
        else:
            assert ms(decision.retry_after_s) > 0
            fits_at = now + ms(decision.retry_after_s)
            assert _admitted_in_window(admitted, fits_at, window) + cost <= limit
            if resolution == 1:
                assert _admitted_in_window(admitted, fits_at - 1, window) + cost > limit
