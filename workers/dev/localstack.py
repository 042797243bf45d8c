"""`make run`: the whole local stack on embedded defaults, in the foreground.

Starts the PRIMARY and CACHE Redis from the project's own config files with data under
`var/`, the SMTP catcher writing `var/mail/*.eml`, the platform database schema, and
the production process tree (supervisord on `supervisord.conf`: email and report
workers, scheduler, dashboard); prints where everything listens and writes the
matching environment to `var/local.env`. Ctrl-C (or SIGTERM) stops everything it
started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

from cache.appcache.platform import create_schema, make_engine
from workers.dev.cluster import LocalCluster
from workers.dev.mailcatcher import start_mail_catcher
from workers.dev.servers import CACHE_CONF, PRIMARY_CONF, PROJECT_ROOT, RedisServer

LOCAL_PRIMARY_PORT = 16379  # not 6379: a system Redis may already own the standard port
LOCAL_CACHE_PORT = 16380
LOCAL_SMTP_PORT = 1025
LOCAL_CLUSTER_PORTS = list(range(17000, 17006))  # bus ports 27000..27005


def local_environment(var: Path) -> dict[str, str]:
    return {
        "REDIS_URL": f"redis://127.0.0.1:{LOCAL_PRIMARY_PORT}/0",
        "CACHE_REDIS_URL": f"redis://127.0.0.1:{LOCAL_CACHE_PORT}/0",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(LOCAL_SMTP_PORT),
        "DATABASE_URL": f"sqlite:///{var / 'kryonix.db'}",
        "REPORTS_DIR": str(var / "reports"),
        "KRYONIX_RUN_DIR": str(var / "run"),
    }


def _prepare_database(url: str) -> None:
    """The platform schema, with a small demo company set the first time (reports need data)."""
    import datetime as dt

    from sqlalchemy import func, select

    from cache.appcache.platform import users
    from jobs.reports.seed import SeedPlan, seed_demo

    engine = make_engine(url)
    create_schema(engine)
    with engine.connect() as conn:
        empty = conn.execute(select(func.count()).select_from(users)).scalar_one() == 0
    if empty:
        seed_demo(engine, SeedPlan(users=1000, until=dt.datetime.now(dt.UTC).date()))
        print("Database       seeded with demo data (python -m workers seed-demo for more)")
    engine.dispose()


def run_local_stack(var: Path = PROJECT_ROOT / "var") -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    primary = RedisServer(PRIMARY_CONF, var / "redis-primary", port=LOCAL_PRIMARY_PORT)
    cache = RedisServer(CACHE_CONF, var / "redis-cache", port=LOCAL_CACHE_PORT)
    started: list[RedisServer] = []
    catcher = None
    tree: subprocess.Popen[bytes] | None = None
    try:
        for server in (primary, cache):
            server.start()
            started.append(server)
        catcher = start_mail_catcher(var / "mail", port=LOCAL_SMTP_PORT)
        env = local_environment(var)
        (var / "local.env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        _prepare_database(env["DATABASE_URL"])
        tree = subprocess.Popen(
            [sys.executable, "-m", "workers", "supervise", "--run-dir", env["KRYONIX_RUN_DIR"]],
            env={**os.environ, **env},
            start_new_session=True,  # stopped by us, after a warm shutdown, not by the terminal's Ctrl-C
        )
        print(f"PRIMARY Redis  {primary.url}  (data {primary.directory})")
        print(f"CACHE Redis    {cache.url}  (no persistence)")
        print(f"SMTP catcher   smtp://127.0.0.1:{LOCAL_SMTP_PORT}  (messages in {var / 'mail'})")
        print(
            "Workers        supervisord tree (source var/local.env; supervisorctl -c supervisord.conf status)"
        )
        print("Dashboard      http://127.0.0.1:9181/")
        print(f"Environment    source {var / 'local.env'}")
        print("Ctrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            for server in started:
                if not server.running:
                    print(f"redis-server on {server.port} exited; stopping the stack", flush=True)
                    stop.set()
            if tree.poll() is not None:
                print(f"supervisord exited with {tree.returncode}; stopping the stack", flush=True)
                stop.set()
    finally:
        if tree is not None and tree.poll() is None:
            tree.terminate()  # supervisord stops its programs (warm shutdown), then exits
            tree.wait()
        if catcher is not None:
            catcher.stop()
        for server in reversed(started):
            server.stop()
        print("local stack stopped", flush=True)


def run_local_cluster(var: Path = PROJECT_ROOT / "var") -> None:
    """`up --cluster`: a 6-node PRIMARY cluster (3 masters, 3 replicas) on loopback until Ctrl-C.

    Only the cluster: RQ workers cannot run on a cluster yet, so no worker tree starts.
    A scratch cluster: its data directory is emptied at every start.
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    directory = var / "redis-cluster"
    shutil.rmtree(directory, ignore_errors=True)
    cluster = LocalCluster(directory, ports=LOCAL_CLUSTER_PORTS)
    try:
        cluster.start()
        env = {"REDIS_CLUSTER_NODES": cluster.addresses}
        var.mkdir(parents=True, exist_ok=True)
        (var / "local.env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        print(f"PRIMARY Redis Cluster  REDIS_CLUSTER_NODES={cluster.addresses}  (data {directory})")
        print("Workers                not started: RQ does not run on a cluster yet")
        print(f"Environment            source {var / 'local.env'}")
        print("Ctrl-C stops the cluster.", flush=True)
        while not stop.wait(0.5):
            if not any(node.running for node in cluster.nodes):
                print("every cluster node exited; stopping", flush=True)
                stop.set()
    finally:
        cluster.stop()
        print("local cluster stopped", flush=True)
