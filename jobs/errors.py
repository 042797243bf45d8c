"""Errors of the job layer: refused input at enqueue, and how a job classifies its failure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cache.errors import KryonixError, RedisUnavailable


class JobError(KryonixError):
    """Base of the job layer's own errors."""


class JobValidationError(JobError, ValueError):
    """Input refused at enqueue; nothing was written to Redis."""


class EnqueueUnavailable(JobError, RedisUnavailable):
    """The PRIMARY Redis could not take the job (down, or full with noeviction)."""

    @classmethod
    def explain(cls, detail: str, *, action: str | None = None) -> str:
        return f"job not enqueued: {detail}"


class EnqueueNotDurable(EnqueueUnavailable):
    """A durable enqueue reached the primary but no replica confirmed it in time."""


class PermanentJobError(JobError):
    """Raise from a job when retrying cannot help (SMTP 5xx, invalid template, bad input).

    The job fails at once into the failed registry with this message as its reason.
    """


class TransientJobError(JobError):
    """Raise from a job when a retry may succeed (SMTP 4xx, timeouts, lost connections, deadlocks)."""


def refuse_extra_arguments(function: str, extra: Sequence[object], unknown: Mapping[str, object]) -> None:
    """Refuse arguments the enqueue API never passes (a job written into Redis by hand).

    Without this, Python's own TypeError would count as transient and be retried.

    Raises:
        PermanentJobError: naming the unexpected arguments.
    """
    if extra or unknown:
        raise PermanentJobError(
            f"{function} refused: unexpected argument(s) {len(extra)} positional, keyword {sorted(unknown)}"
        )
