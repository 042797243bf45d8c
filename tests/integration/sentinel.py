"""One master, one replica and three Sentinels on loopback ports, for failover tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.waiting import wait_until
from workers.dev.servers import PRIMARY_CONF, RedisServer, free_port, redis_server_binary

MASTER_NAME = "mymaster"


class SentinelCluster:
    def __init__(self, root: Path, factory: Callable[..., RedisServer]) -> None:
        # The shipped config's diskless sync waits 5 s for more replicas; here there is one.
        self.master = factory(PRIMARY_CONF, "--repl-diskless-sync-delay", "0", name="master")
        self.replica = factory(
            PRIMARY_CONF, "--replicaof", "127.0.0.1", str(self.master.port), name="replica"
        )
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        for index in range(3):
            port = free_port()
            conf = root / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {root}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = str(root / f"sentinel-{index}.log")
            command = [redis_server_binary(), str(conf), "--sentinel", "--logfile", log]
            self.sentinels.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
            )
            self.ports.append(port)
        for port in self.ports:
            wait_ping(port)
        wait_replica_synced(self.master)

    @property
    def addresses(self) -> str:
        """The REDIS_SENTINELS value for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait()


def answers_ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def wait_ping(port: int, timeout_s: float = 10) -> None:
    wait_until(lambda: answers_ping(port), timeout_s, f"port {port} to answer PING")


def wait_replica_synced(master: RedisServer, timeout_s: float = 20) -> None:
    client = master.client(decode_responses=True)

    def synced() -> bool:
        info = client.info("replication")
        return info.get("connected_slaves", 0) >= 1 and "online" in str(info.get("slave0", ""))

    wait_until(synced, timeout_s, "the replica to sync with its master")


@pytest.fixture
def sentinel_cluster(tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path, redis_factory)
    yield cluster
    cluster.stop()
