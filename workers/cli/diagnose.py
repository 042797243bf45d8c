"""What an operator asks when Redis misbehaves: is it slow, what fills it, is it persisting?

Three read-only probes for `python -m workers status` (and for people at a shell):

- latency: N timed PINGs (min/p50/p99/max in ms) plus `LATENCY LATEST`, the spikes
  the server itself recorded above `latency-monitor-threshold`;
- memory by key pattern: a bounded `SCAN` sample, `MEMORY USAGE` per sampled key,
  summed and maxed per pattern, where ids, uuids, numbers and hex turn into `*`
  (`session:{sessions}:<id>` keys become one `session:{sessions}:*` line). Only patterns are reported,
  never key names: a session key's name is the session's bearer secret;
- the INFO memory/stats/persistence fields worth reading.

The arithmetic (percentiles, patterns, grouping, INFO subsets) is pure and unit-tested;
the functions that talk to Redis are thin.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from cache.connections import REDIS_ERRORS, Role, translate_errors
from cache.text import printable

DEFAULT_PINGS = 50  # enough for a p99 worth quoting; ~50 round trips cost a few ms
MAX_PINGS = 10_000
DEFAULT_SAMPLE_KEYS = 1_000  # bounded: a status call must stay cheap on a 10-million-key server
MAX_SAMPLE_KEYS = 1_000_000
DEFAULT_TOP_PATTERNS = 10
SCAN_BATCH = 250  # keys per SCAN call and per pipelined MEMORY USAGE batch
MAX_PATTERN_LENGTH = 200  # a pattern longer than this is cut; patterns are for reading

# --- pure core ------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)*")  # 42, -1, 3.14, 1.2.3.4 (IPv4), 2026.01.02
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")  # base64url, base32, base36 random ids
_SUBPART_SPLIT = re.compile(r"([-_.])")


def _is_id(part: str) -> bool:
    """True for a value that names one thing of many (an id), not a kind of thing."""
    if not part:
        return False
    if _NUMBER.fullmatch(part) or _UUID.fullmatch(part) or _EMAIL.fullmatch(part):
        return True
    has_digit = any(c.isdigit() for c in part)
    if _HEX.fullmatch(part) and (has_digit or len(part) >= 16):
        return True
    if _TOKEN.fullmatch(part):
        has_upper = any(c.isupper() for c in part)
        has_lower = any(c.islower() for c in part)
        # Mixed case over 20 characters is a random token (a 43-character session id
        # lacks a digit once in ~1,400); a lowercase one needs a digit and no word
        # separators, so `report_2026_q1` keeps its words.
        if has_upper and has_lower and (has_digit or len(part) >= 20):
            return True
        if has_digit and part.isalnum() and not has_upper:
            return True
    return False


def _segment_pattern(segment: str) -> str:
    """One `:`-separated segment with its hash-tag braces kept and its ids starred."""
    head = "{" if segment.startswith("{") else ""
    tail = "}" if segment.endswith("}") and len(segment) > len(head) else ""
    core = segment[len(head) : len(segment) - len(tail)]
    if _is_id(core):
        return f"{head}*{tail}"
    # `worker-email-3`, `report_2026_01`: star the id parts, keep the words.
    parts = _SUBPART_SPLIT.split(core)
    starred = "".join(p if i % 2 or not _is_id(p) else "*" for i, p in enumerate(parts))
    return f"{head}{starred}{tail}"


def key_pattern(key: str | bytes) -> str:
    """The pattern a key belongs to: ids, uuids, numbers, hex and random tokens become `*`.

    `session:{sessions}:<43 random chars>` -> `session:{sessions}:*`, `rq:job:<uuid>` -> `rq:job:*`,
    `kx:rl:{ip:60000:1.2.3.4}` -> `kx:rl:{ip:*:*}`. Non-printable characters are
    escaped, so a hostile key name cannot forge lines in the status output.
    """
    text = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key
    pattern = ":".join(_segment_pattern(segment) for segment in text.split(":"))
    pattern = printable(pattern, escape="hex")
    return pattern if len(pattern) <= MAX_PATTERN_LENGTH else pattern[: MAX_PATTERN_LENGTH - 3] + "..."


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of already sorted values.

    Raises:
        ValueError: no values, or `q` outside 0..100.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {q}")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_latency(samples_ms: Iterable[float]) -> dict[str, float | int]:
    """min/p50/p99/max (ms, rounded to µs) of round-trip samples.

    Raises:
        ValueError: no samples.
    """
    ordered = sorted(samples_ms)
    if not ordered:
        raise ValueError("no latency samples")
    return {
        "samples": len(ordered),
        "min_ms": round(ordered[0], 3),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3),
    }


@dataclass(frozen=True)
class PatternUsage:
    """Sampled memory of the keys of one pattern."""

    pattern: str
    keys: int
    total_bytes: int
    max_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_by_pattern(sizes: Iterable[tuple[str | bytes, int]], top: int) -> list[PatternUsage]:
    """Sum and max `MEMORY USAGE` per key pattern; the `top` patterns by total, largest first.

    Raises:
        ValueError: `top` below 1.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    totals: dict[str, list[int]] = {}
    for key, size in sizes:
        entry = totals.setdefault(key_pattern(key), [0, 0, 0])
        entry[0] += 1
        entry[1] += size
        entry[2] = max(entry[2], size)
    rows = [PatternUsage(p, keys=n, total_bytes=t, max_bytes=m) for p, (n, t, m) in totals.items()]
    rows.sort(key=lambda row: (-row.total_bytes, row.pattern))
    return rows[:top]


