"""`python -m workers backup`: a fresh RDB snapshot of the PRIMARY, confirmed on disk.

On a Redis Cluster each master holds only its own slots, so every master is snapshotted
in turn (`backup_every_master`); the replicas hold copies and are left alone.

`BGSAVE` only says a child was forked; the snapshot may still fail (full disk,
unwritable dir). So we wait until the server reports the save over, check that its
`LASTSAVE` moved and `rdb_last_bgsave_status` is `ok`, and only then report the new
`LASTSAVE` and the RDB file (`CONFIG GET dir` + `dbfilename`) with its size.

Two traps handled here: a save already running started before our call, so its
snapshot may miss recent writes: we wait for it and take our own. And `LASTSAVE`
has one-second resolution: a save that ends in the same second as the previous one
would look like no save at all, so we first let the server clock reach the next second.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from cache.connections import REDIS_ERRORS, Role, translate_errors
from cache.errors import KryonixError
from cache.text import as_text

DEFAULT_TIMEOUT_S = 600.0  # a multi-GB RDB on a slow disk takes minutes; the CLI can ask for more
POLL_INTERVAL_S = 0.1  # INFO persistence is cheap; 10 polls a second notice the end promptly


class BackupError(KryonixError):
    """The snapshot was refused, failed or did not finish in time; the message says which."""


def check_timeout(timeout_s: object) -> float:
    """Raises ValueError unless `timeout_s` is a finite number of seconds above 0."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise ValueError(f"timeout_s must be a number of seconds, got {timeout_s!r}")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a finite number of seconds above 0, got {timeout_s!r}")
    return float(timeout_s)


