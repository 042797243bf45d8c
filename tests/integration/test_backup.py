"""`backup()`: BGSAVE, wait, verify, report, against real redis-servers (marker `ops`).

Slow saves come from the server's own `rdb-key-save-delay` (microseconds per key), so
"a save is running" is a real state of a real server, not a mock.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cache import connections
from cache.connections import Role
from cache.errors import RedisUnavailable
from cache.settings import Settings
from tests.waiting import wait_until
from workers.cli.backup import BackupError, backup
from workers.dev.servers import PRIMARY_CONF, RedisServer

pytestmark = pytest.mark.ops

Factory = Callable[..., RedisServer]


def _client(server: RedisServer) -> redis.Redis:
    return connections.build_client(
        Role.PRIMARY, Settings.from_env({"REDIS_URL": server.url, "REDIS_RETRY_ATTEMPTS": "1"})
    )


def _saves(client: redis.Redis) -> int:
    return int(client.info("persistence")["rdb_saves"])


def _slow_saves(client: redis.Redis, keys: int, delay_us: int) -> None:
    """Make every save take about `keys * delay_us` microseconds."""
    client.mset({f"k{i}": "v" for i in range(keys)})
    client.config_set("rdb-key-save-delay", delay_us)


def test_backup_gives_a_newer_lastsave_and_the_file(primary: redis.Redis) -> None:
    primary.set("k", "v")
    before = int(primary.lastsave().timestamp())

    result = backup(primary, timeout_s=60)

    assert result["lastsave"] > before
    assert result["previous_lastsave"] == before
    assert int(primary.lastsave().timestamp()) == result["lastsave"]
    directory = str(primary.config_get("dir")["dir"])
    assert result["rdb_path"] == os.path.join(directory, "dump.rdb")
    assert os.path.getsize(result["rdb_path"]) == result["size_bytes"] > 0
    assert result["warning"] is None
    assert result["waited_for_running_save"] is False
    assert primary.info("persistence")["rdb_last_bgsave_status"] == "ok"


def test_two_backups_in_a_row_both_move_lastsave(primary: redis.Redis) -> None:
    # LASTSAVE has one-second resolution: the second call must not mistake "same
    # second" for "no save", nor report the first save as its own.
    first = backup(primary, timeout_s=60)
    second = backup(primary, timeout_s=60)
    assert second["lastsave"] > first["lastsave"]
    assert second["previous_lastsave"] == first["lastsave"]


def test_a_running_save_is_waited_for_then_a_fresh_one_taken(redis_factory: Factory) -> None:
    client = _client(redis_factory())
    _slow_saves(client, keys=5, delay_us=200_000)  # ~1 s per save
    saves = _saves(client)
    assert client.bgsave()
    assert int(client.info("persistence")["rdb_bgsave_in_progress"]) == 1

    result = backup(client, timeout_s=60)

    assert result["waited_for_running_save"] is True
    assert _saves(client) == saves + 2, "the running save, then our own"
    assert os.path.getsize(result["rdb_path"]) == result["size_bytes"]


def test_a_save_during_an_aof_rewrite_is_scheduled_and_awaited(redis_factory: Factory) -> None:
    client = _client(redis_factory())
    _slow_saves(client, keys=5, delay_us=200_000)
    saves = _saves(client)
    client.bgrewriteaof()
    wait_until(
        lambda: int(client.info("persistence")["aof_rewrite_in_progress"]) == 1,
        10,
        "the AOF rewrite to start",
    )

    result = backup(client, timeout_s=60)

    assert int(client.info("persistence")["aof_rewrite_in_progress"]) == 0, "our save ran after the rewrite"
    assert _saves(client) == saves + 1
    assert result["lastsave"] > result["previous_lastsave"]


def test_a_save_that_does_not_finish_in_time_is_an_error(redis_factory: Factory) -> None:
    client = _client(redis_factory())
    _slow_saves(client, keys=3, delay_us=1_000_000)  # ~3 s
    # Spend none of the budget on the same-second guard: start in a later second than LASTSAVE.
    lastsave = int(client.lastsave().timestamp())
    wait_until(lambda: int(client.time()[0]) > lastsave, 10, "the server clock to pass LASTSAVE")
    with pytest.raises(BackupError, match=r"backup did not finish within 0\.5 s: still waiting for BGSAVE"):
        backup(client, timeout_s=0.5)


def test_a_failed_save_is_an_error(redis_factory: Factory, tmp_path: Path) -> None:
    server = redis_factory(PRIMARY_CONF, "--enable-protected-configs", "yes")  # allow CONFIG SET dir
    client = _client(server)
    gone = tmp_path / "gone"
    gone.mkdir()
    client.config_set("dir", str(gone))
    shutil.rmtree(gone)  # Redis now cannot create its temp RDB file
    client.set("k", "v")
    with pytest.raises(BackupError, match=r"BGSAVE failed \(rdb_last_bgsave_status=err\)"):
        backup(client, timeout_s=60)


def test_config_refused_still_backs_up_but_says_where_the_file_is_unknown(redis_factory: Factory) -> None:
    client = _client(redis_factory(PRIMARY_CONF, "--rename-command", "CONFIG", ""))
    client.set("k", "v")
    result = backup(client, timeout_s=60)
    assert result["lastsave"] > result["previous_lastsave"]
    assert result["rdb_path"] is None
    assert result["size_bytes"] is None
    assert "CONFIG GET refused" in result["warning"]


def test_bgsave_refused_is_an_error(redis_factory: Factory) -> None:
    client = _client(redis_factory(PRIMARY_CONF, "--rename-command", "BGSAVE", ""))
    with pytest.raises(BackupError, match="BGSAVE refused: unknown command 'BGSAVE'"):
        backup(client, timeout_s=60)


def test_unreachable_redis_names_the_setting(redis_factory: Factory) -> None:
    server = redis_factory()
    client = _client(server)
    server.kill()
    with pytest.raises(RedisUnavailable, match="REDIS_URL"):
        backup(client, timeout_s=60)
