"""`python -m workers ...`: the operator CLI. Each command parses, builds settings, calls one function."""

from __future__ import annotations

import json
import sys

import click

from cache.errors import ConfigError
from cache.settings import get_settings


@click.group()
def main() -> None:
    """KRYONIX workers: operate queues, workers and the Redis services."""


def _settings_or_exit() -> None:
    try:
        get_settings()
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for machines.")
@click.option("--quiet", is_flag=True, help="Print nothing; only the exit code (for HEALTHCHECK).")
def status(as_json: bool, quiet: bool) -> None:
    """Health of both Redis roles (and queues, workers); exit 1 when unhealthy."""
    from workers import status as status_module

    _settings_or_exit()
    report = status_module.collect()
    ok = status_module.healthy(report)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    elif not quiet:
        click.echo(status_module.render(report))
    sys.exit(0 if ok else 1)


@main.command()
def dev() -> None:
    """Run the local stack (Redis roles, SMTP catcher) in the foreground until Ctrl-C."""
    from workers.localstack import run_local_stack

    run_local_stack()
