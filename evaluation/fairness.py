"""Fairness audit of decisions across segment attributes (plan, region, segment, ...).

For each configured attribute and each of its groups: how many decisions, the share that sent
each action and any action (selection rate), the mean expected incremental value of what was
chosen, the mean churn risk, and calibration — the mean predicted conversion propensity against
the observed conversion rate. Per attribute, the **largest gap** between two groups of each
measure. Computed directly with pandas (fairlearn's MetricFrame computes the same per-group
metrics and ``difference()``; it is not a dependency of the project).

The audit is always reported; as a promotion check it is off unless asked for
(:class:`FairnessSettings`): a policy whose selection-rate gap or calibration gap exceeds its
bound is refused, with the attribute and the groups named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

NO_ACTION = "none"
Values = Sequence[Any] | pd.Series | np.ndarray


@dataclass(frozen=True)
class FairnessSettings:
    """Which attributes to audit and, when ``check`` is on, the largest gaps allowed."""

    attributes: tuple[str, ...] = ("segment", "plan", "region")
    check: bool = False
    max_selection_gap: float = 0.25  # share of decisions that send any action
    max_calibration_gap: float = 0.10  # |predicted - observed| conversion rate of a group

    def __post_init__(self) -> None:
        for name in ("max_selection_gap", "max_calibration_gap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fairness: {name} must be between 0 and 1, not {value}")


def fairness_table(
    groups: pd.DataFrame,
    actions: Values,
    incremental: Values | None = None,
    risk: Values | None = None,
    predicted: Values | None = None,
    observed: Values | None = None,
    min_decisions: int = 1,
) -> pd.DataFrame:
    """One row per (attribute, group): decisions, selection rates, incremental value, risk and
    calibration. ``groups`` has one column per attribute, one row per decision."""
    n = len(groups)
    data = pd.DataFrame({"action": np.asarray(actions, dtype=object)}, index=groups.index)
    data["any_action"] = (data["action"] != NO_ACTION).astype(float)
    for name, values in (
        ("incremental", incremental),
        ("risk", risk),
        ("predicted", predicted),
        ("observed", observed),
    ):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} rows, groups {n}")
        data[name] = np.nan if values is None else np.asarray(values, dtype=float)
    names = sorted(set(data["action"]) - {NO_ACTION})
    rows = []
    for attribute in groups.columns:
        keys = groups[attribute].fillna("unknown").astype(str)
        for group, part in data.groupby(keys, sort=True):
            if len(part) < min_decisions:
                continue
            row: dict[str, object] = {
                "attribute": attribute,
                "group": group,
                "decisions": len(part),
                "selection_rate": float(part["any_action"].mean()),
            }
            for a in names:
                row[f"share_{a}"] = float((part["action"] == a).mean())
            row["mean_incremental_value"] = _mean(part["incremental"])
            row["mean_risk"] = _mean(part["risk"])
            predicted_rate, observed_rate = _mean(part["predicted"]), _mean(part["observed"])
            row["predicted_conversion"] = predicted_rate
            row["observed_conversion"] = observed_rate
            row["calibration_gap"] = abs(predicted_rate - observed_rate)  # NaN if either is
            rows.append(row)
    return pd.DataFrame(rows)


def _mean(values: pd.Series) -> float:
    kept = values.dropna()
    return float(kept.mean()) if len(kept) else float("nan")


def largest_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """Per attribute, the largest difference between two groups of each measure (and which)."""
    measures = ["selection_rate", "mean_incremental_value", "mean_risk", "calibration_gap"]
    measures += [c for c in table.columns if str(c).startswith("share_")]
    rows = []
    for attribute, part in table.groupby("attribute", sort=False):
        for m in measures:
            values = part.set_index("group")[m].dropna() if m in part else pd.Series(dtype=float)
            if len(values) == 0:
                continue
            if m == "calibration_gap":  # the worst calibrated group's gap (0 is perfect)
                gap, high, low = float(values.max()), str(values.idxmax()), ""
            else:
                gap = float(values.max() - values.min())
                high, low = str(values.idxmax()), str(values.idxmin())
            rows.append(
                {"attribute": attribute, "measure": m, "gap": gap, "highest": high, "lowest": low}
            )
    return pd.DataFrame(rows, columns=["attribute", "measure", "gap", "highest", "lowest"])


def fairness_check(gaps: pd.DataFrame, settings: FairnessSettings) -> list[str]:
    """Why a policy fails the fairness check (empty: passes, or the check is off)."""
    if not settings.check:
        return []
    reasons = []
    for row in gaps.to_dict("records"):
        gap = float(row["gap"])
        attribute, highest, lowest = row["attribute"], row["highest"], row["lowest"]
        if row["measure"] == "selection_rate" and gap > settings.max_selection_gap:
            reasons.append(
                f"{attribute}: {highest} is contacted at a rate {gap:.0%} above "
                f"{lowest} (allowed: {settings.max_selection_gap:.0%})"
            )
        if row["measure"] == "calibration_gap" and gap > settings.max_calibration_gap:
            reasons.append(
                f"{attribute}: predicted conversion is off by {gap:.0%} for "
                f"{highest} (allowed: {settings.max_calibration_gap:.0%})"
            )
    return reasons
