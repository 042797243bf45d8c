"""Settings parse the environment strictly and name the variable in every error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cache.errors import ConfigError
from cache.settings import Settings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.cache_redis_url == settings.redis_url
    assert settings.sentinel is None
    assert settings.database_url.startswith("sqlite:///")
    assert settings.reports_dir == Path("var/reports")
    assert settings.reports_base_url is None


def test_reports_base_url_loses_its_trailing_slash() -> None:
    settings = Settings.from_env({"REPORTS_BASE_URL": "https://app.example.com/reports/"})
    assert settings.reports_base_url == "https://app.example.com/reports"


def test_cache_url_defaults_to_primary_url() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://10.0.0.5:6400/2"})
    assert settings.cache_redis_url == "redis://10.0.0.5:6400/2"


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://cache.example.com:6380/1", "unix:///var/run/redis.sock"],
)
def test_accepted_redis_urls(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("env", "named", "expected"),
    [
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL", "redis://, rediss:// or unix://"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL", "redis://"),
        ({"REDIS_URL": "redis://localhost:port/0"}, "REDIS_URL", "invalid port"),
        ({"REDIS_URL": "redis://:6379/0"}, "REDIS_URL", "no host"),
        ({"REDIS_URL": "redis://localhost:6379/abc"}, "REDIS_URL", "database must be a number"),
        ({"CACHE_REDIS_URL": "memcached://x"}, "CACHE_REDIS_URL", "redis://"),
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT", "must be an integer"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT", "between 1 and 65535"),
        ({"REDIS_SOCKET_TIMEOUT": "-1"}, "REDIS_SOCKET_TIMEOUT", "greater than 0"),
        ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS", "boolean"),
        ({"SMTP_TLS": "1", "SMTP_STARTTLS": "1"}, "SMTP_TLS", "exclusive"),
        ({"REDIS_SENTINELS": "host-without-port"}, "REDIS_SENTINELS", "host:port"),
        ({"REDIS_SENTINELS": "a:1,b:notaport"}, "REDIS_SENTINELS", "host:port"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL", "sqlite:///"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "'text' or 'json'"),
        ({"REPORTS_BASE_URL": "ftp://files.example.com"}, "REPORTS_BASE_URL", "http:// or https://"),
        ({"REPORTS_BASE_URL": "https://"}, "REPORTS_BASE_URL", "with a host"),
        ({"REPORTS_BASE_URL": "https://x.example.com/r?token=1"}, "REPORTS_BASE_URL", "no query"),
        ({"SMTP_HELO_NAME": "myhost"}, "SMTP_HELO_NAME", "fully qualified host name"),
        ({"SMTP_HELO_NAME": "[not-an-ip]"}, "SMTP_HELO_NAME", "address literal"),
        ({"SMTP_HELO_NAME": "[::1]"}, "SMTP_HELO_NAME", "[IPv6:2001:db8::1] for IPv6"),
        ({"SMTP_HELO_NAME": "[IPv6:1.2.3.4]"}, "SMTP_HELO_NAME", "[IPv6:2001:db8::1] for IPv6"),
        ({"SMTP_HELO_NAME": "1.2.3.4"}, "SMTP_HELO_NAME", "[IPv6:2001:db8::1] for IPv6"),
        ({"SMTP_HELO_NAME": "[IPv6:fe80::1%eth0]"}, "SMTP_HELO_NAME", "[IPv6:2001:db8::1] for IPv6"),
        ({"SMTP_HELO_NAME": "[1.2.3.256]"}, "SMTP_HELO_NAME", "[IPv6:2001:db8::1] for IPv6"),
        ({"SMTP_HELO_NAME": "[IPv6:]"}, "SMTP_HELO_NAME", "[IPv6:2001:db8::1] for IPv6"),
        ({"MAIL_RETURN_PATH": "Bounces <b@example.com>"}, "MAIL_RETURN_PATH", "bare ASCII address"),
        ({"KRYONIX_ENV": "prod"}, "KRYONIX_ENV", "'development' or 'staging' or 'production'"),
        ({"MAIL_ALLOW_TEST_DOMAINS": "yes please"}, "MAIL_ALLOW_TEST_DOMAINS", "boolean"),
        (
            {"MAIL_ALLOW_TEST_DOMAINS": "true", "KRYONIX_ENV": "production"},
            "MAIL_ALLOW_TEST_DOMAINS",
            "refused when KRYONIX_ENV=production",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert named in str(info.value)
    assert expected in str(info.value)


def test_mail_envelope_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.smtp_helo_name, defaults.mail_return_path) == (None, None)
    assert (defaults.mail_allow_test_domains, defaults.environment) == (False, "development")
    chosen = Settings.from_env(
        {
            "SMTP_HELO_NAME": "worker1.example.com",
            "MAIL_RETURN_PATH": "bounces@example.com",
            "MAIL_ALLOW_TEST_DOMAINS": "true",
            "KRYONIX_ENV": "staging",
        }
    )
    assert chosen.smtp_helo_name == "worker1.example.com"
    assert chosen.mail_return_path == "bounces@example.com"
    assert (chosen.mail_allow_test_domains, chosen.environment) == (True, "staging")
    for literal in (
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[IPv6:::1]",
        "[IPv6:::ffff:192.0.2.1]",
        "mx1.example",
    ):
        assert Settings.from_env({"SMTP_HELO_NAME": literal}).smtp_helo_name == literal


def test_password_in_url_is_redacted_from_errors() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://user:s3cret@host:port/0"})
    assert "s3cret" not in str(info.value)


def test_sentinel_settings() -> None:
    settings = Settings.from_env(
        {
            "REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380",
            "REDIS_SENTINEL_MASTER": "kryonix",
            "REDIS_SENTINEL_PASSWORD": "pw",
        }
    )
    assert settings.sentinel is not None
    assert settings.sentinel.addresses == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert settings.sentinel.master_name == "kryonix"
    assert settings.sentinel.password == "pw"


def test_secrets_are_not_in_repr() -> None:
    settings = Settings.from_env({"REDIS_PASSWORD": "hunter2", "SMTP_PASSWORD": "smtp-secret"})
    assert "hunter2" not in repr(settings)
    assert "smtp-secret" not in repr(settings)


def test_env_example_lists_every_variable_the_settings_read() -> None:
    import re

    from workers.dev.servers import PROJECT_ROOT

    source = (PROJECT_ROOT / "cache" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"', source)) | set(
        re.findall(r'"(REDIS_SENTINEL\w*)"', source)
    )
    listed = {
        line.split("=", 1)[0]
        for line in (PROJECT_ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert read, "the pattern found no variable in settings.py"
    assert read <= listed, f"missing from .env.example: {sorted(read - listed)}"


def test_event_stream_limits_come_from_the_environment(settings_env: Callable[..., None]) -> None:
    import fakeredis

    from cache.realtime.service import RealtimeService

    assert Settings.from_env({}).events_stream_maxlen == 1000
    with pytest.raises(ConfigError, match="EVENTS_STREAM_MAXLEN must be an integer"):
        Settings.from_env({"EVENTS_STREAM_MAXLEN": "lots"})
    with pytest.raises(ConfigError, match="EVENTS_STREAM_TTL must be greater than 0"):
        Settings.from_env({"EVENTS_STREAM_TTL": "0"})
    settings_env(EVENTS_STREAM_MAXLEN="50", EVENTS_STREAM_TTL="600")
    service = RealtimeService(fakeredis.FakeRedis())
    assert (service.stream_maxlen, service.stream_ttl_s) == (50, 600)
    assert RealtimeService(fakeredis.FakeRedis(), stream_maxlen=7).stream_maxlen == 7
