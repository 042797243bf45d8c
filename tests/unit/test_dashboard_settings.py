"""DASHBOARD_ALLOWED_HOSTS (marker `security`)."""

from __future__ import annotations

import pytest

from cache.errors import ConfigError
from cache.settings import Settings

pytestmark = pytest.mark.security


def test_allowed_hosts_default_to_none_beyond_bind_and_loopback() -> None:
    assert Settings.from_env({}).dashboard_allowed_hosts == ()


def test_allowed_hosts_are_normalised() -> None:
    settings = Settings.from_env(
        {"DASHBOARD_ALLOWED_HOSTS": " Jobs.Example.com, 10.0.0.5,::1,[fd00::1],, dash. "}
    )
    assert settings.dashboard_allowed_hosts == ("jobs.example.com", "10.0.0.5", "[::1]", "[fd00::1]", "dash")


@pytest.mark.parametrize(
    "value",
    [
        "jobs.example.com:9181",
        "*.example.com",
        "http://jobs.example.com",
        "a b",
        "jobs.example.com/x",
        "-x.com",
    ],
)
def test_a_bad_allowed_host_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"DASHBOARD_ALLOWED_HOSTS must be .* got item"):
        Settings.from_env({"DASHBOARD_ALLOWED_HOSTS": value})
