"""Connections built from settings against real redis-servers (marker `connection`)."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cache.connections import Role, build_async_client, build_client, ping
from cache.errors import ConfigError, RedisUnavailable
from cache.health import check_eviction_policy, role_status
from cache.settings import Settings
from tests.integration.sentinel import SentinelCluster
from workers.dev.servers import CACHE_CONF, PRIMARY_CONF, RedisServer, free_port

pytestmark = pytest.mark.connection

Factory = Callable[..., RedisServer]


def test_both_roles_answer_ping(primary: redis.Redis, cache_redis: redis.Redis) -> None:
    assert ping(Role.PRIMARY) >= 0
    assert ping(Role.CACHE) >= 0
    primary.set("kx:test", "p")
    assert cache_redis.get("kx:test") is None, "the two roles must be different servers in tests"


def test_clients_name_their_role(primary: redis.Redis) -> None:
    name = primary.client_getname()
    assert name is not None
    assert str(name).startswith("kryonix:primary:")


def test_wrong_password_names_the_setting(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF, "--requirepass", "right-password")
    settings = Settings.from_env({"REDIS_URL": server.url, "REDIS_PASSWORD": "wrong-password"})
    with pytest.raises(RedisUnavailable) as info:
        ping(Role.PRIMARY, build_client(Role.PRIMARY, settings), settings=settings)
    assert "REDIS_PASSWORD" in str(info.value)
    assert "wrong-password" not in str(info.value)
    assert info.value.setting == "REDIS_PASSWORD"


def test_missing_password_names_the_setting(redis_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    server = redis_factory(PRIMARY_CONF, "--requirepass", "right-password")
    monkeypatch.setenv("REDIS_URL", server.url)
    settings = Settings.from_env({"REDIS_URL": server.url})
    with pytest.raises(RedisUnavailable) as info:
        ping(Role.PRIMARY, build_client(Role.PRIMARY, settings), settings=settings)
    assert "REDIS_PASSWORD" in str(info.value)


def test_right_password_works(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF, "--requirepass", "right-password")
    settings = Settings.from_env({"REDIS_URL": server.url, "REDIS_PASSWORD": "right-password"})
    assert ping(Role.PRIMARY, build_client(Role.PRIMARY, settings), settings=settings) >= 0


def test_unreachable_host_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", url)
    settings = Settings.from_env({"REDIS_URL": url, "REDIS_RETRY_ATTEMPTS": "1"})
    with pytest.raises(RedisUnavailable) as info:
        ping(Role.PRIMARY, build_client(Role.PRIMARY, settings), settings=settings)
    message = str(info.value)
    assert "REDIS_URL" in message
    assert "unreachable" in message
    assert url in message


def test_unreachable_cache_names_cache_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("CACHE_REDIS_URL", url)
    settings = Settings.from_env({"CACHE_REDIS_URL": url, "REDIS_RETRY_ATTEMPTS": "1"})
    with pytest.raises(RedisUnavailable) as info:
        ping(Role.CACHE, build_client(Role.CACHE, settings), settings=settings)
    assert "CACHE_REDIS_URL" in str(info.value)


def test_malformed_url_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis//localhost"})
    assert "REDIS_URL" in str(info.value)


def test_status_command_exit_code_for_unreachable_role(primary_server: RedisServer, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": primary_server.url,
        "CACHE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "REDIS_RETRY_ATTEMPTS": "1",
    }
    result = subprocess.run(
        [*_python(), "-m", "workers", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "[cache] UNREACHABLE" in result.stdout
    assert "CACHE_REDIS_URL" in result.stdout


def test_status_command_reports_both_roles(primary_server: RedisServer, cache_server: RedisServer) -> None:
    import json

    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": primary_server.url, "CACHE_REDIS_URL": cache_server.url}
    result = subprocess.run(
        [*_python(), "-m", "workers", "status", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["roles"]["primary"]["maxmemory_policy"] == "noeviction"
    assert report["roles"]["primary"]["aof_enabled"] is True
    assert report["roles"]["cache"]["maxmemory_policy"] == "allkeys-lru"


def test_status_command_rejects_bad_config() -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "http://nope"}
    result = subprocess.run(
        [*_python(), "-m", "workers", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def _python() -> list[str]:
    import sys

    return [sys.executable]


def test_existing_client_survives_server_restart(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF)
    client = build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url}))
    client.set("before", "1")
    server.restart(kill=False)
    # Same client object, no reconnect by the caller: redis-py's Retry reconnects.
    assert client.get("before") == b"1"
    client.set("after", "2")
    assert client.get("after") == b"2"


def test_existing_client_rides_over_a_short_outage(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF)
    client = build_client(Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url}))
    client.set("k", "v")
    server.kill()
    import threading

    restarter = threading.Timer(0.5, server.start)
    restarter.start()
    try:
        assert client.get("k") == b"v"  # retried with backoff until the server is back
    finally:
        restarter.join()


def test_primary_config_loads_with_its_promises(primary_server: RedisServer) -> None:
    client = primary_server.client(decode_responses=True)
    config = client.config_get("*")
    assert config["maxmemory-policy"] == "noeviction"
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == "900 1 300 10 60 10000"


def test_cache_config_loads_with_its_promises(cache_server: RedisServer) -> None:
    client = cache_server.client(decode_responses=True)
    config = client.config_get("*")
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert int(config["maxmemory"]) == 2 * 1024**3
    assert config["appendonly"] == "no"


def test_acknowledged_writes_survive_sigkill(redis_factory: Factory) -> None:
    server = redis_factory(PRIMARY_CONF)
    client = server.client()
    for i in range(500):
        client.set(f"durable:{i}", i)
    time.sleep(1.5)  # appendfsync everysec: one fsync has happened since the last write
    server.kill()
    server.start()
    client = server.client()
    assert [int(client.get(f"durable:{i}") or -1) for i in range(500)] == list(range(500))


def test_eviction_guard_warns_for_evicting_primary(
    redis_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory(CACHE_CONF)
    with caplog.at_level(logging.WARNING):
        message = check_eviction_policy(server.client())
    assert message is not None
    assert "allkeys-lru" in message
    assert "noeviction" in message
    assert any("allkeys-lru" in r.getMessage() for r in caplog.records)


def test_eviction_guard_silent_for_noeviction(
    primary_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert check_eviction_policy(primary_server.client()) is None
    assert not caplog.records


def test_status_marks_evicting_primary(redis_factory: Factory) -> None:
    server = redis_factory(CACHE_CONF)
    status = role_status(server.client(), role=Role.PRIMARY)
    assert status.reachable
    assert status.warning is not None


# --- Sentinel: one master, one replica, three sentinels on loopback ---------------


@pytest.mark.timeout(120)
def test_sentinel_client_follows_failover(sentinel_cluster: SentinelCluster) -> None:
    settings = Settings.from_env({"REDIS_SENTINELS": sentinel_cluster.addresses})
    shipped_config = PRIMARY_CONF.read_bytes()
    client = build_client(Role.PRIMARY, settings)
    client.set("before-failover", "1")
    client.wait(1, 5000)  # the replica has the write before its master dies
    old_master_port = sentinel_cluster.master.port
    sentinel_cluster.master.kill()

    deadline = time.monotonic() + 60
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.set("after-failover", "2")
            break
        except redis.RedisError as exc:  # no master elected yet
            last_error = exc
            time.sleep(0.5)
    else:
        pytest.fail(f"no write succeeded within 60 s of the failover: {last_error}")

    assert client.get("before-failover") == b"1"
    assert client.get("after-failover") == b"2"
    port = client.connection_pool.get_master_address()[1]  # type: ignore[attr-defined]
    assert port == sentinel_cluster.replica.port != old_master_port
    # Sentinel rewrites the config of the servers it reconfigures: never the shipped file.
    assert PRIMARY_CONF.read_bytes() == shipped_config


def test_status_works_when_config_is_renamed(redis_factory: Factory) -> None:
    """Managed Redis often disables CONFIG: the policy is read from INFO instead."""
    server = redis_factory(PRIMARY_CONF, "--rename-command", "CONFIG", '""')
    status = role_status(server.client(), role=Role.PRIMARY)
    assert status.reachable
    assert status.maxmemory_policy == "noeviction"
    assert status.warning is None


def test_a_unix_socket_url_works_for_sync_and_async_clients(
    redis_factory: Callable[..., RedisServer], tmp_path: Path, settings_env: Callable[..., None]
) -> None:
    import asyncio

    socket_path = tmp_path / "redis.sock"
    redis_factory(PRIMARY_CONF, "--unixsocket", str(socket_path), "--unixsocketperm", "700", name="unix")
    settings_env(REDIS_URL=f"unix://{socket_path}", CACHE_REDIS_URL=f"unix://{socket_path}")
    assert build_client(Role.PRIMARY).ping()

    async def ping() -> bool:
        client = build_async_client(Role.PRIMARY)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    assert asyncio.run(ping())
