"""Extra sections of `python -m workers status`: latency, INFO summary and biggest key patterns.

Registered by the CLI in `workers.cli.status.EXTRA_SECTIONS`; each returns a JSON-able dict
with a `_text` list of lines for the human rendering (the CLI drops `_text` in --json).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from cache.connections import Role
from workers.cli.diagnose import DEFAULT_PINGS, DEFAULT_SAMPLE_KEYS, DEFAULT_TOP_PATTERNS, diagnose


def human_bytes(value: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _when(timestamp: int | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _latency_lines(report: dict[str, Any]) -> list[str]:
    lat = report["latency"]
    if "error" in lat:
        lines = [f"latency: {lat['error']}"]
    else:
        lines = [
            f"latency: {lat['samples']} PINGs, min {lat['min_ms']:.3f} / p50 {lat['p50_ms']:.3f} / "
            f"p99 {lat['p99_ms']:.3f} / max {lat['max_ms']:.3f} ms"
        ]
    events = report["latency_events"]
    if isinstance(events, dict):
        lines.append(f"latency events: {events['error']}")
    elif not events:
        lines.append("latency events: none above latency-monitor-threshold")
    for event in events if isinstance(events, list) else []:
        lines.append(
            f"latency event {event['event']}: latest {event['latest_ms']} ms at {_when(event['time'])}, "
            f"max {event['max_ms']} ms"
        )
    return lines


def _info_lines(info: dict[str, Any]) -> list[str]:
    if "error" in info:
        return [f"info: {info['error']}"]
    mem, stats, pers = info["memory"], info["stats"], info["persistence"]
    hits, misses = int(stats["keyspace_hits"] or 0), int(stats["keyspace_misses"] or 0)
    ratio = f"{hits / (hits + misses):.1%}" if hits + misses else "-"
    maxmemory = human_bytes(mem["maxmemory"]) if mem["maxmemory"] else "unlimited"
    return [
        f"memory: used {human_bytes(mem['used_memory'])} (rss {human_bytes(mem['used_memory_rss'])}, "
        f"fragmentation {mem['mem_fragmentation_ratio']}), peak {human_bytes(mem['used_memory_peak'])}, "
        f"max {maxmemory}, policy {mem['maxmemory_policy']}",
        f"stats: {stats['total_commands_processed']} commands, {stats['instantaneous_ops_per_sec']} ops/s, "
        f"hit ratio {ratio}, {stats['expired_keys']} expired, {stats['evicted_keys']} evicted, "
        f"{stats['rejected_connections']} rejected connections, last fork {stats['latest_fork_usec']} µs",
        f"persistence: RDB last save {_when(pers['rdb_last_save_time'])} ({pers['rdb_last_bgsave_status']}"
        f"{', saving now' if pers['rdb_bgsave_in_progress'] else ''}), "
        f"{pers['rdb_changes_since_last_save']} changes since; AOF {'on' if pers['aof_enabled'] else 'off'}"
        f" (write {pers['aof_last_write_status']}, rewrite {pers['aof_last_bgrewrite_status']}"
        f"{', rewriting now' if pers['aof_rewrite_in_progress'] else ''})",
    ]


def _key_lines(keys: dict[str, Any]) -> list[str]:
    if "error" in keys:
        return [f"biggest keys: {keys['error']}"]
    lines = [f"biggest key patterns (MEMORY USAGE of {keys['sampled']} sampled of {keys['dbsize']} keys):"]
    for row in keys["patterns"]:
        lines.append(
            f"  {row['pattern']}  {row['keys']} key(s), {human_bytes(row['total_bytes'])} "
            f"(max {human_bytes(row['max_bytes'])}; ~{human_bytes(row['estimated_total_bytes'])} in all)"
        )
    if not keys["patterns"]:
        lines.append("  (no keys)")
    return lines


def render_diagnose(report: dict[str, Any]) -> list[str]:
    """Text lines of a `workers.cli.diagnose.diagnose` report."""
    return [*_latency_lines(report), *_info_lines(report["info"]), *_key_lines(report["keys"])]


def diagnose_section(
    client: redis.Redis,
    *,
    pings: int = DEFAULT_PINGS,
    sample_keys: int = DEFAULT_SAMPLE_KEYS,
    top: int = DEFAULT_TOP_PATTERNS,
    role: Role = Role.PRIMARY,
) -> dict[str, Any]:
    """The `diagnose` status section of one Redis role (register one per role).

    Raises:
        RedisUnavailable: the role is unreachable (`status` shows the error in place of
            the section).
    """
    report = diagnose(client, pings=pings, sample_keys=sample_keys, top=top, role=role)
    return {**report, "_text": render_diagnose(report)}


def cache_section(client: redis.Redis) -> dict[str, Any]:
    """Cache counters summed over every process (hits, misses, fetches, lock waits, fail-open)."""
    from cache.appcache.stats import cache_counters

    counters = cache_counters(client)
    lookups = counters.get("hits", 0) + counters.get("misses", 0)
    ratio = f"{counters.get('hits', 0) / lookups:.1%}" if lookups else "-"
    line = ", ".join(f"{name} {value}" for name, value in sorted(counters.items()))
    return {**counters, "_text": [f"hit ratio {ratio}", line or "no cache activity recorded"]}


def ratelimit_section(client: redis.Redis) -> dict[str, Any]:
    """Rate-limit decisions per scope summed over every process (allowed, denied, fail-open/closed).

    Fail-open and fail-closed counts are checks Redis never saw: non-zero means the
    primary was unreachable for some requests (the per-process logs say when).

    Raises:
        RedisUnavailable: the primary is unreachable (`status` shows the error in place of
            the section).
    """
    from cache.ratelimit.service import OUTCOMES, ratelimit_counters

    scopes = ratelimit_counters(client)
    totals = {outcome: sum(counts[outcome] for counts in scopes.values()) for outcome in OUTCOMES}
    if not scopes:
        return {"totals": totals, "scopes": scopes, "_text": ["no rate-limit checks recorded"]}

    def counts_text(counts: dict[str, int]) -> str:
        return ", ".join(f"{name} {counts[name]}" for name in OUTCOMES)

    answered = totals["allowed"] + totals["denied"]
    denied = f"{totals['denied'] / answered:.1%}" if answered else "-"
    lines = [f"{counts_text(totals)} (denied {denied} of the checks Redis answered)"]
    lines.extend(f"  {scope}: {counts_text(counts)}" for scope, counts in scopes.items())
    return {"totals": totals, "scopes": scopes, "_text": lines}
