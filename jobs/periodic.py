"""Periodic jobs, declared in one place; `python -m workers scheduler` runs them.

Each definition fires once per slot (a cron time or an interval boundary), even with
several scheduler processes: the run's job id is derived from the slot and enqueued
with RQ's atomic unique enqueue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from jobs.allowlist import resolve
from jobs.errors import JobError
from jobs.queues import spec_for


class InvalidPeriodic(JobError, ValueError):
    """A periodic definition that cannot be scheduled; the message names it and the field."""


@dataclass(frozen=True, kw_only=True)
class Periodic:
    """Run `func(*args, **kwargs)` on `queue` every `cron` (UTC) or every `every_s` seconds."""

    name: str
    func: str
    queue: str
    cron: str | None = None
    every_s: int | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_s is None):
            raise InvalidPeriodic(f"periodic {self.name!r}: give exactly one of cron= or every_s=")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise InvalidPeriodic(f"periodic {self.name!r}: invalid cron expression {self.cron!r}")
        if self.every_s is not None and self.every_s < 1:
            raise InvalidPeriodic(f"periodic {self.name!r}: every_s must be >= 1")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise InvalidPeriodic(f"periodic {self.name!r}: name must be letters, digits, '-' and '_'")
        spec_for(self.queue)
        resolve(self.func)

    @property
    def job_id(self) -> str:
        return f"periodic-{self.name}"

    def next_slot(self, after: float) -> int:
        """The first slot (unix seconds) strictly after `after`; pure, so every scheduler agrees."""
        if self.every_s is not None:
            return (int(after) // self.every_s + 1) * self.every_s
        assert self.cron is not None
        start = dt.datetime.fromtimestamp(int(after), dt.UTC)
        return int(croniter(self.cron, start).get_next(float))

    def run_id(self, slot: int) -> str:
        return f"{self.job_id}-{slot}"


# The platform's periodic jobs that need no configuration. Scheduled reports are added
# here with `jobs.reports.scheduled_report(...)`.
PERIODIC: tuple[Periodic, ...] = ()


def declared() -> tuple[Periodic, ...]:
    """Everything the scheduler runs: `PERIODIC`, plus the failed-jobs digest when OPS_EMAIL is set."""
    from cache.settings import get_settings

    operators = get_settings().ops_emails
    if not operators:
        return PERIODIC
    digest = Periodic(
        name="failed-jobs-digest",
        func="jobs.email.digest.send_failed_jobs_digest",
        queue="email",
        cron="0 7 * * *",
        args=(list(operators),),
    )
    return (*PERIODIC, digest)
