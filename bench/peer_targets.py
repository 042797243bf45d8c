"""The targets of `python -m bench peers` and the pure arithmetic that checks them.

A workload's line carries ours, every system's figure, ours against each system and
against the best peer, and each target with `met` / `missed`. No I/O here: the bench
passes in the medians it measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PEERS = ("dramatiq", "celery", "huey")  # the other job systems; RQ's own workers are not peers
BEST_PEER = "best_peer"
ABSOLUTE = "absolute"  # a bound on ours alone, not a ratio

# The targets. Ratios are ours / theirs (higher is better) unless `better` is "lower".
RELAY_VS_BEST_PEER = 1.0  # emails/s via the 100 ms relay, one job per email
BULK_RELAY_VS_BEST_PEER = 1.0  # the same emails as one bulk send, against the best peer's one-job-per-email
SINK_VS_CELERY = 1.0  # emails/s via the 0 ms sink (CPU-bound)
NOOP_VS_CELERY = 1.0  # no-op jobs/s
NOOP_VS_DRAMATIQ = 0.5
NOOP_VS_DRAMATIQ_STRETCH = 1.0
MAX_COMMANDS_PER_NOOP_JOB = 20.0  # Redis commands per no-op job (INFO commandstats)
MAX_DUPLICATES = 0  # repeated deliveries to one recipient, every email workload


@dataclass(frozen=True)
class Target:
    against: str  # a system name, BEST_PEER, or ABSOLUTE
    bound: float
    better: str = "higher"  # "higher": measured >= bound; "lower": measured <= bound
    stretch: float | None = None


RELAY_TARGETS = (Target(BEST_PEER, RELAY_VS_BEST_PEER),)
BULK_TARGETS = (Target(BEST_PEER, BULK_RELAY_VS_BEST_PEER),)
SINK_TARGETS = (Target("celery", SINK_VS_CELERY),)
NOOP_TARGETS = (
    Target("celery", NOOP_VS_CELERY),
    Target("dramatiq", NOOP_VS_DRAMATIQ, stretch=NOOP_VS_DRAMATIQ_STRETCH),
)
COMMANDS_TARGETS = (Target(ABSOLUTE, MAX_COMMANDS_PER_NOOP_JOB, better="lower"),)
DUPLICATES_TARGET = Target(ABSOLUTE, MAX_DUPLICATES, better="lower")


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, rounded; None where the baseline is 0 (nothing to compare with)."""
    return round(value / baseline, 3) if baseline else None


def best_peer(values: Mapping[str, float], *, better: str = "higher") -> str | None:
    """The peer with the best figure (highest rate, or lowest count); None if no peer ran."""
    peers = [name for name in values if name in PEERS]
    if not peers:
        return None
    return max(peers, key=values.__getitem__) if better == "higher" else min(peers, key=values.__getitem__)


def _reached(measured: float, bound: float, better: str) -> bool:
    return measured >= bound if better == "higher" else measured <= bound


def check(target: Target, ours: float, values: Mapping[str, float]) -> dict[str, Any]:
    """One target's verdict: `met`, `missed`, or `not measured` (the system it names did not run).

    `values` are every system's figures (ours included); the ratio is ours over the named one.
    """
    against = target.against
    result: dict[str, Any] = {"against": against, "bound": target.bound, "better": target.better}
    if against == ABSOLUTE:
        measured: float | None = ours
    else:
        name = best_peer(values) if against == BEST_PEER else against
        measured = ratio(ours, values[name]) if name is not None and name in values else None
        if against == BEST_PEER:
            result["best_peer"] = name
    if measured is None:
        return {**result, "measured": None, "status": "not measured"}
    result.update(
        measured=measured, status="met" if _reached(measured, target.bound, target.better) else "missed"
    )
    if target.stretch is not None:
        result["stretch"] = target.stretch
        result["stretch_status"] = "met" if _reached(measured, target.stretch, target.better) else "missed"
    return result


def comparison(
    values: Mapping[str, float], targets: Sequence[Target], *, ours: str = "ours", better: str = "higher"
) -> dict[str, Any]:
    """The fields every peers line carries: ours against each system and the best peer, the targets.

    Returns:
        `{"value", "baseline" (the best peer's), "ratio" (against it), "best_peer", "ratios",
        "systems", "targets", "targets_met"}`; `ratio` and `baseline` are None without peers.
    """
    mine = values[ours]
    best = best_peer(values, better=better)
    baseline = values[best] if best is not None else None
    checked = [check(target, mine, values) for target in targets]
    return {
        "value": round(mine, 3),
        "baseline": round(baseline, 3) if baseline is not None else None,
        "ratio": ratio(mine, baseline) if baseline is not None else None,
        "best_peer": best,
        "ratios": {name: ratio(mine, value) for name, value in values.items() if name != ours},
        "systems": {name: round(value, 3) for name, value in values.items()},
        "targets": checked,
        "targets_met": all(t["status"] == "met" for t in checked),
    }
