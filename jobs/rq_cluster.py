"""What RQ 3.0 and rq-scheduler 0.14 need to run on a `redis.cluster.RedisCluster`.

All RQ data lives on the `{rq}` slot (`RQ_KEY_PREFIX`, set by `jobs/__init__`), so
every RQ transaction and script touches one slot and redis-py's cluster transactions
(`TransactionStrategy`: WATCH/MULTI/EXEC on the slot owner's connection) can carry them.
What is left are places where RQ assumes a `redis.Redis`; each adaptation below says
which, and is the right home for a fix upstream (RQ or redis-py) instead of here:

1. `connection_pool`: RQ reads the pool's kwargs (the worker's socket timeout, the
   registries' `__eq__`, `parse_connection` for its scheduler). A cluster has one pool
   per node; `rq_connection` gives RQ a client with a facade (`_PoolFacade`).
2. `pipeline()` is transactional by default on `redis.Redis` and RQ relies on it (every
   `with connection.pipeline()` is a MULTI); `RedisCluster.pipeline()` is not.
3. RQ reads `pipeline.explicit_transaction` and `pipeline.watching`; `ClusterPipeline`
   keeps them inside its execution strategy (`RQClusterPipeline` exposes them).
4. A worker raises its socket timeout above its blocking dequeue through the pool's
   kwargs; on a cluster that must reach every node's pool (`raise_socket_timeout`).
5. RQ's scheduler rebuilds its client from the pool it parsed; it must keep ours
   (`keep_scheduler_connection`).
6. rq-scheduler hard-codes `rq:` keys; `SCHEDULER_KEYS` follows `RQ_KEY_PREFIX`.

The adaptations are written against `WRITTEN_FOR`; another installed version warns at
import in cluster mode (and `tests/unit/test_rq_cluster.py` fails), so an upgrade that
fixes or breaks them is noticed.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
import weakref
from typing import Any, TypeVar

import redis
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands import READ_COMMANDS
from rq.defaults import RQ_KEY_PREFIX

from cache.cluster import BoundedClusterPipeline

T = TypeVar("T")

# The versions these adaptations were written and tested against.
WRITTEN_FOR = {"rq": "3.0.0", "rq-scheduler": "0.14.0", "redis": "8.1.0"}

# 6. rq-scheduler's class attributes (`Scheduler.scheduled_jobs_key`, ...) under RQ's prefix.
SCHEDULER_KEYS = {
    "redis_scheduler_namespace_prefix": f"{RQ_KEY_PREFIX}:scheduler_instance:",
    "scheduler_key": f"{RQ_KEY_PREFIX}:scheduler",
    "scheduler_lock_key": f"{RQ_KEY_PREFIX}:scheduler_lock",
    "scheduled_jobs_key": f"{RQ_KEY_PREFIX}:scheduler:scheduled_jobs",
}


def version_mismatches() -> dict[str, tuple[str, str]]:
    """Distribution -> (written for, installed) for every one that differs."""
    found = {}
    for name, written in WRITTEN_FOR.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != written:
            found[name] = (written, installed)
    return found


def cluster_mode() -> bool:
    """True when the PRIMARY is a Redis Cluster (`REDIS_CLUSTER_NODES`)."""
    return bool(os.environ.get("REDIS_CLUSTER_NODES", "").strip())


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


class _PoolFacade:
    """1. What RQ reads of `connection.connection_pool`, for a client with a pool per node.

    `connection_kwargs` is the live dict the cluster creates new nodes with; RQ copies it
    (registries' `__eq__`, `parse_connection`) or updates its socket timeout
    (see `raise_socket_timeout` for the nodes that already exist).
    """

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self._client.nodes_manager.connection_kwargs
        return kwargs

    @property
    def connection_class(self) -> type[redis.Connection]:
        ssl = bool(self.connection_kwargs.get("ssl"))
        return redis.SSLConnection if ssl else redis.Connection


class RQClusterPipeline(BoundedClusterPipeline):
    """3. A cluster pipeline with the two attributes RQ reads of a `redis.client.Pipeline`.

    Bounded like the client it comes from (a plain cluster client's has no bound).
    """

    @property
    def explicit_transaction(self) -> bool:
        """After `multi()`: RQ then queues its writes instead of calling `multi()` again."""
        return bool(_strategy_flag(self, "_explicit_transaction"))

    @property
    def watching(self) -> bool:
        """After `watch()`: RQ's `enqueue_dependents` then reads through the pipeline."""
        return bool(_strategy_flag(self, "_watching"))


def _strategy_flag(pipe: ClusterPipeline, name: str) -> object:
    strategy = pipe._execution_strategy
    if not hasattr(strategy, name):
        # A transactional pipeline keeps the flag on its TransactionStrategy (redis-py 8.1);
        # the plain one (PipelineStrategy) never watches nor opens a MULTI.
        if type(strategy).__name__ == "PipelineStrategy":
            return False
        raise RuntimeError(
            f"redis-py {redis.__version__}: ClusterPipeline has no {name}; see jobs/rq_cluster.py"
        )
    return getattr(strategy, name)


class RQClusterClient(RedisCluster):
    """A cluster client as RQ expects a connection.

    `rq_connection` makes one that shares a client's nodes, pools and retry (a view);
    built directly (`rq info --connection-class jobs.rq_cluster.RQClusterClient`), it
    is a cluster client of its own.
    """

    def __del__(self) -> None:
        """A view leaves the nodes and pools to the client it wraps, which owns them."""
        if "_kx_wrapped" not in self.__dict__:
            super().__del__()  # type: ignore[no-untyped-call]

    @property
    def connection_pool(self) -> _PoolFacade:
        """1. See `_PoolFacade`."""
        return _PoolFacade(self)

    def pipeline(self, transaction: Any = True, shard_hint: Any = None) -> RQClusterPipeline:
        """2. Transactional unless asked otherwise, as `redis.Redis.pipeline()`; 3. RQ's attributes.

        One slot per transaction holds because every RQ key carries `{rq}`; a pipeline of
        ours for several slots passes `transaction=False`.
        """
        pipe: RQClusterPipeline = super().pipeline(transaction=transaction, shard_hint=shard_hint)  # type: ignore[no-untyped-call]
        # Built by redis-py with whatever this version passes; only the class changes
        # (two read-only properties, no state of their own).
        pipe.__class__ = RQClusterPipeline
        return pipe

    def _execute_pipeline_by_slot(self, command: str, slots_to_args: Any) -> list[Any]:
        """2. redis-py's own caller of `pipeline()` (EXISTS, DEL, ... split by slot) keeps the plain one.

        The body of redis-py 8.1's `ClusterMultiKeyCommands._execute_pipeline_by_slot` with
        `transaction=False`: its per-slot commands may span slots.
        """
        read_from_replicas = self.read_from_replicas and command in READ_COMMANDS
        pipe = super().pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for slot, slot_args in slots_to_args.items():
            node = self.nodes_manager.get_node_from_slot(slot, read_from_replicas)
            pipe.execute_command(command, *slot_args, target_nodes=[node])
        result: list[Any] = pipe.execute()
        return result


_views: weakref.WeakKeyDictionary[RedisCluster, RQClusterClient] = weakref.WeakKeyDictionary()


def rq_connection(client: T) -> T:
    """`client` as RQ's classes must be given it: a cluster client wrapped once, others as they are.

    The same wrapper is returned for the same client, so RQ's identity checks hold.
    """
    if not isinstance(client, RedisCluster) or isinstance(client, RQClusterClient):
        return client
    view = _views.get(client)
    if view is None:
        view = object.__new__(_view_class(type(client)))
        view.__dict__.update(client.__dict__)
        view.__dict__["_kx_wrapped"] = (
            client  # keeps the owner (and its pools) alive as long as RQ holds the view
        )
        _views[client] = view
    return view  # type: ignore[return-value]


_view_classes: dict[type[RedisCluster], type[RQClusterClient]] = {}


def _view_class(base: type[RedisCluster]) -> type[RQClusterClient]:
    """`RQClusterClient` over the wrapped client's own class: a view of a `BoundedRedisCluster`
    keeps its bound on every command and pipeline RQ sends (enqueue, the CLI, the dashboard)."""
    if issubclass(RQClusterClient, base):
        return RQClusterClient
    view_class = _view_classes.get(base)
    if view_class is None:
        view_class = type(f"RQ{base.__name__}", (RQClusterClient, base), {})
        _view_classes[base] = view_class
    return view_class


def raise_socket_timeout(client: RedisCluster, timeout_s: float) -> None:
    """4. RQ's `_set_connection` for a cluster: every node's reads wait at least `timeout_s`.

    A worker blocks in BLMOVE for up to its dequeue timeout; a shorter socket timeout
    would cut every idle wait into a connection error. New nodes (after a failover) get
    it from the cluster's kwargs; existing ones from their pools, which are emptied so
    their next connection is made with it.
    """
    kwargs = client.nodes_manager.connection_kwargs
    current = kwargs.get("socket_timeout")
    if current is not None and current >= timeout_s:
        return
    kwargs["socket_timeout"] = timeout_s
    for node in client.get_nodes():  # type: ignore[no-untyped-call]
        if node.redis_connection is None:
            continue
        pool = node.redis_connection.connection_pool
        pool.connection_kwargs["socket_timeout"] = timeout_s
        pool.disconnect()
        pool.reset()


def keep_scheduler_connection(scheduler: Any, client: Any) -> None:
    """5. RQ's `RQScheduler` builds a `redis.Redis` from the pool it parsed; give it ours."""
    if is_cluster(client):
        scheduler._connection = rq_connection(client)


def _warn_if_untested() -> None:
    for name, (written, installed) in version_mismatches().items():
        warnings.warn(
            f"jobs/rq_cluster.py was written for {name} {written}, {installed} is installed: "
            "check its Redis Cluster adaptations (tests marked `cluster`)",
            RuntimeWarning,
            stacklevel=3,
        )


if cluster_mode():
    _warn_if_untested()
