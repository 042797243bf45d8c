"""Redis Cluster clients, bounded in time like the single-server ones.

`cache.connections` builds these when a role is configured as a cluster
(`REDIS_CLUSTER_NODES`, `CACHE_REDIS_CLUSTER_NODES`); nobody else should. The bound is
`cache.retry`'s, adapted to how redis-py 8.1's cluster client retries:

- Each node's connections get redis-py's own zero-retry policy; the cluster client's
  loop (`RedisCluster.execute_command`) retries on `ERRORS_ALLOW_RETRY` at once, without
  backoff. Here that loop runs inside one `BoundedRetry` loop with backoff and, for the
  web tier, the call's deadline; `ClusterRetry.get_retries` tells the inner loop 0, so
  attempts never multiply. A transaction (`pipeline(transaction=True)`) copies the same
  retry and so gets the same bound; a non-transactional one retries in redis-py's own
  loop, which the call's deadline bounds (`BoundedClusterPipeline`).
- Every node's connection class is `cache.retry`'s bounded one, so no read or connect
  outlives the call's deadline.

A cluster client is not a `redis.Redis`; `cache.connections` hands it out typed as one
(the command methods are the same), and `is_cluster` tells the two apart where it matters
(`connection_pool`, `scan`, `WAIT`, cross-slot work).
"""

from __future__ import annotations

import math
from typing import Any, cast

import redis
import redis.asyncio.cluster
import redis.cluster
import redis.connection
from redis.exceptions import (
    ClusterDownError,
    CrossSlotTransactionError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from cache.retry import (
    BoundedRetry,
    _blocking,
    _retrying,
    blocking_s,
    bounded_async_call,
    bounded_connection_class,
    call_deadline,
    default_backoff,
)
from cache.settings import Cluster, Settings

# Every exception a Redis call of ours may raise: redis-py's cluster client raises some
# that are not RedisError (RedisClusterException and its CrossSlotTransactionError,
# SlotNotCoveredError, InvalidPipelineStack). Catch this tuple, never RedisError alone.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

# A cluster that cannot serve a slot right now (a failover, a node down): an outage.
CLUSTER_OUTAGES: tuple[type[Exception], ...] = (ClusterDownError, SlotNotCoveredError, TryAgainError)
# Messages of plain RedisClusterException that mean "no node answers", not "bad command".
_OUTAGE_MESSAGES = ("cannot be connected", "not covered", "no targets were found")


def cluster_of(settings: Settings, *, cache: bool) -> Cluster | None:
    """The cluster the PRIMARY (or with `cache`, the CACHE) role lives on; None for one server.

    The cache is on `CACHE_REDIS_CLUSTER_NODES` when set; otherwise it shares the primary's
    cluster while it shares the primary (`CACHE_REDIS_URL` unset), as it does with Sentinel.
    """
    if not cache:
        return settings.cluster
    if settings.cache_cluster is not None:
        return settings.cache_cluster
    return settings.cluster if settings.cache_redis_url == settings.redis_url else None


def nodes_setting(settings: Settings, *, cache: bool) -> str:
    """The variable that names the role's cluster nodes."""
    return (
        "CACHE_REDIS_CLUSTER_NODES" if cache and settings.cache_cluster is not None else "REDIS_CLUSTER_NODES"
    )


def is_cluster(client: object) -> bool:
    """Whether `client` is a Redis Cluster client (sync or async) rather than one server's."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def is_cluster_outage(exc: BaseException) -> bool:
    """Whether a cluster error means the cluster cannot serve now (not a refused command)."""
    if isinstance(exc, CLUSTER_OUTAGES):
        return True
    if isinstance(exc, RedisClusterException) and not isinstance(exc, CrossSlotTransactionError):
        return any(words in str(exc).lower() for words in _OUTAGE_MESSAGES)
    return False


class ClusterRetry(BoundedRetry):
    """`BoundedRetry` for a cluster client: redis-py's inner cluster loop sees 0 retries inside ours."""

    def get_retries(self) -> int:
        return 0 if _retrying.get() else super().get_retries()


def _ignore_failure(*_: object) -> None:
    """The cluster client refreshes its slot map itself before raising a retryable error."""


def _retryable(error: Exception) -> bool:
    return type(error) in redis.cluster.RedisCluster.ERRORS_ALLOW_RETRY


class BoundedClusterPipeline(redis.cluster.ClusterPipeline):
    """A cluster pipeline that ends within its client's call bound, redis-py's retries included.

    A transaction already runs in `ClusterRetry`'s bounded loop. A plain pipeline retries
    in redis-py's own loop (`PipelineStrategy.send_cluster_commands`, one socket timeout
    per attempt: 7 s on a stopped master), which only the deadline can bound; it is not
    retried as a whole here, since some of its commands may have run.
    """

    call_timeout_s: float | None = None

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with call_deadline(self.call_timeout_s):
            result: list[Any] = super().execute(raise_on_error)
            return result


class BoundedRedisCluster(redis.cluster.RedisCluster):
    """A cluster client whose every command, slot-map refresh and retries included, is bounded.

    `call_timeout_s` None (workers, subscribers): `REDIS_RETRY_ATTEMPTS` with backoff, each
    read bounded by its socket timeout. A blocking command gets its own timeout on top.
    """

    call_timeout_s: float | None = None

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        parent = cast(Any, super())
        retry = cast(ClusterRetry, self.retry)

        def run() -> Any:
            return parent.execute_command(*args, **kwargs)

        extra = None if self.call_timeout_s is None else blocking_s(args)
        if extra is None:
            return retry.call_with_retry(run, _ignore_failure, _retryable)
        token = _blocking.set(True)
        try:
            with call_deadline(None if math.isinf(extra) else self.call_timeout_s + extra):  # type: ignore[operator]
                return retry.call_with_retry(run, _ignore_failure, _retryable)
        finally:
            _blocking.reset(token)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> BoundedClusterPipeline:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = BoundedClusterPipeline  # built by redis-py as it is; only the class changes
        pipe.call_timeout_s = self.call_timeout_s
        return cast(BoundedClusterPipeline, pipe)

    def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        """A ClusterPubSub on a node of a fresh slot map.

        A subscriber reconnects through here after its node died; without the refresh it
        would pick the dead master from this client's stale map again and again.
        """
        if node is None and host is None:
            self.nodes_manager.initialize()
        return super().pubsub(node=node, host=host, port=port, **kwargs)  # type: ignore[no-untyped-call]


class _FreshAsyncClusterPubSub(redis.asyncio.cluster.ClusterPubSub):
    """Picks its node from a fresh slot map: redis-py 8.1's reads an empty one (KeyError) on a
    client that has run no command yet, and a stale one after a failover."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.connection is None and self.connection_pool is None:
            cluster = cast(Any, self.cluster)
            if cluster._initialize:  # never initialised (or closed): the lazy first discovery
                await cluster.initialize()
            else:
                await cluster.nodes_manager.initialize()
        return await super().execute_command(*args, **kwargs)


class BoundedAsyncRedisCluster(redis.asyncio.cluster.RedisCluster):
    """An asyncio cluster client whose every command, retries included, ends within `call_timeout_s`."""

    call_timeout_s: float | None = None

    def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        if node is not None or host is not None:
            return super().pubsub(node=node, host=host, port=port, **kwargs)
        return _FreshAsyncClusterPubSub(self, **kwargs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await bounded_async_call(cast(Any, super()).execute_command, self.call_timeout_s, args, kwargs)


_checked_classes: dict[tuple[type[Any], int], type[Any]] = {}


def _health_checked(base: type[Any], interval_s: int) -> type[Any]:
    """`base` with `health_check_interval` set: redis-py's sync cluster client drops that kwarg."""
    checked = _checked_classes.get((base, interval_s))
    if checked is None:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("health_check_interval", interval_s)
            base.__init__(self, *args, **kwargs)

        checked = type(f"HealthChecked{base.__name__}", (base,), {"__init__": __init__})
        _checked_classes[(base, interval_s)] = checked
    return checked


def _node_url(host: str, port: int) -> str:
    return f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}"


