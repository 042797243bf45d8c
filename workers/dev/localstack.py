"""`make run`: the whole local stack on embedded defaults, in the foreground.

Starts the PRIMARY and CACHE Redis from the project's own config files with data under
`var/`, the SMTP catcher writing `var/mail/*.eml`, the platform database schema, and
the production process tree (supervisord on `supervisord.conf`: email and report
workers, scheduler, dashboard); prints where everything listens and writes the
matching environment to `var/local.env`. Ctrl-C (or SIGTERM) stops everything it
started. `python -m workers up --cluster` runs the same stack on a local 6-node Redis
Cluster (3 masters, 3 replicas) for both roles instead of the two servers.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from cache.appcache.platform import create_schema, make_engine
from workers.dev.cluster import LocalCluster
from workers.dev.mailcatcher import start_mail_catcher
from workers.dev.servers import (
    BUS_PORT_OFFSET,
    CACHE_CONF,
    PRIMARY_CONF,
    PROJECT_ROOT,
    RedisServer,
    ServerStartError,
)

LOCAL_PRIMARY_PORT = 16379  # not 6379: a system Redis may already own the standard port
LOCAL_CACHE_PORT = 16380
LOCAL_SMTP_PORT = 1025
LOCAL_DASHBOARD_PORT = 9181
LOCAL_CLUSTER_PORTS = tuple(range(17000, 17006))  # bus ports 27000..27005

# Redis settings an operator's shell may hold that would point the stack elsewhere (or
# at the other mode): the stack's own environment replaces them.
FOREIGN_REDIS_VARIABLES = (
    "REDIS_URL",
    "CACHE_REDIS_URL",
    "REDIS_SENTINELS",
    "REDIS_CLUSTER_NODES",
    "CACHE_REDIS_CLUSTER_NODES",
    "RQ_REDIS_URL",
    "RQ_KEY_PREFIX",
)


@dataclass(frozen=True)
class LocalPorts:
    """Where the stack listens; the defaults are `make run`'s (tests pass free ones)."""

    primary: int = LOCAL_PRIMARY_PORT
    cache: int = LOCAL_CACHE_PORT
    smtp: int = LOCAL_SMTP_PORT
    dashboard: int = LOCAL_DASHBOARD_PORT
    cluster: tuple[int, ...] = LOCAL_CLUSTER_PORTS


def stack_ports(ports: LocalPorts, *, cluster: bool) -> list[int]:
    """Every port the stack will listen on: the Redis servers (nodes and bus ports), SMTP, dashboard."""
    if cluster:
        redis_ports = [*ports.cluster, *(port + BUS_PORT_OFFSET for port in ports.cluster)]
    else:
        redis_ports = [ports.primary, ports.cache]
    return [*redis_ports, ports.smtp, ports.dashboard]


def port_in_use(port: int) -> bool:
    """Something listens on 127.0.0.1:`port` (SO_REUSEADDR: a closed connection's TIME_WAIT is no owner)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def ports_in_use_message(busy: list[int]) -> str:
    """One line for the operator: which ports are taken, and what to do. Pure."""
    names = ", ".join(str(port) for port in busy)
    subject = f"port {names} is" if len(busy) == 1 else f"ports {names} are"
    return (
        f"{subject} in use (another `make run`?); stop it, or whatever listens there "
        f"(`ss -ltnp | grep {busy[0]}` names it), and start again"
    )


def env_file_text(env: dict[str, str], bin_dir: Path) -> str:
    """`var/local.env`: the stack's settings, and `bin_dir` first on PATH.

    With the stack's own `python`, `supervisorctl` and `rq` first on PATH, `source
    var/local.env` alone makes every command of the README work in a fresh shell.
    """
    lines = [f"export {name}={shlex.quote(value)}\n" for name, value in env.items()]
    quoted = "".join("\\" + c if c in '"$`\\' else c for c in str(bin_dir))  # inside "..."
    lines.append(f'export PATH="{quoted}:$PATH"\n')
    return "".join(lines)


def local_environment(var: Path, ports: LocalPorts = LocalPorts()) -> dict[str, str]:
    """The one-server stack's settings (`make run`), as written to `var/local.env`."""
    return {
        "REDIS_URL": f"redis://127.0.0.1:{ports.primary}/0",
        "CACHE_REDIS_URL": f"redis://127.0.0.1:{ports.cache}/0",
        **_common_environment(var, ports),
    }


def _common_environment(var: Path, ports: LocalPorts) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(ports.smtp),
        "DATABASE_URL": f"sqlite:///{var / 'kryonix.db'}",
        "REPORTS_DIR": str(var / "reports"),
        "KRYONIX_RUN_DIR": str(var / "run"),
        "DASHBOARD_PORT": str(ports.dashboard),
    }


