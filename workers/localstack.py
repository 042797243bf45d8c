"""`make run`: the whole local stack on embedded defaults, in the foreground.

Starts the PRIMARY and CACHE Redis from the project's own config files with data under
`var/`, and the SMTP catcher writing `var/mail/*.eml`; prints where everything
listens and writes the matching environment to `var/local.env`. Ctrl-C (or SIGTERM)
stops everything it started.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

from workers.mailcatcher import start_mail_catcher
from workers.servers import CACHE_CONF, PRIMARY_CONF, PROJECT_ROOT, RedisServer

LOCAL_PRIMARY_PORT = 16379  # not 6379: a system Redis may already own the standard port
LOCAL_CACHE_PORT = 16380
LOCAL_SMTP_PORT = 1025


def local_environment(var: Path) -> dict[str, str]:
    return {
        "REDIS_URL": f"redis://127.0.0.1:{LOCAL_PRIMARY_PORT}/0",
        "CACHE_REDIS_URL": f"redis://127.0.0.1:{LOCAL_CACHE_PORT}/0",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(LOCAL_SMTP_PORT),
        "DATABASE_URL": f"sqlite:///{var / 'kryonix.db'}",
        "REPORTS_DIR": str(var / "reports"),
    }


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
    try:
        for server in (primary, cache):
            server.start()
            started.append(server)
        catcher = start_mail_catcher(var / "mail", port=LOCAL_SMTP_PORT)
        env = local_environment(var)
        (var / "local.env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        print(f"PRIMARY Redis  {primary.url}  (data {primary.directory})")
        print(f"CACHE Redis    {cache.url}  (no persistence)")
        print(f"SMTP catcher   smtp://127.0.0.1:{LOCAL_SMTP_PORT}  (messages in {var / 'mail'})")
        print(f"Environment    source {var / 'local.env'}")
        print("Ctrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            for server in started:
                if not server.running:
                    print(f"redis-server on {server.port} exited; stopping the stack", flush=True)
                    stop.set()
    finally:
        if catcher is not None:
            catcher.stop()
        for server in reversed(started):
            server.stop()
        print("local stack stopped", flush=True)
