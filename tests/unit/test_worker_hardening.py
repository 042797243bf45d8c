"""Pure checks of worker hardening: start-up environment, settings, ids and names (marker `security`)."""

from __future__ import annotations

from collections.abc import Callable

import click
import pytest
import redis

from cache.errors import ConfigError
from cache.settings import Settings
from jobs.allowlist import JobNotAllowed, resolve
from jobs.quarantine import UnreadableJob, parse_id
from workers.cli.main import parse_duration
from workers.startup import SAFE_CLASSES, worker_environment

pytestmark = pytest.mark.security

URL = "redis://10.1.2.3:6390/2"


def test_worker_environment_sets_the_safe_classes_and_falls_back_to_redis_url(
    settings_env: Callable[..., None],
) -> None:
    settings_env(REDIS_URL=URL)
    env = worker_environment({"PATH": "/bin"}, ["email"])
    assert {k: env[k] for k in SAFE_CLASSES} == SAFE_CLASSES
    assert env["RQ_REDIS_URL"] == URL
    assert env["PATH"] == "/bin"


def test_the_fallback_url_carries_redis_password(settings_env: Callable[..., None]) -> None:
    settings_env(REDIS_URL=URL, REDIS_PASSWORD="s3 cr&t")
    env = worker_environment({}, ["email"])
    client = redis.Redis.from_url(env["RQ_REDIS_URL"])
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "10.1.2.3",
        6390,
        2,
        "s3 cr&t",
    )


def test_worker_environment_keeps_an_explicit_rq_redis_url_and_the_same_classes() -> None:
    env = worker_environment({"RQ_REDIS_URL": "redis://elsewhere:1/0", **SAFE_CLASSES}, ["email", "--burst"])
    assert env["RQ_REDIS_URL"] == "redis://elsewhere:1/0"


@pytest.mark.parametrize(
    "topology",
    [{"REDIS_CLUSTER_NODES": "10.0.0.1:7000,10.0.0.2:7000"}, {"REDIS_SENTINELS": "10.0.0.1:26379"}],
)
def test_with_a_cluster_or_sentinel_rq_gets_the_settings_primary_not_a_url(
    settings_env: Callable[..., None], topology: dict[str, str]
) -> None:
    settings_env(**topology)
    env = worker_environment({"RQ_REDIS_URL": URL}, ["email"])
    assert env["RQ_CONNECTION_CLASS"] == "workers.startup.PrimaryClient"
    assert env["RQ_REDIS_URL"] != URL  # a label PrimaryClient ignores: no server of its own
    with pytest.raises(ConfigError, match="--connection-class refused"):
        worker_environment({}, ["email", "--connection-class", "redis.Redis"])


@pytest.mark.parametrize(
    ("environ", "arguments", "named"),
    [
        ({"RQ_WORKER_CLASS": "rq.Worker"}, [], "RQ_WORKER_CLASS"),
        ({"RQ_JOB_CLASS": "rq.job.Job"}, [], "RQ_JOB_CLASS"),
        ({"RQ_QUEUE_CLASS": "rq.Queue"}, [], "RQ_QUEUE_CLASS"),
        ({}, ["email", "-w", "rq.Worker"], "-w"),
        ({}, ["email", "-wrq.Worker"], "-w"),
        ({}, ["email", "--worker-class=rq.Worker"], "--worker-class"),
        ({}, ["email", "-j", "rq.job.Job"], "-j"),
        ({}, ["email", "--queue-class", "rq.Queue"], "--queue-class"),
        ({}, ["email", "-S", "pickle"], "--serializer"),
        ({}, ["email", "-Spickle"], "--serializer"),
        ({}, ["email", "--serializer=rq.serializers.DefaultSerializer"], "--serializer"),
    ],
)
def test_worker_environment_refuses_another_class_or_serializer(
    environ: dict[str, str], arguments: list[str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        worker_environment(environ, arguments)


def test_json_serializer_and_our_own_classes_are_accepted() -> None:
    worker_environment({}, ["email", "-S", "json", "-w", SAFE_CLASSES["RQ_WORKER_CLASS"]])


@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-3", "12 MB"])
def test_worker_max_rss_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(ConfigError, match="WORKER_MAX_RSS_MB"):
        Settings.from_env({"WORKER_MAX_RSS_MB": value})


def test_worker_max_rss_and_webhooks_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.worker_max_rss_mb is None
    assert settings.allow_job_webhooks is False
    assert Settings.from_env({"WORKER_MAX_RSS_MB": "512"}).worker_max_rss_mb == 512
    with pytest.raises(ConfigError, match="ALLOW_JOB_WEBHOOKS"):
        Settings.from_env({"ALLOW_JOB_WEBHOOKS": "perhaps"})


@pytest.mark.parametrize(
    "text", ["7d\n", "7d\r\n", "12h ", "\n30m", "7", "d", "7w", "-1d", "7d7d", "\u0667d"]
)
def test_duration_refuses_anything_but_a_bare_duration(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(text)


def test_duration_accepts_the_documented_forms() -> None:
    assert [parse_duration(t) for t in ("30s", "30m", "12h", "7d")] == [30, 1800, 43200, 604800]


@pytest.mark.parametrize(
    "name", ["jobs.diagnostics.noop\n", "jobs.diagnostics.noop\r", "\njobs.diagnostics.noop"]
)
def test_a_function_name_with_a_newline_is_not_a_dotted_name(name: str) -> None:
    with pytest.raises(JobNotAllowed, match="is not a dotted name"):
        resolve(name)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"a/b", "malformed"),
        (b"a.b", "malformed"),
        (b"", "malformed"),
        (b"ok\n", "malformed"),
        (b"\xff\xfe", "not UTF-8"),
        ("with space", "malformed"),
    ],
)
def test_unusable_ids_are_explained(raw: bytes | str, reason: str) -> None:
    with pytest.raises(UnreadableJob, match=reason):
        parse_id(raw)


def test_execution_keys_name_their_job() -> None:
    assert parse_id(b"abc-123:exec-1") == "abc-123"
    assert parse_id("abc_123") == "abc_123"
