"""`python -m workers ...`: the operator CLI. Each command parses, builds settings, calls one function."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from cache.errors import ConfigError, RedisUnavailable
from workers.cli.seed import seed_demo


def _primary() -> Any:
    """The PRIMARY client as RQ's classes take it, or a clean CLI error naming the bad setting.

    On a Redis Cluster that is `jobs.rq_cluster`'s view of the shared client (RQ needs it).
    """
    from cache.connections import Role, ping
    from cache.settings import get_settings

    try:
        get_settings()
        ping(Role.PRIMARY)
    except (ConfigError, RedisUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    return _rq_primary()


def _rq_primary() -> Any:
    """The shared PRIMARY client, through `rq_connection` (a no-op on one server)."""
    from cache.connections import primary
    from jobs.rq_cluster import rq_connection

    return rq_connection(primary())


def _wait_for_primary() -> None:
    """Block until the PRIMARY answers: daemons wait out an outage instead of exiting.

    A bad setting or a refused password is a clean CLI error, not waited out.
    """
    from workers.startup import wait_for_primary

    try:
        wait_for_primary()
    except (ConfigError, RedisUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


def _primary_when_up() -> Any:
    """The PRIMARY client (as RQ takes it) once it answers."""
    _wait_for_primary()
    return _rq_primary()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group()
def main() -> None:
    """KRYONIX workers: operate queues, workers and the Redis services."""
    from workers.logs import configure_logging

    try:
        configure_logging()
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for machines.")
@click.option("--quiet", is_flag=True, help="Print nothing; only the exit code (for HEALTHCHECK).")
def status(as_json: bool, quiet: bool) -> None:
    """Health of both Redis roles, queues and workers; exit 1 when unhealthy."""
    from cache.connections import Role, cache_redis, primary
    from workers.cli import cluster_status, queue_status
    from workers.cli import status as status_module
    from workers.cli.status_sections import cache_section, diagnose_section, ratelimit_section

    if _cluster_configured():
        status_module.EXTRA_SECTIONS.setdefault("cluster", lambda: cluster_status.section(primary()))
    status_module.EXTRA_SECTIONS.setdefault("queues", lambda: queue_status.section(_rq_primary()))
    if not quiet:  # the health check needs only reachability and policy
        status_module.EXTRA_SECTIONS.setdefault("cache_counters", lambda: cache_section(cache_redis()))
        status_module.EXTRA_SECTIONS.setdefault("ratelimit", lambda: ratelimit_section(primary()))
        status_module.EXTRA_SECTIONS.setdefault("diagnose", lambda: diagnose_section(primary()))
        status_module.EXTRA_SECTIONS.setdefault(
            "diagnose_cache", lambda: diagnose_section(cache_redis(), role=Role.CACHE)
        )
    report = status_module.collect()
    ok = status_module.healthy(report)
    if as_json:
        for section in report.values():
            if isinstance(section, dict):
                section.pop("_text", None)
        _echo_json(report)
    elif not quiet:
        click.echo(status_module.render(report))
    sys.exit(0 if ok else 1)


def _cluster_configured() -> bool:
    """Whether the PRIMARY is a Redis Cluster; a bad setting shows up in the role lines instead."""
    from cache.settings import get_settings

    try:
        return get_settings().cluster is not None
    except ConfigError:
        return False


@main.command()
@click.option("--port", default=9182, show_default=True, type=int)
@click.option("--addr", default="127.0.0.1", show_default=True)
def metrics(port: int, addr: str) -> None:
    """Serve Prometheus metrics (read from Redis on every scrape) until SIGTERM."""
    from workers.cli.metrics import metrics_command

    try:
        metrics_command(port, addr)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("backup")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True)
def backup_command(timeout_s: float, as_json: bool) -> None:
    """BGSAVE the primary (each master of a cluster) now, wait until on disk, report LASTSAVE and RDB."""
    from cache.connections import is_cluster
    from workers.cli.backup import (
        BackupError,
        backup,
        backup_every_master,
        render_backup,
        render_every_master,
    )

    connection = _primary()
    cluster = is_cluster(connection)
    try:
        result = (backup_every_master if cluster else backup)(connection, timeout_s=timeout_s)
    except (BackupError, ValueError, RedisUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(result)
    else:
        click.echo("\n".join((render_every_master if cluster else render_backup)(result)))


REPLAY_MAX = 10_000  # ten times what a channel keeps by default (EVENTS_STREAM_MAXLEN, 1000)
_REPLAY_HELP = f"First print the last N events of each channel (at most {REPLAY_MAX:,})."


@main.command()
@click.option("--user", "user_ids", multiple=True, help="Follow this user's events (repeatable).")
@click.option("--system", is_flag=True, help="Follow system events.")
@click.option("--replay", default=0, type=click.IntRange(min=0, max=REPLAY_MAX), help=_REPLAY_HELP)
def events(user_ids: tuple[str, ...], system: bool, replay: int) -> None:
    """Tail real-time events live (all users and system events when no filter is given)."""
    from cache.realtime.envelope import RealtimeError
    from workers.cli.events_tail import tail_events

    _primary()
    try:  # a user named twice is followed once
        tail_events(list(dict.fromkeys(user_ids)), system, sys.stdout, replay=replay, notice=sys.stderr)
    except (RealtimeError, RedisUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option(
    "--cluster",
    is_flag=True,
    help="Run the stack on a local 6-node Redis Cluster (3 masters, 3 replicas) for both Redis "
    "roles instead of two servers; its REDIS_CLUSTER_NODES go to var/local.env.",
)
def dev(cluster: bool) -> None:
    """Run the local stack (both Redis roles, SMTP catcher, worker tree) until Ctrl-C."""
    from workers.dev.localstack import run_local_stack

    run_local_stack(cluster=cluster)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("rq_args", nargs=-1, type=click.UNPROCESSED)
def worker(rq_args: tuple[str, ...]) -> None:
    """Wait for the PRIMARY Redis, then become `rq worker RQ_ARGS...` with our safe classes.

    The worker, job and queue classes and RQ_REDIS_URL (default REDIS_URL) are set here
    whatever the environment says; another class or serializer is refused.
    """
    from cache.connections import set_process_role
    from workers.startup import exec_rq_worker

    set_process_role("worker-start")
    _wait_for_primary()
    try:
        exec_rq_worker(rq_args)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def dashboard() -> None:
    """Serve rq-dashboard (DASHBOARD_BIND/PORT; basic auth from DASHBOARD_USERNAME/PASSWORD)."""
    from cache.connections import set_process_role
    from workers.dashboard.app import serve

    set_process_role("dashboard")
    try:
        serve()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option(
    "--config", "config_path", default=None, help="supervisord.conf to use (default: the shipped one)."
)
@click.option(
    "--run-dir", default=None, help="Socket and pid directory (default: $KRYONIX_RUN_DIR or var/run)."
)
def supervise(config_path: str | None, run_dir: str | None) -> None:
    """Run the production process tree (supervisord -n) with the RQ environment filled in."""
    from pathlib import Path

    from workers.cli.supervise import exec_supervisord

    exec_supervisord(Path(config_path) if config_path else None, Path(run_dir) if run_dir else None)


@main.command()
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between passes.")
def maintain(once: bool, interval: float) -> None:
    """Recover jobs of dead workers (abandoned or stranded) and expire old registry entries."""
    from cache.connections import set_process_role
    from workers.maintenance import recover, run_forever

    set_process_role("maintenance")
    connection = _primary() if once else _primary_when_up()
    if once:
        report = recover(connection)
        click.echo(f"recovered {report.total} job(s)")
        for queue, ids in report.abandoned.items():
            for job_id in ids:
                click.echo(f"  {queue}: abandoned {job_id}")
        for queue, ids in report.requeued_from_intermediate.items():
            for job_id in ids:
                click.echo(f"  {queue}: requeued stranded {job_id}")
        for queue, ids in report.set_aside.items():
            for job_id in ids:
                click.echo(f"  {queue}: quarantined unreadable entry {job_id!r}")
        return
    run_forever(connection, interval_s=interval)


@main.command()
@click.option("--tick", default=1.0, show_default=True, help="Seconds between scheduling passes.")
@click.option("--maintenance-interval", default=5.0, show_default=True, help="Seconds between recoveries.")
def scheduler(tick: float, maintenance_interval: float) -> None:
    """Run periodic jobs, move due retries/scheduled jobs, and recover crashed jobs."""
    from workers.scheduler import SchedulerProcess

    SchedulerProcess(_primary_when_up(), tick_s=tick, maintenance_interval_s=maintenance_interval).run()


def _job_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A JOB_ID argument: RQ's id characters, else one error line (no job can have another id)."""
    from jobs.quarantine import JOB_ID

    if value is None or JOB_ID.fullmatch(value):
        return value
    raise click.ClickException(f"job id {value!r} is malformed: only letters, digits, '_' and '-' allowed")


