"""One fact, one answer: where churn is no conversion within the horizon, the two models'
scores must agree, or the training run fails before registering either."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from training.config import BinaryModelSettings
from training.pipeline import (
    TrainingError,
    check_complements,
    labels_are_complements,
    mirror_of_churn,
)


def task(y: np.ndarray, p: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(plot_data={"y": y, "scores": {"lightgbm": p}})


def test_labels_that_sum_to_one_are_complements() -> None:
    rows = pd.DataFrame({"churn": [1, 0, 0, 1], "conversion": [0, 1, 1, 0]})
    assert labels_are_complements(rows)
    rows.loc[0, "conversion"] = 1  # churned and converted: two facts
    assert not labels_are_complements(rows)


def test_agreeing_scores_pass_and_disagreeing_ones_fail_the_run() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(int)
    churn = 1 / (1 + np.exp(-z))
    mirror = 1 - churn + rng.normal(0, 1e-4, 5000)  # the mirror fit: the same answer
    out = check_complements(task(y, churn), task(1 - y, mirror))  # type: ignore[arg-type]
    assert abs(out["complement_auc_gap"]) <= out["complement_auc_noise"]
    assert out["complement_mean_abs_gap"] < 1e-3
    worse = 1 / (1 + np.exp(-(z + rng.normal(0, 1.5, 5000))))  # a model that knows less
    with pytest.raises(TrainingError, match="disagree"):
        check_complements(task(y, churn), task(1 - y, 1 - worse))  # type: ignore[arg-type]


def test_the_mirror_swaps_the_directions_only() -> None:
    churn = BinaryModelSettings(
        feature_service="churn_v1", monotone_increasing=["days_*"], monotone_decreasing=["n_*"]
    )
    conversion = BinaryModelSettings(feature_service="conversion_v1", imbalance="none")
    m = mirror_of_churn(churn, conversion)
    assert m.feature_service == "conversion_v1"
    assert m.monotone_increasing == ["n_*"] and m.monotone_decreasing == ["days_*"]
    assert m.imbalance == churn.imbalance and m.calibration == churn.calibration