class _Waiter:
    """Polls the server until a condition holds or the deadline passes (injectable monotonic clock)."""

    def __init__(
        self,
        client: redis.Redis,
        timeout_s: float,
        poll_interval_s: float,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.deadline = monotonic() + timeout_s
        self.poll_interval_s = poll_interval_s
        self.monotonic = monotonic
        self.sleep = sleep

    def persistence(self) -> dict[str, Any]:
        info: dict[str, Any] = self.client.info("persistence")
        return info

    def pause(self, waiting_for: str) -> None:
        if self.monotonic() >= self.deadline:
            raise BackupError(f"backup did not finish within {self.timeout_s:g} s: still {waiting_for}")
        self.sleep(self.poll_interval_s)

    def until_no_save_running(self) -> None:
        while int(self.persistence().get("rdb_bgsave_in_progress", 0)):
            self.pause("waiting for the background save that was already running")

    def until_server_second_after(self, lastsave: int) -> None:
        while int(self.client.time()[0]) <= lastsave:
            self.pause("waiting for the server clock to pass the previous LASTSAVE")


@dataclass(frozen=True)
class _Started:
    previous_lastsave: int
    previous_saves: int | None  # INFO `rdb_saves` (Redis 7+): counts every save that started
    scheduled: bool  # queued behind an AOF rewrite, not started yet
    waited: bool  # a save was already running and we waited for it first


def _saves(info: dict[str, Any]) -> int | None:
    return int(info["rdb_saves"]) if "rdb_saves" in info else None


def _start_save(waiter: _Waiter) -> _Started:
    waited = False
    while True:
        info = waiter.persistence()
        previous = int(info["rdb_last_save_time"])
        waiter.until_server_second_after(previous)
        try:
            # SCHEDULE: while an AOF rewrite runs, the save starts right after it instead of failing.
            reply = as_text(waiter.client.execute_command("BGSAVE SCHEDULE"))  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            if "already in progress" not in str(exc):
                raise BackupError(f"BGSAVE refused: {exc}") from exc
            # That save began before our call and may miss recent writes: let it end, then save again.
            waited = True
            waiter.until_no_save_running()
            continue
        return _Started(previous, _saves(info), "scheduled" in reply.lower(), waited)


def _wait_for_save(waiter: _Waiter, started: _Started) -> int:
    """Wait until our save is over; returns the new LASTSAVE or raises BackupError."""
    seen_running = not started.scheduled
    while True:
        info = waiter.persistence()
        running = bool(int(info.get("rdb_bgsave_in_progress", 0)))
        saves = _saves(info)
        counted = saves is not None and started.previous_saves is not None and saves > started.previous_saves
        # Without `rdb_saves` (Redis < 7) a scheduled save that ran between two polls is
        # only visible through LASTSAVE.
        seen_running = seen_running or running or counted or saves is None
        lastsave = int(info["rdb_last_save_time"])
        status = as_text(info.get("rdb_last_bgsave_status", "ok"))
        if not running and seen_running and status != "ok":
            raise BackupError(
                f"BGSAVE failed (rdb_last_bgsave_status={status}); the Redis log says why "
                f"(often a full disk or an unwritable dir); LASTSAVE is still {started.previous_lastsave}"
            )
        if not running and seen_running and lastsave > started.previous_lastsave:
            return lastsave
        waiter.pause("waiting for BGSAVE to finish" if seen_running else "waiting for the scheduled BGSAVE")


def rdb_file(client: redis.Redis) -> tuple[str | None, int | None, str | None]:
    """(path, size in bytes, warning) of the RDB file; path/size are None with a warning when unknown."""
    try:
        config: dict[Any, Any] = client.config_get("dir")
        config.update(client.config_get("dbfilename"))
    except redis.ResponseError as exc:
        return (
            None,
            None,
            (
                f"CONFIG GET refused ({exc}): the RDB file's path is unknown; "
                "ask the Redis operator where `dir`/`dbfilename` point"
            ),
        )
    values = {as_text(k): as_text(v) for k, v in config.items()}
    path = os.path.join(values.get("dir", ""), values.get("dbfilename", ""))
    try:
        return path, os.stat(path).st_size, None
    except OSError as exc:
        return path, None, f"cannot read {path} from this host ({exc.strerror}); is Redis on another machine?"


def backup(
    client: redis.Redis,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    role: Role = Role.PRIMARY,
    poll_interval_s: float = POLL_INTERVAL_S,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Take an RDB snapshot now and wait until it is safely on disk.

    Returns:
        `lastsave` (new LASTSAVE, Unix seconds), `previous_lastsave`, `rdb_path` and
        `size_bytes` (None when CONFIG is refused or the file is on another host, with
        the reason in `warning`), `waited_for_running_save`, `duration_s`.

    Raises:
        ValueError: `timeout_s` is not a positive finite number.
        BackupError: BGSAVE refused or failed, or not done within `timeout_s`.
        RedisUnavailable: Redis unreachable or refused our credentials.
    """
    timeout_s = check_timeout(timeout_s)
    started = monotonic()
    with translate_errors(role):
        waiter = _Waiter(client, timeout_s, poll_interval_s, monotonic, sleep)
        try:
            started_save = _start_save(waiter)
            lastsave = _wait_for_save(waiter, started_save)
            path, size, warning = rdb_file(client)
        except redis.ResponseError as exc:  # INFO/TIME refused: an ACL too tight for backups
            raise BackupError(f"Redis refused a command the backup needs: {exc}") from exc
    return {
        "lastsave": lastsave,
        "previous_lastsave": started_save.previous_lastsave,
        "rdb_path": path,
        "size_bytes": size,
        "waited_for_running_save": started_save.waited,
        "duration_s": round(monotonic() - started, 3),
        "warning": warning,
    }


def backup_every_master(
    client: Any,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    monotonic: Callable[[], float] = time.monotonic,
    **options: Any,
) -> dict[str, Any]:
    """`backup` of every master of the cluster `client` talks to, one after another, in `timeout_s`.

    Returns:
        `masters`: one `backup` result per master, with its `node` (`host:port`), in
        node order; `duration_s`.

    Raises:
        BackupError: as `backup`, naming the master (those before it are saved).
    """
    timeout_s = check_timeout(timeout_s)
    started = monotonic()
    try:
        with translate_errors(Role.PRIMARY):
            client.nodes_manager.initialize()  # the masters now, not as of the last error
            masters = sorted(client.get_primaries(), key=lambda node: node.name)
    except REDIS_ERRORS as exc:  # the cluster's own errors are not all RedisError
        raise BackupError(f"cannot list the cluster's masters: {exc}") from exc
    results: list[dict[str, Any]] = []
    for node in masters:
        remaining = started + timeout_s - monotonic()
        if remaining <= 0:
            saved = f"{len(results)} of {len(masters)} masters saved"
            raise BackupError(f"backup did not finish within {timeout_s:g} s: {saved}")
        try:
            node_client = client.get_redis_connection(node)
            remaining_s = max(round(remaining, 1), 0.1)  # "within 17.9 s" in a message
            result = backup(node_client, timeout_s=remaining_s, monotonic=monotonic, **options)
        except BackupError as exc:
            raise BackupError(f"master {node.name}: {exc} ({len(results)} of {len(masters)} saved)") from exc
        results.append({"node": node.name, **result})
    return {"masters": results, "duration_s": round(monotonic() - started, 3)}


def render_every_master(result: dict[str, Any]) -> list[str]:
    """Text lines for the CLI: one block per master."""
    lines = [f"backup of {len(result['masters'])} masters done in {result['duration_s']:.1f} s"]
    for master in result["masters"]:
        lines.append(f"master {master['node']}:")
        lines.extend(f"  {line}" for line in render_backup(master))
    return lines


def render_backup(result: dict[str, Any]) -> list[str]:
    """Text lines for the CLI."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["lastsave"]))
    size = "unknown size" if result["size_bytes"] is None else f"{result['size_bytes']} bytes"
    lines = [
        f"backup done in {result['duration_s']:.1f} s: LASTSAVE {result['lastsave']} ({when})",
        f"RDB file: {result['rdb_path'] or 'unknown path'} ({size})",
    ]
    if result["waited_for_running_save"]:
        lines.append("(a save was already running; waited for it and took a fresh one)")
    if result["warning"]:
        lines.append(f"WARNING: {result['warning']}")
    return lines
