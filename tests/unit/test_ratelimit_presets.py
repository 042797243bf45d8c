"""The presets' environment overrides (marker `ratelimit`)."""

from __future__ import annotations

from collections.abc import Callable

import fakeredis
import pytest

from cache.errors import ConfigError
from cache.limits import API, BY_IP, BY_USER, FailurePolicy, parse_preset
from cache.ratelimit.service import RateLimiter
from cache.settings import Settings

pytestmark = pytest.mark.ratelimit


def test_limit_and_window_replace_the_preset_and_keep_the_rest() -> None:
    preset = parse_preset("RATELIMIT_BY_IP", "300/30", BY_IP)
    assert (preset.limit, preset.window_s, preset.window_ms) == (300, 30.0, 30_000)
    assert (preset.scope, preset.identifier_kind, preset.failure_policy) == (
        BY_IP.scope,
        BY_IP.identifier_kind,
        FailurePolicy.OPEN,
    )
    assert preset.resolution_s is None, "an exact preset stays exact"


def test_policy_suffix_and_resolution_kept_at_the_same_fraction() -> None:
    preset = parse_preset("RATELIMIT_API", "5000/7200:open", API)
    assert preset.failure_policy is FailurePolicy.OPEN
    assert preset.resolution_s == pytest.approx(72.0), "1% of the window, as the default"
    assert parse_preset("RATELIMIT_BY_USER", " 50/60:CLOSED ", BY_USER).failure_policy is FailurePolicy.CLOSED


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("100", "LIMIT/WINDOW_SECONDS"),
        ("100/", "LIMIT/WINDOW_SECONDS"),
        ("a/60", "LIMIT/WINDOW_SECONDS"),
        ("100/60:maybe", ":open or :closed"),
        ("-5/60", "LIMIT/WINDOW_SECONDS"),
        ("0/60", "limit"),
        ("100/0", "window"),
        ("100/99999999999", "window"),
        ("1000000/60", "limit"),
    ],
)
def test_bad_values_name_the_variable(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_preset("RATELIMIT_BY_IP", raw, BY_IP)
    assert "RATELIMIT_BY_IP" in str(info.value) and expected in str(info.value)


def test_settings_read_the_three_variables() -> None:
    settings = Settings.from_env({"RATELIMIT_BY_USER": "20/10", "RATELIMIT_API": "10/1:open"})
    assert settings.ratelimit_by_ip == BY_IP
    assert (settings.ratelimit_by_user.limit, settings.ratelimit_by_user.window_s) == (20, 10.0)
    assert settings.ratelimit_api.failure_policy is FailurePolicy.OPEN
    with pytest.raises(ConfigError, match="RATELIMIT_API"):
        Settings.from_env({"RATELIMIT_API": "lots"})


def test_limiter_uses_the_settings_presets_unless_given_its_own(settings_env: Callable[..., None]) -> None:
    settings_env(RATELIMIT_BY_IP="2/60")
    limiter = RateLimiter(fakeredis.FakeRedis())
    assert limiter.by_ip.limit == 2 and limiter.by_user == BY_USER
    assert RateLimiter(fakeredis.FakeRedis(), by_ip=BY_IP).by_ip == BY_IP


def test_a_limiter_given_every_preset_and_the_ipv6_prefix_does_not_read_the_settings(
    settings_env: Callable[..., None],
) -> None:
    settings_env(SMTP_TLS="1", SMTP_STARTTLS="1")  # an unrelated bad setting
    limiter = RateLimiter(fakeredis.FakeRedis(), by_ip=BY_IP, by_user=BY_USER, api=API, ipv6_prefix=56)
    assert limiter.api == API
    with pytest.raises(ConfigError, match="SMTP_TLS"):
        RateLimiter(fakeredis.FakeRedis())