def build_cluster_client(
    cluster: Cluster, kwargs: dict[str, Any], *, retry_attempts: int, call_timeout_s: float | None
) -> BoundedRedisCluster:
    """A sync cluster client on `cluster`'s nodes with `cache.connections`' client kwargs.

    Connects at once (redis-py reads the slot map in the constructor).

    Raises:
        RedisClusterException: no node answered, or the slots are not all covered.
        redis.RedisError: e.g. a refused password.
    """
    kwargs = {k: v for k, v in kwargs.items() if k != "retry"}
    retry = ClusterRetry(default_backoff(), retry_attempts, call_timeout_s=call_timeout_s)
    retry.update_supported_errors(list(redis.cluster.RedisCluster.ERRORS_ALLOW_RETRY))
    base: type[Any] = redis.connection.SSLConnection if cluster.tls else redis.connection.Connection
    base = _health_checked(base, kwargs.pop("health_check_interval", 0))
    (host, port), *others = cluster.nodes
    # Through `url`: only then does redis-py build each node's pool from these kwargs,
    # connection_class included (the plain host/port path has no way to pass it).
    client = BoundedRedisCluster(
        url=_node_url(host, port),
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in others],  # type: ignore[no-untyped-call]
        retry=retry,
        connection_class=base if call_timeout_s is None else bounded_connection_class(base),
        **kwargs,
    )
    client.call_timeout_s = call_timeout_s
    return client


def build_async_cluster_client(
    cluster: Cluster, kwargs: dict[str, Any], *, call_timeout_s: float | None
) -> BoundedAsyncRedisCluster:
    """An asyncio cluster client; it connects on its first command."""
    client = BoundedAsyncRedisCluster(
        startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster.nodes],
        ssl=cluster.tls,
        **kwargs,
    )
    client.call_timeout_s = call_timeout_s
    return client


def describe(cluster: Cluster, *, setting: str, role: str) -> str:
    """`primary Redis Cluster (REDIS_CLUSTER_NODES=h:p,...)` for messages."""
    nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in cluster.nodes)
    return f"{role} Redis Cluster ({setting}={nodes})"
