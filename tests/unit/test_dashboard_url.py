"""Which Redis rq-dashboard is pointed at (marker `ops`)."""

from __future__ import annotations

import pytest

from cache.errors import ConfigError
from cache.settings import Settings
from workers.dashboard.app import dashboard_redis_url

pytestmark = pytest.mark.ops


def test_without_sentinel_the_dashboard_uses_redis_url() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://10.0.0.5:6400/2"})
    assert dashboard_redis_url(settings) == "redis://10.0.0.5:6400/2"


def test_with_sentinel_the_dashboard_asks_the_sentinels_for_the_master_and_keeps_the_db() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://ignored:6379/3",
            "REDIS_SENTINELS": "s1:26379,s2:26380",
            "REDIS_SENTINEL_MASTER": "jobs",
        }
    )
    assert dashboard_redis_url(settings) == "redis+sentinel://s1:26379,s2:26380/jobs/3"
    assert dashboard_redis_url(Settings.from_env({"REDIS_SENTINELS": "s1:1"})).endswith("/0")


def test_an_ipv6_sentinel_is_refused_with_a_clear_error() -> None:
    settings = Settings.from_env({"REDIS_SENTINELS": "[::1]:26379"})
    with pytest.raises(ConfigError, match="IPv6"):
        dashboard_redis_url(settings)
