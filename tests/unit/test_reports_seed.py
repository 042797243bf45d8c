"""Demo data generation: deterministic, sized as asked, consistent (marker `reports`)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest

from jobs.reports.seed import ACTIONS, DemoData, SeedPlan

pytestmark = pytest.mark.reports

UNTIL = dt.date(2026, 1, 31)


def _generate(plan: SeedPlan) -> dict[str, list[dict[str, Any]]]:
    data = DemoData(plan)
    # The order matters: activity refers to the users and projects generated before it.
    return {
        "companies": list(data.companies()),
        "projects": list(data.projects()),
        "users": list(data.users()),
        "activity": list(data.activity()),
    }


def test_same_seed_same_data_other_seed_other_data() -> None:
    plan = SeedPlan(companies=5, users=40, days=10, activity=150, seed=7, until=UNTIL)
    assert _generate(plan) == _generate(plan)
    other = _generate(SeedPlan(companies=5, users=40, days=10, activity=150, seed=8, until=UNTIL))
    assert other["users"] != _generate(plan)["users"]


def test_sizes_references_and_uniqueness() -> None:
    plan = SeedPlan(companies=20, users=300, days=30, activity=2_000, until=UNTIL)
    data = _generate(plan)
    assert len(data["companies"]) == 20 and len(data["users"]) == 300 and len(data["activity"]) == 2_000
    company_ids = {c["id"] for c in data["companies"]}
    project_company = {p["id"]: p["company_id"] for p in data["projects"]}
    user_company = {u["id"]: u["company_id"] for u in data["users"]}
    assert set(project_company.values()) == company_ids, "every company has projects"
    assert len({u["email"] for u in data["users"]}) == 300
    keys = Counter((a["user_id"], a["action"], a["day"]) for a in data["activity"])
    assert max(keys.values()) == 1, "one rollup row per user, action and day"
    for row in data["activity"]:
        assert row["company_id"] == user_company[row["user_id"]]
        assert row["project_id"] is None or project_company[row["project_id"]] == row["company_id"]
        assert UNTIL - dt.timedelta(days=29) <= row["day"] <= UNTIL
        assert row["action"] in ACTIONS and 1 <= row["count"] <= 500
    per_day = Counter(a["day"] for a in data["activity"])
    assert len(per_day) == 30 and set(per_day.values()) <= {66, 67}, "spread evenly over the days"
    assert any("," in c["name"] or '"' in c["name"] for c in data["companies"]), "names that need escaping"


def test_ids_continue_after_existing_rows() -> None:
    plan = SeedPlan(companies=2, users=3, days=2, activity=4, until=UNTIL)
    data = DemoData(plan, {"companies": 10, "projects": 100, "users": 1000, "activity": 5})
    assert [c["id"] for c in data.companies()] == [11, 12]
    assert min(p["id"] for p in data.projects()) == 101
    assert [u["id"] for u in data.users()] == [1001, 1002, 1003]
    assert [a["id"] for a in data.activity()] == [6, 7, 8, 9]


def test_default_activity_is_half_a_row_per_user_and_day() -> None:
    assert SeedPlan(users=100, days=30, until=UNTIL).activity_rows == 1_500


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"users": 0}, "users must be between 1 and 50,000,000, got 0"),
        ({"companies": 0}, "companies must be between 1 and 1,000,000, got 0"),
        ({"days": 0}, "days must be between 1 and 3660, got 0"),
        (
            {"users": 2, "days": 1, "activity": 15},
            "activity must be between 0 and users x actions x days = 14",
        ),
        ({"activity": -1}, "activity must be between 0"),
    ],
)
def test_bad_plans_are_refused(kwargs: dict[str, Any], expected: str) -> None:
    plan = SeedPlan(until=UNTIL, **kwargs)
    with pytest.raises(ValueError) as info:
        plan.check()
    assert expected in str(info.value)
