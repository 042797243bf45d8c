"""Read-only checks of a Redis role: the eviction guard and the facts `status` prints."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from cache.connections import Role, get_client, translate_errors
from cache.errors import RedisUnavailable

log = logging.getLogger(__name__)

SAFE_PRIMARY_POLICY = "noeviction"


def eviction_policy(client: redis.Redis) -> str:
    """The server's maxmemory-policy, from INFO: managed Redis often refuses CONFIG."""
    memory: dict[str, Any] = client.info("memory")
    return str(memory.get("maxmemory_policy", "unknown"))


def check_eviction_policy(client: redis.Redis | None = None) -> str | None:
    """Warn when the PRIMARY may evict keys; return the warning (None when safe).

    Queued jobs and sessions on an evicting Redis vanish silently under memory
    pressure, which is why BullMQ and Sidekiq refuse such a server. We warn loudly
    rather than refuse, so a misconfigured server can still be drained.
    """
    client = client or get_client(Role.PRIMARY)
    with translate_errors(Role.PRIMARY):
        try:
            policy = eviction_policy(client)
        except redis.ResponseError:
            # INFO is forbidden by ACL: say so instead of guessing.
            message = (
                "cannot read maxmemory-policy of the primary Redis (INFO refused); verify it is noeviction"
            )
            log.warning(message)
            return message
    if policy == SAFE_PRIMARY_POLICY:
        return None
    message = (
        f"PRIMARY Redis maxmemory-policy is {policy!r}, not 'noeviction': under memory pressure "
        "it will silently delete queued jobs and live sessions. Set 'maxmemory-policy noeviction'."
    )
    log.warning(message)
    return message


@dataclass
class RoleStatus:
    role: str
    reachable: bool
    error: str | None = None
    ping_ms: float | None = None
    version: str | None = None
    replication_role: str | None = None
    connected_replicas: int | None = None
    used_memory: int | None = None
    used_memory_peak: int | None = None
    maxmemory: int | None = None
    maxmemory_policy: str | None = None
    rdb_last_save_time: int | None = None
    rdb_last_bgsave_status: str | None = None
    rdb_changes_since_last_save: int | None = None
    aof_enabled: bool | None = None
    aof_last_write_status: str | None = None
    ops_per_sec: int | None = None
    keyspace_hit_ratio: float | None = None
    connected_clients: int | None = None
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def role_status(client: redis.Redis | None = None, *, role: Role) -> RoleStatus:
    """Collect what an operator needs to know about one role; never raises for an unreachable server."""
    try:
        client = client or get_client(role)
        with translate_errors(role):
            start = time.perf_counter()
            client.ping()
            ping_ms = (time.perf_counter() - start) * 1000
            info: dict[str, Any] = client.info("all")
            policy = eviction_policy(client)
    except RedisUnavailable as exc:
        return RoleStatus(role=role.value, reachable=False, error=str(exc))
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    status = RoleStatus(
        role=role.value,
        reachable=True,
        ping_ms=round(ping_ms, 3),
        version=str(info.get("redis_version")),
        replication_role=info.get("role"),
        connected_replicas=info.get("connected_slaves"),
        used_memory=info.get("used_memory"),
        used_memory_peak=info.get("used_memory_peak"),
        maxmemory=info.get("maxmemory"),
        maxmemory_policy=policy,
        rdb_last_save_time=info.get("rdb_last_save_time"),
        rdb_last_bgsave_status=info.get("rdb_last_bgsave_status"),
        rdb_changes_since_last_save=info.get("rdb_changes_since_last_save"),
        aof_enabled=bool(info.get("aof_enabled")),
        aof_last_write_status=info.get("aof_last_write_status"),
        ops_per_sec=info.get("instantaneous_ops_per_sec"),
        keyspace_hit_ratio=round(hits / (hits + misses), 4) if hits + misses else None,
        connected_clients=info.get("connected_clients"),
    )
    if role is Role.PRIMARY and policy != SAFE_PRIMARY_POLICY:
        status.warning = check_eviction_policy(client)
    return status
