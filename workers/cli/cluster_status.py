"""The `cluster` section of `python -m workers status`: every node of a Redis Cluster PRIMARY.

The role lines above it describe the one node the cluster client answers INFO from; an
operator of a cluster needs every node: its role (and for a replica, its master and
link), memory, persistence, how many slots it serves, and which master owns the `{rq}`
slot, where all queue data lives (`RQ_KEY_PREFIX`).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry
from rq.defaults import RQ_KEY_PREFIX

from cache.connections import REDIS_ERRORS, is_cluster
from workers.cli.status_sections import human_bytes

NODE_TIMEOUT_S = 2.0  # one node's INFO; a dead node must not hold up the report


def rq_slot() -> int:
    """The hash slot of every RQ key (`RQ_KEY_PREFIX`, `{rq}` on a cluster)."""
    return int(key_slot(RQ_KEY_PREFIX.encode()))


def _slot_counts(client: Any) -> tuple[dict[str, int], str | None]:
    """Slots served per master address, and the address of the `{rq}` slot's master."""
    counts: dict[str, int] = {}
    rq_owner = None
    # redis-py's cluster client answers CLUSTER SLOTS as {(low, high): {"primary": (host, port), ...}}
    for (low, high), owners in client.execute_command("CLUSTER SLOTS").items():
        host, port = owners["primary"][:2]
        address = f"{host.decode() if isinstance(host, bytes) else host}:{int(port)}"
        counts[address] = counts.get(address, 0) + int(high) - int(low) + 1
        if int(low) <= rq_slot() <= int(high):
            rq_owner = address
    return counts, rq_owner


def _node_facts(host: str, port: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """INFO of one node over its own short-lived connection; an `error` when it does not answer."""
    options = {k: v for k, v in kwargs.items() if k not in ("retry", "host", "port", "connection_class")}
    # One attempt: redis-py's default retry (10) made a dead node cost 4 s, a stopped one 22 s.
    options.update(
        socket_timeout=NODE_TIMEOUT_S, socket_connect_timeout=NODE_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
    )
    node = redis.Redis(host=host, port=port, **options)
    try:
        info: dict[str, Any] = node.info("all")
    except REDIS_ERRORS as exc:
        return {"address": f"{host}:{port}", "reachable": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        node.close()
    facts = {
        "address": f"{host}:{port}",
        "reachable": True,
        "role": info.get("role"),
        "master": f"{info['master_host']}:{info['master_port']}" if "master_host" in info else None,
        "master_link_status": info.get("master_link_status"),
        "connected_replicas": info.get("connected_slaves"),
    }
    facts.update({name: info.get(name) for name in _INFO_FIELDS})
    facts["aof_enabled"] = bool(info.get("aof_enabled"))
    return facts


_INFO_FIELDS = (
    "redis_version",
    "used_memory",
    "maxmemory",
    "maxmemory_policy",
    "rdb_last_save_time",
    "rdb_last_bgsave_status",
    "rdb_changes_since_last_save",
    "aof_last_write_status",
)


def _members(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every node in the cluster's membership table (CLUSTER NODES), failing ones too.

    Not the client's slot map: CLUSTER SLOTS leaves out a replica the cluster has flagged
    as failing, which is the node an operator most needs to see. Each entry is the node's
    address and its table row, with the row's master id resolved to an address.
    """
    table: dict[str, dict[str, Any]] = client.cluster_nodes()
    address_of = {row["node_id"]: address for address, row in table.items()}
    members = []
    for address, row in table.items():
        flags = [flag for flag in row["flags"].split(",") if flag not in ("myself", "")]
        if "noaddr" in flags or ":" not in address:
            continue  # a forgotten node without an address: nothing to ask
        members.append((address, {"flags": flags, "master_of_record": address_of.get(row["master_id"])}))
    return members


def _unreachable_role(flags: list[str]) -> str | None:
    return "master" if "master" in flags else "slave" if "slave" in flags else None


def cluster_facts(client: Any) -> dict[str, Any]:
    """Every node of the cluster (masters first), with the `{rq}` slot's owner.

    Raises:
        RedisClusterException, redis.RedisError: no node answers CLUSTER SLOTS.
    """
    counts, rq_owner = _slot_counts(client)
    kwargs = dict(client.nodes_manager.connection_kwargs)
    nodes = []
    for address, member in _members(client):
        host, port = address.rsplit(":", 1)
        facts = _node_facts(host, int(port), kwargs)
        facts["flags"] = member["flags"]
        if not facts["reachable"]:
            facts["role"] = _unreachable_role(member["flags"])
            facts["master"] = member["master_of_record"]
        facts["slots"] = counts.get(facts["address"], 0)
        facts["owns_rq_slot"] = facts["address"] == rq_owner
        nodes.append(facts)
    nodes.sort(key=lambda n: (n.get("role") != "master", n["address"]))
    info = client.cluster_info()
    return {
        "state": info.get("cluster_state"),
        "rq_slot": rq_slot(),
        "rq_slot_master": rq_owner,
        "nodes": nodes,
    }


def _node_line(node: dict[str, Any]) -> list[str]:
    if not node["reachable"]:
        role = "master" if node["role"] == "master" else f"replica of {node['master']}"
        flags = ",".join(node["flags"])
        return [f"{node['address']} UNREACHABLE ({role}; cluster flags {flags}): {node['error']}"]
    if node["role"] == "master":
        role = f"master, {node['slots']} slots, {node['connected_replicas']} replicas"
        if node["owns_rq_slot"]:
            role += ", owns the {rq} slot (all queues)"
    else:
        role = f"replica of {node['master']} (link {node['master_link_status']})"
    maxmemory = human_bytes(node["maxmemory"]) if node["maxmemory"] else "unlimited"
    policy = node["maxmemory_policy"]
    return [
        f"{node['address']} redis {node['redis_version']} ({role})",
        f"  memory: used {human_bytes(node['used_memory'])}, max {maxmemory}, policy {policy}",
        f"  persistence: RDB {node['rdb_last_bgsave_status']} ({node['rdb_changes_since_last_save']} changes "
        f"since last save), AOF {'on' if node['aof_enabled'] else 'off'} ({node['aof_last_write_status']})",
    ]


def section(client: Any) -> dict[str, Any]:
    """The status section; `{"mode": "single server"}` when the PRIMARY is not a cluster."""
    if not is_cluster(client):
        return {"mode": "single server", "_text": ["not a Redis Cluster (REDIS_CLUSTER_NODES unset)"]}
    facts = cluster_facts(client)
    lines = [
        f"state {facts['state']}, {len(facts['nodes'])} nodes; "
        f"RQ slot {facts['rq_slot']} on {facts['rq_slot_master']}"
    ]
    for node in facts["nodes"]:
        lines.extend(_node_line(node))
    return {"mode": "cluster", **facts, "_text": lines}