@main.group()
def failed() -> None:
    """Inspect and act on the failed-job registries."""


_QUEUE = click.option("--queue", "-q", default=None, help="email or report (default: both).")


@failed.command("list")
@_QUEUE
@click.option("--json", "as_json", is_flag=True)
def failed_list(queue: str | None, as_json: bool) -> None:
    """Failed jobs, newest first, with attempt count and reason."""
    from cache.text import printable
    from workers.cli.failed import iso_utc, list_failed

    rows = _guard(lambda: list_failed(_primary(), queue=queue))
    if as_json:
        _echo_json([row.as_dict() for row in rows])
        return
    for row in rows:
        when = iso_utc(row.failed_at) or "-"
        line = f"{row.id}  {row.queue}  {when}  attempts={row.attempts}  {row.kind}: {row.reason}"
        # reasons and kinds are job data: no control character reaches the terminal
        click.echo(printable(line))
    click.echo(f"{len(rows)} failed job(s)")


@failed.command("show")
@click.argument("job_id", callback=_job_id)
@click.option("--json", "as_json", is_flag=True, help="One JSON object for machines.")
def failed_show(job_id: str, as_json: bool) -> None:
    """Everything about one failed job: arguments, reason, traceback; exit 1 if it has not failed."""
    from workers.cli.failed import render_failed, show_failed

    details = _guard(lambda: show_failed(_primary(), job_id=job_id))
    if as_json:
        _echo_json(details)
    else:
        click.echo(render_failed(details))


