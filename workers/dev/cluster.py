"""A local Redis Cluster: 3 masters and 3 replicas on loopback, on the project's redis.conf.

For `python -m workers up --cluster` and the `cluster` tests. Every node is a
`RedisServer` on `redis.conf` plus the cluster options; the cluster is formed from Python
(CLUSTER MEET, ADDSLOTSRANGE, REPLICATE), so no `redis-cli` is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from cache.connections import REDIS_ERRORS
from workers.dev.servers import PRIMARY_CONF, RedisServer, free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 2000  # a dead master is failed over after about 2-4 s: short for tests
SETTLE_TIMEOUT_S = 60.0


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except REDIS_ERRORS:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the local cluster: {what} not within {timeout_s} s")


@dataclass
class LocalCluster:
    """`masters` masters with `replicas` replicas each, every node a `RedisServer`.

    Args:
        directory: one sub-directory per node (data, nodes.conf, log).
        ports: fixed ports (e.g. for `up --cluster`); free ports when empty.
    """

    directory: Path
    masters: int = 3
    replicas: int = 1
    ports: list[int] = field(default_factory=list)
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def addresses(self) -> str:
        """The `REDIS_CLUSTER_NODES` value for this cluster."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> LocalCluster:
        """Start every node, form the cluster, and wait until it serves every slot."""
        count = self.masters * (1 + self.replicas)
        for index in range(count):
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--repl-diskless-sync-delay", "0",  # the shipped 5 s wait for more replicas
                "--appendonly", "no",  # a scratch cluster: no fsync on loopback tests
            ]  # fmt: skip
            port = self.ports[index] if self.ports else free_port(with_bus_port=True)
            node = RedisServer(PRIMARY_CONF, self.directory / f"node-{index}", port=port, extra_args=extra)
            self.nodes.append(node.start())
        self._form()
        self.wait_settled()
        return self

    def _form(self) -> None:
        """MEET every node, give each master a range of slots, make the rest replicas."""
        clients = [node.client(decode_responses=True) for node in self.nodes]
        for node in self.nodes[1:]:
            _command(clients[0], "CLUSTER", "MEET", "127.0.0.1", node.port)
        _wait(lambda: all(len(_known(c)) == len(self.nodes) for c in clients), 30, "every node met")
        step = SLOTS // self.masters
        for index in range(self.masters):
            high = SLOTS - 1 if index == self.masters - 1 else (index + 1) * step - 1
            _command(clients[index], "CLUSTER", "ADDSLOTSRANGE", index * step, high)
        ids = [_command(c, "CLUSTER", "MYID") for c in clients]
        _wait(lambda: all(_masters(c) >= self.masters for c in clients), 30, "the masters known")
        for index in range(self.masters, len(self.nodes)):
            master = (index - self.masters) % self.masters
            _command(clients[index], "CLUSTER", "REPLICATE", ids[master])
        for client in clients:
            client.close()

    def wait_settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until every running node says `cluster_state:ok`, every slot has a live
        master, each master has its replicas in sync, and no node still flags a running
        node as failing (after a start or a failover)."""
        _wait(self._settled, timeout_s, "state ok with every slot served")

    def _settled(self) -> bool:
        running = [node for node in self.nodes if node.running]
        for node in running:
            client = node.client(decode_responses=True, socket_timeout=1)
            try:
                info = client.cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != SLOTS:
                    return False
                if _role(client) == "slave" and client.info("replication").get("master_link_status") != "up":
                    return False
                if _flagged_failing(client) & {node.port for node in running}:
                    return False
            finally:
                client.close()
        live = {node.port for node in running}
        owners = self.slot_owners()
        return len(owners) == SLOTS and set(owners.values()) <= live

    def slot_owners(self) -> dict[int, int]:
        """The port of the master serving each slot, as a running node sees it."""
        node = next(node for node in self.nodes if node.running)
        client = node.client(socket_timeout=1)
        try:
            ranges = _command(client, "CLUSTER", "SLOTS")
        finally:
            client.close()
        owners: dict[int, int] = {}
        for low, high, master, *_ in ranges:
            for slot in range(int(low), int(high) + 1):
                owners[slot] = int(master[1])
        return owners

    def master_of_slot(self, slot: int) -> RedisServer:
        port = self.slot_owners()[slot]
        return next(node for node in self.nodes if node.port == port)

    def master_of_key(self, key: str | bytes) -> RedisServer:
        """The node that serves `key` now (its hash slot's master)."""
        return self.master_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def master_nodes(self) -> list[RedisServer]:
        """The running nodes that serve slots now."""
        ports = set(self.slot_owners().values())
        return [node for node in self.nodes if node.port in ports and node.running]

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node: its replica takes over after about `NODE_TIMEOUT_MS`."""
        node.kill()

    def restart(self, node: RedisServer) -> None:
        """Start a killed node again on its port and data; it rejoins (as a replica if failed over)."""
        if not node.running:
            node.start()

    def flushall(self) -> None:
        """FLUSHALL on every master (a replica refuses writes and follows its master)."""
        for node in self.master_nodes():
            client = node.client()
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _known(client: redis.Redis) -> list[str]:
    return [line for line in _command(client, "CLUSTER", "NODES").splitlines() if line.strip()]


def _flagged_failing(client: redis.Redis) -> set[int]:
    """Ports this node flags `fail` or `fail?` (a restarted node is cleared by gossip, later)."""
    ports = set()
    for line in _known(client):
        address, flags = line.split()[1:3]
        if {"fail", "fail?"} & set(flags.split(",")):
            ports.add(int(address.split("@")[0].rsplit(":", 1)[1]))
    return ports


def _masters(client: redis.Redis) -> int:
    return sum(1 for line in _known(client) if "master" in line.split()[2])


def _role(client: redis.Redis) -> str:
    return str(_command(client, "ROLE")[0])


def _command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
