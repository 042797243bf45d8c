"""Long-running processes wait for the PRIMARY Redis at start-up instead of exiting.

`rq worker` exits at once when Redis does not answer, and supervisord marks a program
FATAL after `startretries` quick exits (about a minute): a Redis outage during a
deploy or a host reboot would leave the workers down for good. `python -m workers
worker ...` waits here, then becomes `rq worker ...` (exec: same pid, signals go to RQ).
A refused password is a configuration error and is not waited out.

It also sets the safe classes itself: a worker started without RQ's environment would
otherwise be RQ's own, which unpickles and runs any function a job names.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import redis

from cache.connections import Role, build_client, ping
from cache.errors import ConfigError, RedisUnavailable
from cache.settings import get_settings
from jobs import rq_key_prefix
from workers.loop import CLUSTER_SETTLE_LIMIT_S

log = logging.getLogger("kryonix.startup")

FIRST_WAIT_S = 1.0
MAX_WAIT_S = 30.0
# The classes every worker of ours runs, as the `rq` CLI reads them (`python -m workers
# supervise` exports the same). JSON is forced by KryonixWorker whatever --serializer says.
SAFE_CLASSES = {
    "RQ_WORKER_CLASS": "workers.worker.KryonixWorker",
    "RQ_JOB_CLASS": "workers.job.KryonixJob",
    "RQ_QUEUE_CLASS": "jobs.queues.KryonixQueue",
}
# `rq worker` options that would pick another class, and the variable each stands for.
_CLASS_OPTIONS = {
    "-w": "RQ_WORKER_CLASS",
    "--worker-class": "RQ_WORKER_CLASS",
    "-j": "RQ_JOB_CLASS",
    "--job-class": "RQ_JOB_CLASS",
    "--queue-class": "RQ_QUEUE_CLASS",
}
_SERIALIZER_OPTIONS = ("-S", "--serializer")
_JSON_SERIALIZERS = ("json", "jobs.serialization.JSONSerializer")


def wait_for_primary(
    check: Callable[[], object] = lambda: ping(Role.PRIMARY),
    sleep: Callable[[float], None] = time.sleep,
    *,
    limit_s: float | None = None,
) -> int:
    """Block until `check` (PING the PRIMARY) succeeds; returns how many attempts failed.

    Raises:
        RedisUnavailable: the server refused our credentials (REDIS_PASSWORD); waiting cannot help.
        SystemExit: `limit_s` passed without an answer (the message names the setting).
    """
    failures = 0
    wait_s = FIRST_WAIT_S
    started = time.monotonic()
    while True:
        try:
            check()
        except RedisUnavailable as exc:
            if exc.setting == "REDIS_PASSWORD":
                raise
            if limit_s is not None and time.monotonic() - started >= limit_s:
                raise SystemExit(f"Redis did not answer within {limit_s:.0f} s, exiting: {exc}") from exc
            failures += 1
            log.error("waiting for Redis before starting (%s); next try in %.0f s", exc, wait_s)
            sleep(wait_s)
            wait_s = min(wait_s * 2, MAX_WAIT_S)
            continue
        if failures:
            log.info("Redis answers after %d failed attempt(s); starting", failures)
        return failures


def cluster_client_when_settled() -> redis.Redis:
    """A new PRIMARY cluster client, built once the cluster answers (a failover at start-up).

    A cluster client reads the slot map, and asks one node for its commands, as it is
    built; while a master is down and not yet replaced, that may be the dead node.

    Raises:
        SystemExit: no client within CLUSTER_SETTLE_LIMIT_S.
    """
    built: list[redis.Redis] = []
    wait_for_primary(
        lambda: built.append(build_client(Role.PRIMARY)),
        sleep=time.sleep,
        limit_s=CLUSTER_SETTLE_LIMIT_S,
    )
    return built[0]


class PrimaryClient:
    """`rq worker`'s connection class with Sentinel or a Cluster: the PRIMARY client of the settings.

    `rq` builds its connection from one URL, and asks it whether RQ is suspended before
    the worker starts; with Sentinel or a Cluster no URL names the primary, and
    RQ_REDIS_URL's fallback would be one other server (RQ's own is localhost:6379).
    `python -m workers worker` names this class (RQ_CONNECTION_CLASS) in those modes and
    passes, as the URL `rq` requires, a label that this class does not read.
    """

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> redis.Redis:
        from jobs.rq_cluster import cluster_mode, rq_connection

        return rq_connection(cluster_client_when_settled()) if cluster_mode() else build_client(Role.PRIMARY)


def rq_executable() -> str:
    """The `rq` script of this installation (next to the interpreter in a virtualenv)."""
    beside = Path(sys.executable).parent / "rq"
    found = str(beside) if beside.exists() else shutil.which("rq")
    if found is None:
        raise FileNotFoundError("the `rq` command is not installed next to this Python or on PATH")
    return found


def _option_values(arguments: Sequence[str], names: Sequence[str]) -> list[str]:
    """Values given to any of `names` in `arguments` (`-w X`, `--worker-class X`, `--worker-class=X`)."""
    values = []
    for index, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        if name in names and equals:
            values.append(value)
        elif argument in names and index + 1 < len(arguments):
            values.append(arguments[index + 1])
        else:  # a short option with its value attached: -wmy.Worker
            values.extend(
                argument[len(short) :]
                for short in names
                if not short.startswith("--") and argument.startswith(short) and len(argument) > len(short)
            )
    return values


def worker_environment(environ: dict[str, str], arguments: Sequence[str]) -> dict[str, str]:
    """`environ` with the safe classes, RQ_REDIS_URL and RQ_KEY_PREFIX set, for `rq worker <arguments>`.

    RQ_REDIS_URL falls back to REDIS_URL, never to RQ's localhost:6379 (another server);
    with Sentinel or a Cluster the connection is `PrimaryClient`, whatever RQ_REDIS_URL says.
    RQ_KEY_PREFIX is `{rq}` on a cluster (see `jobs`): `rq` reads it before our classes load.

    Raises:
        ConfigError: the environment or `arguments` name another worker, job or queue
            class, or a serializer other than JSON; or a cluster's RQ_KEY_PREFIX has no hash tag.
    """
    for variable, safe in SAFE_CLASSES.items():
        given = environ.get(variable, "").strip()
        if given and given != safe:
            raise ConfigError(f"{variable}={given!r} refused: our workers run only {safe}")
    for option, variable in _CLASS_OPTIONS.items():
        for given in _option_values(arguments, [option]):
            if given != SAFE_CLASSES[variable]:
                raise ConfigError(
                    f"{option} {given!r} refused: our workers run only {SAFE_CLASSES[variable]}"
                )
    for given in _option_values(arguments, _SERIALIZER_OPTIONS):
        if given not in _JSON_SERIALIZERS:
            raise ConfigError(f"--serializer {given!r} refused: jobs are JSON only")
    env = {**environ, **SAFE_CLASSES}
    rq_key_prefix(env)
    settings = get_settings()
    if settings.cluster is not None or settings.sentinel is not None:
        if _option_values(arguments, ["--connection-class"]):
            raise ConfigError(
                "--connection-class refused: with REDIS_CLUSTER_NODES or REDIS_SENTINELS the worker's "
                "connection is the PRIMARY of the settings"
            )
        env["RQ_CONNECTION_CLASS"] = f"{PrimaryClient.__module__}.{PrimaryClient.__qualname__}"
        env["RQ_REDIS_URL"] = "kryonix://primary-from-settings"  # required by `rq`; PrimaryClient ignores it
    elif not env.get("RQ_REDIS_URL", "").strip():
        env["RQ_REDIS_URL"] = _rq_redis_url()
    return env


def _rq_redis_url() -> str:
    """REDIS_URL as the `rq` CLI needs it: with REDIS_PASSWORD, which RQ does not read."""
    settings = get_settings()
    url = settings.redis_url
    if settings.redis_password and urlsplit(url).password is None:
        separator = "&" if urlsplit(url).query else "?"
        url += separator + urlencode({"password": settings.redis_password})  # redis-py reads it
    return url


def exec_rq_worker(arguments: Sequence[str]) -> None:
    """Replace this process with `rq worker <arguments>` under the safe classes; never returns.

    Raises:
        ConfigError: another class or serializer was asked for (see `worker_environment`).
    """
    env = worker_environment(dict(os.environ), arguments)
    executable = rq_executable()
    os.execve(executable, [executable, "worker", *arguments], env)  # noqa: S606 - a fixed argv, no shell
