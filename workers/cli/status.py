"""`python -m workers status`: what an operator needs to see, as text or JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cache.connections import Role
from cache.health import RoleStatus, role_status
from cache.text import printable

Section = Callable[[], dict[str, Any]]

# Later layers (queues, workers, cache counters) register extra sections here.
EXTRA_SECTIONS: dict[str, Section] = {}


def collect() -> dict[str, Any]:
    report: dict[str, Any] = {"time": time.time(), "roles": {}}
    for role in Role:
        report["roles"][role.value] = role_status(role=role).as_dict()
    for name, section in EXTRA_SECTIONS.items():
        try:
            report[name] = section()
        except Exception as exc:  # a broken section must not hide the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return report


def healthy(report: dict[str, Any]) -> bool:
    """Unhealthy when a role is unreachable, the primary may evict, a worker of another
    class (one that may unpickle and run any function) serves our queues, or a Redis
    Cluster PRIMARY does not serve every slot."""
    roles = report["roles"]
    if not all(r["reachable"] for r in roles.values()):
        return False
    queues = report.get("queues")
    if isinstance(queues, dict) and queues.get("unsafe_workers"):
        return False
    cluster = report.get("cluster")
    if isinstance(cluster, dict) and (cluster.get("error") or cluster.get("state", "ok") != "ok"):
        return False
    return bool(roles[Role.PRIMARY.value]["maxmemory_policy"] == "noeviction")


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return str(value)


def render_role(status: RoleStatus | dict[str, Any]) -> list[str]:
    s = status if isinstance(status, dict) else status.as_dict()
    if not s["reachable"]:
        return [f"[{s['role']}] UNREACHABLE: {s['error']}"]
    last_save = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["rdb_last_save_time"]))
        if s["rdb_last_save_time"]
        else "-"
    )
    hit_ratio = "-" if s["keyspace_hit_ratio"] is None else f"{s['keyspace_hit_ratio']:.1%}"
    lines = [
        f"[{s['role']}] redis {s['version']} ({s['replication_role']}, "
        f"{s['connected_replicas']} replicas), PING {s['ping_ms']:.2f} ms",
        f"  memory: used {_size(s['used_memory'])}, peak {_size(s['used_memory_peak'])}, "
        f"max {_size(s['maxmemory']) if s['maxmemory'] else 'unlimited'}, policy {s['maxmemory_policy']}",
        f"  persistence: RDB last save {last_save} ({s['rdb_last_bgsave_status']}, "
        f"{s['rdb_changes_since_last_save']} changes since), "
        f"AOF {'on' if s['aof_enabled'] else 'off'} ({s['aof_last_write_status']})",
        f"  load: {s['ops_per_sec']} ops/s, hit ratio {hit_ratio}, {s['connected_clients']} clients",
    ]
    if s["warning"]:
        lines.append(f"  WARNING: {s['warning']}")
    return lines


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for status in report["roles"].values():
        lines.extend(render_role(status))
    for name in EXTRA_SECTIONS:
        section = report.get(name, {})
        lines.append(f"[{name}]")
        render_section = section.get("_text") if isinstance(section, dict) else None
        if render_section:
            lines.extend(f"  {line}" for line in render_section)
        else:
            lines.extend(f"  {key}: {value}" for key, value in section.items())
    lines.append("status: " + ("OK" if healthy(report) else "UNHEALTHY"))
    # Worker names, states and job ids are data anyone with Redis write access can set:
    # no control character of theirs reaches the operator's terminal.
    return "\n".join(printable(line) for line in lines)