@dataclass
class LocalRedis:
    """The stack's Redis: two servers (PRIMARY, CACHE) or one 6-node cluster for both roles."""

    servers: list[RedisServer] = field(default_factory=list)
    cluster: LocalCluster | None = None
    env: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def start(self, var: Path, ports: LocalPorts, *, cluster: bool) -> None:
        if cluster:
            self._start_cluster(var, ports)
            return
        primary = RedisServer(PRIMARY_CONF, var / "redis-primary", port=ports.primary)
        cache = RedisServer(CACHE_CONF, var / "redis-cache", port=ports.cache)
        for server in (primary, cache):
            self.servers.append(server.start())
        self.env = local_environment(var, ports)
        self.lines = [
            f"PRIMARY Redis  {primary.url}  (data {primary.directory})",
            f"CACHE Redis    {cache.url}  (no persistence)",
        ]

    def _start_cluster(self, var: Path, ports: LocalPorts) -> None:
        """A scratch cluster: its data directory is emptied at every start."""
        directory = var / "redis-cluster"
        shutil.rmtree(directory, ignore_errors=True)
        self.cluster = LocalCluster(directory, ports=list(ports.cluster))
        self.servers = self.cluster.nodes  # filled as the nodes start, so stop() reaches them
        self.cluster.start()
        self.env = {"REDIS_CLUSTER_NODES": self.cluster.addresses, **_common_environment(var, ports)}
        self.lines = [
            f"Redis Cluster  REDIS_CLUSTER_NODES={self.cluster.addresses}  (PRIMARY and CACHE; "
            f"3 masters, 3 replicas; all queues on the {{rq}} slot; scratch data in {directory})"
        ]

    def down(self) -> str | None:
        """Why the stack must stop: a server exited, or (a cluster fails over) every node did."""
        if self.cluster is not None:
            return None if any(n.running for n in self.servers) else "every cluster node exited"
        dead = [server.port for server in self.servers if not server.running]
        return f"redis-server on {dead[0]} exited" if dead else None

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def _prepare_database(url: str) -> None:
    """The platform schema, with a small demo company set the first time (reports need data)."""
    import datetime as dt

    from sqlalchemy import func, select

    from cache.appcache.platform import users
    from jobs.reports.seed import demo_plan, seed_demo

    engine = make_engine(url)
    create_schema(engine)
    with engine.connect() as conn:
        empty = conn.execute(select(func.count()).select_from(users)).scalar_one() == 0
    if empty:
        plan = demo_plan(dt.datetime.now(dt.UTC).date())
        seed_demo(engine, plan)
        first = plan.until - dt.timedelta(days=plan.days - 1)
        print(f"Database       seeded with demo data, activity {first} to {plan.until} (docs/reports.md)")
    engine.dispose()


def hold_var_directory(var: Path) -> TextIO | None:
    """Lock `var/` for this stack (released when the process ends, however it ends); None
    when another stack holds it: two stacks on one `var/` would share Redis data files
    and overwrite each other's `local.env`, whatever their ports."""
    var.mkdir(parents=True, exist_ok=True)
    lock = open(var / ".stack.lock", "a+")  # noqa: SIM115 - held for the life of the stack
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def var_in_use_message(var: Path) -> str:
    holder = (var / ".stack.lock").read_text().strip() or "?"
    return (
        f"{var} is in use by another local stack (pid {holder}; `make run` or `python -m workers up`); "
        "stop it first, or give this one another directory"
    )


def _claim(var: Path, ports: list[int]) -> TextIO:
    """The lock on `var/`, once the ports are free too; else exit 1 with one line on stderr."""
    busy = [port for port in ports if port_in_use(port)]
    if busy:
        print(ports_in_use_message(busy), file=sys.stderr, flush=True)
        raise SystemExit(1)
    lock = hold_var_directory(var)
    if lock is None:
        print(var_in_use_message(var), file=sys.stderr, flush=True)
        raise SystemExit(1)
    return lock


def _announce(redis_lines: list[str], var: Path, ports: LocalPorts) -> None:
    for line in redis_lines:
        print(line)
    print(f"SMTP catcher   smtp://127.0.0.1:{ports.smtp}  (messages in {var / 'mail'})")
    print("Workers        supervisord tree (source var/local.env; supervisorctl -c supervisord.conf status)")
    print(f"Dashboard      http://127.0.0.1:{ports.dashboard}/")
    print(f"Environment    source {var / 'local.env'}")
    print("Ctrl-C stops everything.", flush=True)


def run_local_stack(
    var: Path = PROJECT_ROOT / "var", *, cluster: bool = False, ports: LocalPorts = LocalPorts()
) -> None:
    """Run the stack until SIGINT/SIGTERM; with `cluster`, on a local 6-node Redis Cluster.

    Exits 1 with one line on stderr, before starting anything, when one of its ports is
    taken (another `make run`, most likely) or another stack runs on `var/`, and when a
    redis-server exits at start; exits 1 too when a server or supervisord ends by itself.
    """
    lock = _claim(var, stack_ports(ports, cluster=cluster))
    stop = threading.Event()
    failure: str | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    redis_ = LocalRedis()
    catcher = None
    tree: subprocess.Popen[bytes] | None = None
    try:
        redis_.start(var, ports, cluster=cluster)
        catcher = start_mail_catcher(var / "mail", port=ports.smtp)
        env = redis_.env
        # The stack's own environment (`.venv/bin` under `make run`) goes first on PATH.
        (var / "local.env").write_text(env_file_text(env, Path(sys.executable).parent))
        _prepare_database(env["DATABASE_URL"])
        inherited = {k: v for k, v in os.environ.items() if k not in FOREIGN_REDIS_VARIABLES}
        tree = subprocess.Popen(
            [sys.executable, "-m", "workers", "supervise", "--run-dir", env["KRYONIX_RUN_DIR"]],
            env={**inherited, **env},
            start_new_session=True,  # stopped by us, after a warm shutdown, not by the terminal's Ctrl-C
        )
        _announce(redis_.lines, var, ports)
        while not stop.wait(0.5):
            reason = redis_.down() or (
                None if tree.poll() is None else f"supervisord exited with {tree.returncode}"
            )
            if reason:
                print(f"{reason}; stopping the stack", flush=True)
                failure = reason
                stop.set()
    except ServerStartError as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if tree is not None and tree.poll() is None:
            tree.terminate()  # supervisord stops its programs (warm shutdown), then exits
            tree.wait()
        if catcher is not None:
            catcher.stop()
        redis_.stop()
        print("local stack stopped", flush=True)
        lock.close()
    if failure is not None:
        raise SystemExit(1)  # it stopped by itself: a failure, for `make run` and its callers