@failed.command("requeue")
@click.argument("job_id", required=False, callback=_job_id)
@click.option("--all", "all_jobs", is_flag=True, help="Requeue every failed job (of --queue).")
@_QUEUE
def failed_requeue(job_id: str | None, all_jobs: bool, queue: str | None) -> None:
    """Put a failed job (or all of them) back on its queue."""
    from workers.cli.failed import requeue, requeue_all

    if bool(job_id) == all_jobs:
        raise click.UsageError("give either a JOB_ID or --all")
    if job_id:
        name, former = _guard(lambda: requeue(_primary(), job_id=job_id))
        fixed = f" (its origin was {former!r}: set to {name})" if former is not None else ""
        click.echo(f"requeued {job_id} on {name}{fixed}")
    else:
        ids = _guard(lambda: requeue_all(_primary(), queue=queue))
        click.echo(f"requeued {len(ids)} job(s)")


@failed.command("purge")
@_QUEUE
@click.option(
    "--older-than", default=None, help="Only jobs that failed longer ago than this (e.g. 7d, 12h, 30m)."
)
def failed_purge(queue: str | None, older_than: str | None) -> None:
    """Delete failed jobs for good."""
    from workers.cli.failed import purge

    seconds = parse_duration(older_than) if older_than else None
    ids = _guard(lambda: purge(_primary(), queue=queue, older_than_s=seconds))
    click.echo(f"purged {len(ids)} job(s)")


@main.command()
@click.argument("job_id", callback=_job_id)
@click.option("--watch", is_flag=True, help="Follow the job until it ends (a progress bar on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for machines.")
def job(job_id: str, watch: bool, as_json: bool) -> None:
    """Status of one job, with a progress bar while it runs and its result when done."""
    from workers.cli.jobview import describe_job, render_job
    from workers.cli.jobwatch import watch_job

    if watch and as_json:
        raise click.UsageError("--watch follows the job for a person; for machines, poll with --json")
    connection = _primary()
    if watch:
        _guard(lambda: watch_job(lambda: describe_job(connection, job_id=job_id), out=sys.stdout))
        return
    info = _guard(lambda: describe_job(connection, job_id=job_id))
    click.echo(json.dumps(info, indent=2, default=str) if as_json else render_job(info))


_DURATION = re.compile(r"([0-9]+)([smhd])")  # used with fullmatch: no trailing newline, ASCII digits
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'7d' -> 604800. Raises click.BadParameter for anything else."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h or 7d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _guard(call: Any) -> Any:
    """Operator mistakes (unknown id or queue) become one clean error line."""
    try:
        return call()
    except LookupError as exc:  # a KeyError's str() would quote the message
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc) or type(exc).__name__) from None


main.add_command(dev, name="up")  # the design's name for "bring the local stack up"
main.add_command(seed_demo)  # `python -m workers seed-demo`, defined next to the report code it feeds
