"""`python -m workers metrics --port N`: Prometheus metrics read from Redis on every scrape.

Everything comes from Redis, not from this process: queue and registry sizes, the job
totals every worker flushes (`workers.job_stats`), live workers, the cache counters
every process flushes (`cache.appcache.stats`), the rate-limit decisions every process
flushes (`cache.ratelimit.service`), rate-limit keys, and INFO of both roles.
So one exporter per deployment is enough, it can restart at will, and counters never
reset when it does. A scrape does not write to Redis.

A scrape never fails as a whole: a Redis role that does not answer is
`kryonix_redis_up{role} 0` and its sections are skipped (so a dead server costs one
timeout, not one per section); a section that fails is `kryonix_scrape_error{section} 1`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.cluster import RedisCluster
from rq.worker import Worker

from cache import connections, keys
from cache.appcache.stats import read_counters
from cache.connections import REDIS_ERRORS, Role
from cache.errors import ConfigError, RedisUnavailable
from cache.ratelimit.service import OUTCOMES as RATELIMIT_OUTCOMES
from cache.ratelimit.service import read_ratelimit_counters
from jobs.email.idempotency import possible_duplicates
from jobs.queues import QUEUES
from jobs.rq_cluster import rq_connection
from workers.cli.diagnose import info_summary
from workers.cli.queue_status import queue_facts
from workers.job_stats import DURATION_BUCKETS_S, OUTCOMES, bucket_field, read_job_counters

log = logging.getLogger("kryonix.metrics")

DEFAULT_PORT = 9182  # next to rq-dashboard's 9181
DEFAULT_ADDR = "127.0.0.1"  # loopback unless asked: put a scraper or an authenticating proxy in front
RATELIMIT_SCAN_COUNT = 1_000  # keys per SCAN call when counting rate-limit keys
RATELIMIT_SCAN_CALLS = 100  # at most ~100k keys visited per scrape: a bounded, ~100 ms walk
REGISTRIES = ("started", "scheduled", "deferred", "failed", "finished")

# --- pure core ------------------------------------------------------------------------------

_SECTION_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, RedisUnavailable, ValueError)  # logged
_INFO_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, RedisUnavailable, ConfigError)  # role down


def cumulative_buckets(stats: Mapping[str, float]) -> list[tuple[str, float]]:
    """Prometheus buckets from the per-bucket counts of `read_job_counters` (which are NOT cumulative).

    Returns `(le, count of durations <= le)` for each bound of `DURATION_BUCKETS_S` and `+Inf`.
    """
    buckets = []
    running = 0.0
    for index in range(len(DURATION_BUCKETS_S) + 1):
        running += stats.get(bucket_field(index), 0.0)
        le = repr(float(DURATION_BUCKETS_S[index])) if index < len(DURATION_BUCKETS_S) else "+Inf"
        buckets.append((le, running))
    return buckets


def count_ratelimit_keys(names: Iterator[bytes | str] | list[bytes | str]) -> dict[tuple[str, int], int]:
    """Rate-limit logs per `(scope, window_ms)`; keys that are not rate-limit logs are ignored."""
    counts: dict[tuple[str, int], int] = {}
    for name in names:
        parsed = keys.rate_limit_log_scope(name.decode() if isinstance(name, bytes) else name)
        if parsed is not None:
            counts[parsed] = counts.get(parsed, 0) + 1
    return counts


def _ok(status: object) -> float:
    text = status.decode() if isinstance(status, bytes) else status
    return 1.0 if text == "ok" else 0.0


# --- the collector ------------------------------------------------------------------------


class KryonixCollector(Collector):
    """Reads both Redis roles on each `collect()` and yields `kryonix_*` metric families.

    Args:
        primary: PRIMARY client (queues, job totals, workers, rate limits); defaults to
            `connections.primary()` at scrape time.
        cache: CACHE client (cache counters); defaults to `connections.cache_redis()`.
    """

    def __init__(self, primary: redis.Redis | None = None, cache: redis.Redis | None = None) -> None:
        self._primary = primary
        self._cache = cache

    def client(self, role: Role) -> redis.Redis:
        given = self._primary if role is Role.PRIMARY else self._cache
        # RQ's classes read the queue sections: on a cluster they need `rq_connection`'s view.
        return rq_connection(given if given is not None else connections.get_client(role))

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = {role: self._redis_info(role) for role in Role}
        yield from self._redis_families(up)
        errors = GaugeMetricFamily(
            "kryonix_scrape_error", "1 when a section could not be read on this scrape", labels=["section"]
        )
        sections: dict[str, tuple[Role, Callable[[redis.Redis], list[Metric]]]] = {
            "queues": (Role.PRIMARY, self._queue_families),
            "jobs": (Role.PRIMARY, self._job_families),
            "workers": (Role.PRIMARY, self._worker_families),
            "cache": (Role.CACHE, self._cache_families),
            "ratelimit": (Role.PRIMARY, self._ratelimit_families),
        }
        for name, (role, read) in sections.items():
            failed = up[role] is None
            if not failed:
                try:
                    yield from read(self.client(role))
                except _SECTION_ERRORS as exc:
                    log.warning("metrics section %s failed: %s: %s", name, type(exc).__name__, exc)
                    failed = True
            errors.add_metric([name], 1.0 if failed else 0.0)
        yield errors
        yield GaugeMetricFamily(
            "kryonix_scrape_duration_seconds",
            "Time this scrape spent reading Redis",
            value=time.perf_counter() - started,
        )

    def _redis_info(self, role: Role) -> dict[str, Any] | None:
        """Parsed INFO of `role`, or None when it cannot be read (the role is then down)."""
        try:
            with connections.translate_errors(role):
                info: dict[str, Any] = self.client(role).info()
                return info
        except _INFO_ERRORS as exc:
            log.warning("metrics: %s Redis unreadable: %s", role.value, exc)
            return None

    def _redis_families(self, infos: Mapping[Role, dict[str, Any] | None]) -> Iterator[Metric]:
        labels = ["role"]
        fams = {
            "up": GaugeMetricFamily("kryonix_redis_up", "1 when INFO of the role answered", labels=labels),
            "used": GaugeMetricFamily("kryonix_redis_memory_used_bytes", "used_memory", labels=labels),
            "peak": GaugeMetricFamily("kryonix_redis_memory_peak_bytes", "used_memory_peak", labels=labels),
            "max": GaugeMetricFamily(
                "kryonix_redis_memory_max_bytes", "maxmemory (0 = unlimited)", labels=labels
            ),
            "policy": GaugeMetricFamily(
                "kryonix_redis_maxmemory_policy_info",
                "Always 1; the policy is a label",
                labels=[*labels, "policy"],
            ),
            "lastsave": GaugeMetricFamily(
                "kryonix_redis_rdb_last_save_timestamp_seconds", "LASTSAVE (Unix time)", labels=labels
            ),
            "bgsave_ok": GaugeMetricFamily(
                "kryonix_redis_rdb_last_bgsave_ok", "1 when the last BGSAVE succeeded", labels=labels
            ),
            "changes": GaugeMetricFamily(
                "kryonix_redis_rdb_changes_since_last_save", "Writes not yet in an RDB", labels=labels
            ),
            "aof": GaugeMetricFamily("kryonix_redis_aof_enabled", "1 when appendonly is on", labels=labels),
            "aof_ok": GaugeMetricFamily(
                "kryonix_redis_aof_last_write_ok", "1 when the last AOF write succeeded", labels=labels
            ),
        }
        for role, info in infos.items():
            fams["up"].add_metric([role.value], 0.0 if info is None else 1.0)
            if info is None:
                continue
            summary = info_summary(info)
            mem, pers = summary["memory"], summary["persistence"]
            fams["used"].add_metric([role.value], float(mem["used_memory"] or 0))
            fams["peak"].add_metric([role.value], float(mem["used_memory_peak"] or 0))
            fams["max"].add_metric([role.value], float(mem["maxmemory"] or 0))
            fams["policy"].add_metric([role.value, str(mem["maxmemory_policy"])], 1.0)
            fams["lastsave"].add_metric([role.value], float(pers["rdb_last_save_time"] or 0))
            fams["bgsave_ok"].add_metric([role.value], _ok(pers["rdb_last_bgsave_status"]))
            fams["changes"].add_metric([role.value], float(pers["rdb_changes_since_last_save"] or 0))
            fams["aof"].add_metric([role.value], 1.0 if pers["aof_enabled"] else 0.0)
            fams["aof_ok"].add_metric([role.value], _ok(pers["aof_last_write_status"]))
        yield from fams.values()

    def _queue_families(self, client: redis.Redis) -> list[Metric]:
        depth = GaugeMetricFamily("kryonix_queue_depth", "Jobs waiting in the queue", labels=["queue"])
        registry = GaugeMetricFamily(
            "kryonix_queue_registry_jobs",
            "Jobs in each RQ registry of the queue",
            labels=["queue", "registry"],
        )
        age = GaugeMetricFamily(
            "kryonix_queue_oldest_job_age_seconds",
            "Age of the job at the head of the queue (0 when the queue is empty)",
            labels=["queue"],
        )
        for queue, facts in queue_facts(client).items():
            depth.add_metric([queue], float(facts["queued"]))
            for name in REGISTRIES:
                registry.add_metric([queue, name], float(facts[name]))
            age.add_metric([queue], float(facts["oldest_queued_age_s"] or 0.0))
        return [depth, registry, age]

    def _job_families(self, client: redis.Redis) -> list[Metric]:
        totals = CounterMetricFamily(
            "kryonix_jobs",
            "Jobs ended per queue and outcome, as counted by the workers",
            labels=["queue", "outcome"],
        )
        duration = HistogramMetricFamily(
            "kryonix_job_duration_seconds", "Job run time, as measured by the workers", labels=["queue"]
        )
        for queue in QUEUES:
            stats = read_job_counters(client, queue)
            for outcome in OUTCOMES:
                totals.add_metric([queue, outcome], stats[outcome])
            duration.add_metric([queue], cumulative_buckets(stats), sum_value=stats.get("duration_sum", 0.0))
        duplicates = CounterMetricFamily(
            "kryonix_email_possible_duplicates",
            "Emails sent again after an earlier attempt died during its SMTP transaction",
            value=float(possible_duplicates(client)),
        )
        return [totals, duration, duplicates]

    def _worker_families(self, client: redis.Redis) -> list[Metric]:
        live = GaugeMetricFamily(
            "kryonix_workers", "Live RQ workers listening on the queue", labels=["queue"]
        )
        busy = GaugeMetricFamily("kryonix_workers_busy", "Live workers running a job now", labels=["queue"])
        counts = {queue: [0, 0] for queue in QUEUES}
        for worker in Worker.all(connection=client):
            running = worker.get_current_job_id() is not None
            for queue in worker.queue_names():
                entry = counts.setdefault(queue, [0, 0])
                entry[0] += 1
                entry[1] += int(running)
        for queue, (n_live, n_busy) in sorted(counts.items()):
            live.add_metric([queue], float(n_live))
            busy.add_metric([queue], float(n_busy))
        return [live, busy]

    def _cache_families(self, client: redis.Redis) -> list[Metric]:
        # Read, not `cache_counters()`: that would first flush this process's counters, and a
        # scrape must not write.
        with connections.translate_errors(Role.CACHE):
            counters = read_counters(client)
        family = CounterMetricFamily(
            "kryonix_cache_events",
            "Application cache events summed over every process (hits, misses, fail_open, ...)",
            labels=["event"],
        )
        for name, value in counters.items():
            family.add_metric([name], float(value))
        return [family]

    def _ratelimit_families(self, client: redis.Redis) -> list[Metric]:
        names: list[bytes | str] = []
        masters = scan_targets(client)
        complete = True
        for master in masters:  # the budget of SCAN calls, shared by the masters
            cursor = 0
            for _ in range(max(1, RATELIMIT_SCAN_CALLS // len(masters))):
                cursor, batch = master.scan(
                    cursor, match=keys.RATE_LIMIT_SCAN_PATTERN, count=RATELIMIT_SCAN_COUNT
                )
                names.extend(batch)
                if cursor == 0:
                    break
            else:
                complete = False
        active = GaugeMetricFamily(
            "kryonix_ratelimit_active_identifiers",
            "Clients with requests inside the window, per limit (one sliding-log key each)",
            labels=["scope", "window_ms"],
        )
        for (scope, window_ms), count in sorted(count_ratelimit_keys(names).items()):
            active.add_metric([scope, str(window_ms)], float(count))
        scanned = GaugeMetricFamily(
            "kryonix_ratelimit_scan_complete",
            "0 when the bounded SCAN stopped before the end of the keyspace",
        )
        scanned.add_metric([], 1.0 if complete else 0.0)
        return [self._ratelimit_decisions(client), active, scanned]

    def _ratelimit_decisions(self, client: redis.Redis) -> Metric:
        # Read, not `ratelimit_counters()`: that would flush this process's counts first.
        decisions = CounterMetricFamily(
            "kryonix_ratelimit_decisions",
            "Rate-limit checks per scope and decision, summed over every process "
            "(allowed/denied by Redis; fail_open/fail_closed by the failure policy while Redis was down)",
            labels=["scope", "decision"],
        )
        for scope, counts in read_ratelimit_counters(client).items():
            for decision in RATELIMIT_OUTCOMES:
                decisions.add_metric([scope, decision], float(counts[decision]))
        return decisions


def scan_targets(client: redis.Redis | RedisCluster) -> list[redis.Redis]:
    """Where a bounded SCAN walk runs: the server itself, or each master of a Cluster.

    The walk counts its SCAN calls (the bound), which `scan_iter` hides; and a Cluster
    client answers `scan` with a cursor per node, so the walk goes to each master's own
    plain client, whose `scan` answers one (cursor, keys) pair.
    """
    if isinstance(client, RedisCluster):
        nodes = client.get_primaries()  # type: ignore[no-untyped-call]
        return [node.redis_connection for node in nodes if node.redis_connection is not None]
    return [client]


# --- the HTTP server ------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running metrics endpoint; `close()` stops it."""

    addr: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def check_port(port: object) -> int:
    """Raises ConfigError unless `port` is an int in 0..65535 (0 picks a free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics port must be an int between 0 and 65535, got {port!r}")
    return port


def serve_metrics(
    port: int = DEFAULT_PORT, addr: str = DEFAULT_ADDR, *, collector: Collector | None = None
) -> MetricsServer:
    """Serve `/metrics` from a background thread (prometheus-client's HTTP server).

    Args:
        port: TCP port; 0 picks a free one (see `MetricsServer.port`).
        addr: address to bind; loopback by default.
        collector: defaults to a `KryonixCollector` on the settings' Redis roles.

    Raises:
        ConfigError: bad port, or the address cannot be bound (in use, not local).
    """
    check_port(port)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or KryonixCollector())
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
    return MetricsServer(addr=addr, port=int(server.server_port), _server=server, _thread=thread)


def metrics_command(port: int, addr: str = DEFAULT_ADDR) -> None:
    """Serve metrics until SIGTERM or SIGINT (the `python -m workers metrics` command).

    Raises:
        ConfigError: bad settings, port or address.
    """
    from cache.settings import get_settings

    get_settings()  # a bad REDIS_URL fails here, not at the first scrape
    connections.set_process_role("metrics")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = serve_metrics(port, addr)
        log.info("serving metrics on %s", server.url)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.close()
        log.info("metrics server stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
