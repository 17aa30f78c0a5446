"""The fairness audit on a small case computed by hand, and the promotion check."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from evaluation.fairness import FairnessSettings, fairness_check, fairness_table, largest_gaps

# six decisions: plan basic x3, premium x3
GROUPS = pd.DataFrame({"plan": ["basic", "basic", "basic", "premium", "premium", "premium"]})
ACTIONS = ["email", "none", "none", "email", "call", "email"]
INCREMENTAL = [2.0, 0.0, 0.0, 4.0, 10.0, 4.0]
RISK = [0.2, 0.4, 0.6, 0.1, 0.8, 0.3]
PREDICTED = [0.5, 0.5, 0.2, 0.3, 0.3, 0.3]
OBSERVED = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_per_group_measures_match_the_hand_computed_values() -> None:
    table = fairness_table(GROUPS, ACTIONS, INCREMENTAL, RISK, PREDICTED, OBSERVED)
    basic = table.set_index("group").loc["basic"]
    premium = table.set_index("group").loc["premium"]
    assert basic["decisions"] == 3 and premium["decisions"] == 3
    # basic: one of three sent something; premium: all three
    assert basic["selection_rate"] == pytest.approx(1 / 3)
    assert premium["selection_rate"] == pytest.approx(1.0)
    assert basic["share_email"] == pytest.approx(1 / 3) and basic["share_call"] == 0.0
    assert premium["share_email"] == pytest.approx(2 / 3)
    assert premium["share_call"] == pytest.approx(1 / 3)
    assert basic["mean_incremental_value"] == pytest.approx(2 / 3)
    assert premium["mean_incremental_value"] == pytest.approx(6.0)
    assert basic["mean_risk"] == pytest.approx(0.4)
    # calibration: predicted 0.4 vs observed 1/3 (basic); 0.3 vs 1/3 (premium)
    assert basic["calibration_gap"] == pytest.approx(0.4 - 1 / 3)
    assert premium["calibration_gap"] == pytest.approx(1 / 3 - 0.3)
    gaps = largest_gaps(table).set_index("measure")
    assert gaps.loc["selection_rate", "gap"] == pytest.approx(2 / 3)
    assert gaps.loc["selection_rate", "highest"] == "premium"
    assert gaps.loc["selection_rate", "lowest"] == "basic"
    assert gaps.loc["mean_incremental_value", "gap"] == pytest.approx(6.0 - 2 / 3)
    assert gaps.loc["calibration_gap", "gap"] == pytest.approx(0.4 - 1 / 3)


def test_the_check_is_off_unless_asked_and_names_the_groups() -> None:
    gaps = largest_gaps(fairness_table(GROUPS, ACTIONS, None, None, PREDICTED, OBSERVED))
    assert fairness_check(gaps, FairnessSettings()) == []
    reasons = fairness_check(gaps, FairnessSettings(check=True, max_selection_gap=0.5))
    assert len(reasons) == 1
    assert "plan: premium is contacted at a rate 67% above basic" in reasons[0]
    strict = fairness_check(gaps, FairnessSettings(check=True, max_calibration_gap=0.05))
    assert any("predicted conversion is off by 7%" in r for r in strict)
    with pytest.raises(ValueError, match="max_selection_gap"):
        FairnessSettings(max_selection_gap=1.5)


def test_missing_measures_stay_missing() -> None:
    table = fairness_table(GROUPS, ACTIONS)
    assert table["mean_risk"].map(math.isnan).all()
    assert set(largest_gaps(table)["measure"]) >= {"selection_rate", "share_email"}
    with pytest.raises(ValueError, match="risk has 2 rows"):
        fairness_table(GROUPS, ACTIONS, risk=[0.1, 0.2])