# INFO fields worth reading, by section; everything else is one `redis-cli INFO` away.
INFO_FIELDS: dict[str, tuple[str, ...]] = {
    "memory": (
        "used_memory",
        "used_memory_rss",
        "used_memory_peak",
        "maxmemory",
        "maxmemory_policy",
        "mem_fragmentation_ratio",
    ),
    "stats": (
        "total_commands_processed",
        "instantaneous_ops_per_sec",
        "keyspace_hits",
        "keyspace_misses",
        "expired_keys",
        "evicted_keys",
        "rejected_connections",
        "latest_fork_usec",
    ),
    "persistence": (
        "rdb_last_save_time",
        "rdb_last_bgsave_status",
        "rdb_bgsave_in_progress",
        "rdb_changes_since_last_save",
        "aof_enabled",
        "aof_rewrite_in_progress",
        "aof_last_write_status",
        "aof_last_bgrewrite_status",
    ),
}


def info_summary(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The `INFO_FIELDS` of a parsed INFO reply, by section (absent fields are None)."""
    return {section: {name: info.get(name) for name in names} for section, names in INFO_FIELDS.items()}


def _check_count(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an int between 1 and {maximum}, got {value!r}")
    return value


# --- I/O shell ------------------------------------------------------------------------------


def latency_samples(
    client: redis.Redis, *, pings: int = DEFAULT_PINGS, monotonic: Callable[[], float] = time.perf_counter
) -> dict[str, float | int]:
    """Time `pings` PINGs one after another (after one warm-up PING, which may connect).

    Raises:
        ValueError: `pings` is not an int in 1..MAX_PINGS.
        REDIS_ERRORS: Redis failed.
    """
    _check_count("pings", pings, MAX_PINGS)
    client.ping()
    samples = []
    for _ in range(pings):
        start = monotonic()
        client.ping()
        samples.append((monotonic() - start) * 1000)
    return summarize_latency(samples)


def latency_latest(client: redis.Redis) -> list[dict[str, Any]]:
    """`LATENCY LATEST`: per event, when the last spike happened and its latest/max ms.

    Raises:
        REDIS_ERRORS: Redis failed or refused the command.
    """
    rows = client.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
    events = []
    for row in rows or []:
        name, at, latest, worst = row[:4]
        event = name.decode() if isinstance(name, bytes) else str(name)
        events.append({"event": event, "time": int(at), "latest_ms": int(latest), "max_ms": int(worst)})
    return events


def sample_key_sizes(
    client: redis.Redis, *, sample_keys: int = DEFAULT_SAMPLE_KEYS
) -> list[tuple[bytes | str, int]]:
    """`MEMORY USAGE` of up to `sample_keys` keys, in SCAN order (hash order: a fair sample).

    Raises:
        ValueError: `sample_keys` out of range.
        REDIS_ERRORS: Redis failed or refused SCAN/MEMORY.
    """
    _check_count("sample_keys", sample_keys, MAX_SAMPLE_KEYS)
    sizes: list[tuple[bytes | str, int]] = []
    # scan_iter, not a loop over `scan(cursor)`: a Cluster client answers SCAN with a cursor
    # per node, and its scan_iter walks every master.
    found = client.scan_iter(count=SCAN_BATCH)
    while len(sizes) < sample_keys:
        batch = list(itertools.islice(found, min(SCAN_BATCH, sample_keys - len(sizes))))
        if not batch:
            break
        with client.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.memory_usage(key)
            usages = pipe.execute()
        # A key that expired between SCAN and MEMORY USAGE answers None: skip it.
        sizes.extend((key, int(size)) for key, size in zip(batch, usages, strict=True) if size is not None)
    return sizes


def biggest_patterns(
    client: redis.Redis, *, sample_keys: int = DEFAULT_SAMPLE_KEYS, top: int = DEFAULT_TOP_PATTERNS
) -> dict[str, Any]:
    """The key patterns holding the most memory in a bounded sample, with the total key count.

    `estimated_total_bytes` scales the sampled total by `dbsize / sampled`.

    Raises:
        ValueError: `sample_keys` or `top` out of range.
        REDIS_ERRORS: Redis failed or refused SCAN/MEMORY.
    """
    group_by_pattern([], top)  # validate `top` before any I/O
    sizes = sample_key_sizes(client, sample_keys=sample_keys)
    dbsize = int(client.dbsize())
    scale = dbsize / len(sizes) if sizes else 0.0
    rows = []
    for usage in group_by_pattern(sizes, top):
        row = usage.as_dict()
        row["estimated_total_bytes"] = round(usage.total_bytes * scale)
        rows.append(row)
    return {"dbsize": dbsize, "sampled": len(sizes), "patterns": rows}


def diagnose(
    client: redis.Redis,
    *,
    pings: int = DEFAULT_PINGS,
    sample_keys: int = DEFAULT_SAMPLE_KEYS,
    top: int = DEFAULT_TOP_PATTERNS,
    role: Role = Role.PRIMARY,
) -> dict[str, Any]:
    """Latency, latency events, INFO summary and biggest key patterns of one Redis.

    A probe the server refuses (ACL, renamed command) becomes an `error` entry of its
    part instead of hiding the others.

    Raises:
        ValueError: a count out of range (checked before any I/O).
        RedisUnavailable: `role` is unreachable or refused our credentials.
    """
    _check_count("pings", pings, MAX_PINGS)
    _check_count("sample_keys", sample_keys, MAX_SAMPLE_KEYS)
    group_by_pattern([], top)
    report: dict[str, Any] = {}
    probes: dict[str, Callable[[], Any]] = {
        "latency": lambda: latency_samples(client, pings=pings),
        "latency_events": lambda: latency_latest(client),
        "info": lambda: info_summary(client.info()),
        "keys": lambda: biggest_patterns(client, sample_keys=sample_keys, top=top),
    }
    with translate_errors(role):
        for name, probe in probes.items():
            try:
                report[name] = probe()
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except REDIS_ERRORS as exc:
                if "NOAUTH" in str(exc):
                    raise
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return report
