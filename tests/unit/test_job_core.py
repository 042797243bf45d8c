"""Pure parts of the job core: serializer, backoff, allow-list, periodic slots."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from jobs.allowlist import JobNotAllowed, function_name, resolve
from jobs.diagnostics import noop
from jobs.enqueue import idempotent_job_id, retry_for
from jobs.errors import JobValidationError
from jobs.periodic import Periodic
from jobs.retry import RetryPolicy
from jobs.serialization import UnserializableArgument, dumps, loads

# --- serializer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 25, 12, 30, 1, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 25, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.datetime(2026, 11, 25, 12, 30),
        dt.date(2026, 2, 28),
        UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1234567890.000000000001"),
        {"nested": [dt.date(2026, 1, 1), {"id": uuid4()}], "n": None, "b": True, "f": 1.5},
        "üñíçødé ✓",
    ],
)
def test_values_round_trip_exactly(value: object) -> None:
    decoded = loads(dumps(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_aware_datetime_keeps_offset() -> None:
    value = dt.datetime(2026, 1, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert loads(dumps(value)).utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_scalar_dict_keys_become_strings_as_in_json() -> None:
    assert loads(dumps({1: "a", None: "b"})) == {"1": "a", "null": "b"}


def test_tuples_become_lists() -> None:
    assert loads(dumps(("a", 1))) == ["a", 1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (object(), "builtins.object"),
        ({1, 2}, "builtins.set"),
        (b"bytes", "builtins.bytes"),
        (float("nan"), "cannot be sent"),
        (Decimal("NaN"), "not finite"),
        ({(1, 2): "tuple key"}, "cannot be sent"),
    ],
)
def test_unserializable_values_are_refused(value: object, expected: str) -> None:
    with pytest.raises(UnserializableArgument) as info:
        dumps({"arg": value})
    assert expected in str(info.value)


def test_plain_dict_that_looks_tagged_but_unknown_is_kept() -> None:
    assert loads(dumps({"__kx__": "other", "v": 1})) == {"__kx__": "other", "v": 1}


# --- backoff --------------------------------------------------------------------------


def test_backoff_ceilings_grow_to_the_cap() -> None:
    policy = RetryPolicy(attempts=10, base_s=10, factor=2, cap_s=3600)
    ceilings = [policy.ceiling(n) for n in range(10)]
    assert ceilings[:4] == [10, 20, 40, 80]
    assert all(a <= b for a, b in itertools.pairwise(ceilings))
    assert max(ceilings) == 3600


@pytest.mark.parametrize("seed", range(20))
def test_backoff_stays_within_full_jitter_bounds(seed: int) -> None:
    policy = RetryPolicy(attempts=8, base_s=10, factor=2, cap_s=300)
    rng = random.Random(seed)
    for n in range(8):
        wait = policy.backoff(n, rng)
        assert 1 <= wait <= policy.ceiling(n)


def test_backoff_uses_the_whole_window() -> None:
    policy = RetryPolicy(attempts=1, base_s=100, factor=2, cap_s=100)
    rng = random.Random(1)
    waits = [policy.backoff(0, rng) for _ in range(500)]
    assert min(waits) < 10 and max(waits) > 90  # full jitter, not "base plus a little"


def test_retry_for_draws_one_interval_per_attempt() -> None:
    retry = retry_for(RetryPolicy(attempts=5, base_s=10, factor=2, cap_s=3600), random.Random(3))
    assert retry is not None
    assert retry.max == 5
    assert len(retry.intervals) == 5
    assert all(1 <= wait <= 10 * 2**n for n, wait in enumerate(retry.intervals))


def test_no_retry_policy_gives_no_rq_retry() -> None:
    assert retry_for(RetryPolicy(attempts=0)) is None


@pytest.mark.parametrize(
    "kwargs", [{"attempts": -1}, {"base_s": 0}, {"factor": 0.5}, {"base_s": 10, "cap_s": 5}]
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# --- allow-list -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("os.system", "not on the allow-list"),
        ("builtins.eval", "not on the allow-list"),
        ("subprocess.run", "not on the allow-list"),
        ("jobsx.evil", "not on the allow-list"),
        ("jobs.diagnostics.time.sleep", "no module 'jobs.diagnostics.time'"),
        ("jobs.diagnostics.primary", "not a function defined in"),
        ("jobs.diagnostics._private", "private"),
        ("jobs.nothere.func", "no module"),
        ("jobs.diagnostics.missing", "not a function defined in"),
        ("eval", "dotted name"),
        ("jobs.diagnostics.noop; rm -rf /", "dotted name"),
        ("", "dotted name"),
    ],
)
def test_allow_list_refuses(name: str, expected: str) -> None:
    with pytest.raises(JobNotAllowed) as info:
        resolve(name)
    assert expected in str(info.value)


def test_allow_list_resolves_job_functions() -> None:
    assert resolve("jobs.diagnostics.noop") is noop
    assert function_name(noop) == "jobs.diagnostics.noop"


def test_function_objects_outside_jobs_are_refused() -> None:
    import os

    with pytest.raises(JobNotAllowed):
        function_name(os.system)


# --- idempotency ids ------------------------------------------------------------------


def test_idempotent_job_id_is_stable_and_per_queue() -> None:
    assert idempotent_job_id("email", "welcome:42") == idempotent_job_id("email", "welcome:42")
    assert idempotent_job_id("email", "welcome:42") != idempotent_job_id("report", "welcome:42")
    assert idempotent_job_id("email", "welcome:42") != idempotent_job_id("email", "welcome:43")


@pytest.mark.parametrize("key", ["", "   ", "x" * 257])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(JobValidationError):
        idempotent_job_id("email", key)


# --- periodic slots ---------------------------------------------------------------------


def test_interval_slots_are_aligned_and_strictly_after() -> None:
    periodic = Periodic(name="p", func="jobs.diagnostics.noop", queue="email", every_s=10)
    assert periodic.next_slot(100) == 110
    assert periodic.next_slot(109.9) == 110
    assert periodic.next_slot(110) == 120


def test_cron_slots() -> None:
    periodic = Periodic(name="daily", func="jobs.diagnostics.noop", queue="email", cron="0 8 * * *")
    start = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC).timestamp()
    expected = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC).timestamp()
    assert periodic.next_slot(start) == expected
    assert periodic.next_slot(expected) == expected + 86400


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"cron": "not a cron"}, "invalid cron"),
        ({}, "exactly one"),
        ({"cron": "* * * * *", "every_s": 5}, "exactly one"),
        ({"every_s": 0}, "every_s"),
        ({"every_s": 5, "func": "os.system"}, "allow-list"),
        ({"every_s": 5, "queue": "nope"}, "unknown queue"),
        ({"every_s": 5, "name": "bad name!"}, "name must be"),
    ],
)
def test_bad_periodic_definitions(kwargs: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {"name": "p", "func": "jobs.diagnostics.noop", "queue": "email"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=expected):
        Periodic(**args)  # type: ignore[arg-type]


def test_duration_parser() -> None:
    import click

    from workers.cli.main import parse_duration

    assert parse_duration("7d") == 604800
    assert parse_duration("30m") == 1800
    with pytest.raises(click.BadParameter):
        parse_duration("soon")


def test_email_policy_survives_a_thirty_second_outage() -> None:
    """With full jitter some waits are short; the budget must still outlast a 30 s outage."""
    from jobs.queues import EMAIL

    rng = random.Random(7)
    trials = 20_000
    exhausted = 0
    for _ in range(trials):
        total = sum(EMAIL.retry.backoff(n, rng) for n in range(EMAIL.retry.attempts))
        exhausted += total < 30
    assert exhausted == 0


def test_digest_is_scheduled_only_when_operators_are_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from cache.settings import reset_settings
    from jobs.periodic import declared

    monkeypatch.delenv("OPS_EMAIL", raising=False)
    reset_settings()
    assert all(p.name != "failed-jobs-digest" for p in declared())
    monkeypatch.setenv("OPS_EMAIL", "ops@example.com, oncall@example.com")
    reset_settings()
    try:
        [digest] = [p for p in declared() if p.name == "failed-jobs-digest"]
        assert digest.args == (["ops@example.com", "oncall@example.com"],)
    finally:
        reset_settings()
