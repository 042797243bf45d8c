"""Operator commands behind `python -m workers`: status, failed jobs, backups, metrics, the dashboard."""

from workers.cli.main import main

__all__ = ["main"]
