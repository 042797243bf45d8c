"""The pure helpers of `python -m bench peers`: targets, installed systems, worker env, and bench all."""

from __future__ import annotations

import pytest

from bench import peer_targets as t

RATES = {"ours": 100.0, "rq-worker": 10.0, "dramatiq": 150.0, "celery": 80.0, "huey": 50.0}


@pytest.mark.parametrize(
    ("value", "baseline", "expected"),
    [(100.0, 50.0, 2.0), (1.0, 3.0, 0.333), (5.0, 0.0, None)],
)
def test_ratio_is_value_over_baseline_and_none_without_a_baseline(
    value: float, baseline: float, expected: float | None
) -> None:
    assert t.ratio(value, baseline) == expected


def test_the_best_peer_is_a_peer_never_ours_or_rq() -> None:
    assert t.best_peer({"ours": 1e9, "rq-worker": 1e9, "celery": 1.0, "huey": 2.0}) == "huey"
    assert t.best_peer({"ours": 1.0, "rq-simpleworker": 2.0}) is None


def test_the_best_peer_for_a_count_is_the_lowest() -> None:
    assert t.best_peer({"ours": 40.0, "dramatiq": 6.0, "huey": 3.0}, better="lower") == "huey"


@pytest.mark.parametrize(
    ("target", "measured", "status"),
    [
        (t.Target(t.BEST_PEER, 1.0), 0.667, "missed"),
        (t.Target("celery", 1.0), 1.25, "met"),
        (t.Target("dramatiq", 0.5), 0.667, "met"),
        (t.Target(t.ABSOLUTE, 100.0), 100.0, "met"),
        (t.Target(t.ABSOLUTE, 20.0, better="lower"), 100.0, "missed"),
    ],
)
def test_check_compares_the_ratio_or_the_figure_with_the_bound(
    target: t.Target, measured: float, status: str
) -> None:
    result = t.check(target, RATES["ours"], RATES)
    assert (result["measured"], result["status"]) == (measured, status)


def test_check_reports_the_stretch_separately() -> None:
    result = t.check(t.Target("dramatiq", 0.5, stretch=1.0), RATES["ours"], RATES)
    assert (result["status"], result["stretch_status"]) == ("met", "missed")


def test_a_target_naming_a_system_that_did_not_run_is_not_measured() -> None:
    assert t.check(t.Target("celery", 1.0), 100.0, {"ours": 100.0})["status"] == "not measured"
    assert t.check(t.Target(t.BEST_PEER, 1.0), 100.0, {"ours": 100.0})["status"] == "not measured"


def test_comparison_carries_every_ratio_the_best_peer_and_whether_all_targets_are_met() -> None:
    line = t.comparison(RATES, t.NOOP_TARGETS)
    assert line["best_peer"] == "dramatiq"
    assert (line["value"], line["baseline"], line["ratio"]) == (100.0, 150.0, 0.667)
    assert line["ratios"] == {"rq-worker": 10.0, "dramatiq": 0.667, "celery": 1.25, "huey": 2.0}
    assert [x["status"] for x in line["targets"]] == ["met", "met"]
    assert line["targets_met"] is True


def test_comparison_without_peers_has_no_baseline_and_unmeasured_targets() -> None:
    line = t.comparison({"ours": 5.0, "rq-worker": 1.0}, t.RELAY_TARGETS)
    assert (line["baseline"], line["ratio"], line["targets_met"]) == (None, None, False)


def test_without_the_bench_extra_every_peer_is_a_skipped_line_and_ours_still_runs() -> None:
    from bench.peer_systems import SYSTEMS, installed

    present, skipped = installed(SYSTEMS, lambda module: False)
    assert [s.name for s in present] == ["ours", "rq-simpleworker", "rq-worker"]
    assert [line["metric"] for line in skipped] == ["peer_dramatiq", "peer_celery", "peer_huey", "peer_arq"]
    assert all(line["skipped"] for line in skipped)


class _FakeSink:
    class _Value:
        value = 0

    def __init__(self, received: int) -> None:
        self.received = self._Value()
        self.received.value = received


def test_wait_deliveries_ends_once_all_are_seen() -> None:
    from bench.peer_workloads import wait_deliveries

    _rate, seen, complete = wait_deliveries(_FakeSink(50), 50, budget_s=5.0)
    assert (seen, complete) == (50, True)


def test_our_workers_get_the_email_concurrency_knobs_and_the_peers_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.common import worker_env

    monkeypatch.setenv("EMAIL_CONCURRENCY", "8")
    monkeypatch.setenv("SMTP_MAX_CONNECTIONS", "4")
    monkeypatch.setenv("SMTP_HOST", "mail.example.com")
    ours = worker_env("redis://127.0.0.1:1/0", ours=True, smtp_port=25)
    assert (ours["EMAIL_CONCURRENCY"], ours["SMTP_MAX_CONNECTIONS"], ours["SMTP_HOST"]) == (
        "8",
        "4",
        "127.0.0.1",
    )
    assert (
        worker_env("redis://x", ours=True, overrides={"EMAIL_CONCURRENCY": "64"})["EMAIL_CONCURRENCY"] == "64"
    )
    peer = worker_env("redis://x", ours=False, overrides={"EMAIL_CONCURRENCY": "64"})
    assert "EMAIL_CONCURRENCY" not in peer and "SMTP_MAX_CONNECTIONS" not in peer


def test_bench_all_runs_the_peers_but_not_the_soak() -> None:
    from bench.__main__ import NOT_IN_ALL, available

    assert {"peers", "soak"} <= set(available())
    assert "peers" not in NOT_IN_ALL and "soak" in NOT_IN_ALL
