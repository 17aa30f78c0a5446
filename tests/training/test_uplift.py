"""The DR-learner on synthetic data with known heterogeneous effects and recorded propensities,
and the Qini computation on hand-made cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.metrics import qini_coefficient
from training.uplift import CONTROL, DoublyRobustUplift, UpliftData, evaluate_uplift


def synthetic(n: int, seed: int) -> tuple[UpliftData, np.ndarray]:
    """Action ``help`` adds +2 log-odds of converting for segment ``a`` only; ``noop`` nothing."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    seg = rng.choice(["a", "b"], size=n)
    # the logging policy favours "help" for high x1 (confounding handled by propensities)
    p_help = np.where(x1 > 0, 0.5, 0.2)
    p_noop = np.full(n, 0.2)
    u = rng.random(n)
    arm = np.where(u < p_help, "help", np.where(u < p_help + p_noop, "noop", CONTROL))
    prop = np.where(arm == "help", p_help, np.where(arm == "noop", p_noop, np.nan))
    effect = np.where(seg == "a", 2.0, 0.0)
    logit = -0.5 + x1 + np.where(arm == "help", effect, 0.0)
    convert = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    churn = (rng.random(n) < 0.2).astype(np.int64)
    frame = pd.DataFrame({"x1": x1, "segment": seg})
    data = UpliftData(
        frame,
        arm,
        prop,
        {"convert": convert, "churn": churn},
        np.array([f"c{i}" for i in range(n)]),
    )
    return data, seg


@pytest.fixture(scope="module")
def fitted() -> tuple[DoublyRobustUplift, UpliftData, np.ndarray]:
    train, _ = synthetic(8000, 0)
    val, _ = synthetic(3000, 1)
    test, seg = synthetic(3000, 2)
    model = DoublyRobustUplift(
        ["x1", "segment"],
        ["segment"],
        params={"learning_rate": 0.1, "num_leaves": 7, "min_data_in_leaf": 100},
        num_boost_round=200,
        early_stopping_rounds=20,
        num_threads=2,
    ).fit(train, val)
    return model, test, seg


def test_recovers_who_responds(fitted: tuple[DoublyRobustUplift, UpliftData, np.ndarray]) -> None:
    model, test, seg = fitted
    assert model.actions_ == ["help", "noop"]
    effects = model.predict_effects(test.frame)["convert"]
    help_a = effects[seg == "a", 0].mean()
    help_b = effects[seg == "b", 0].mean()
    assert help_a > 0.2  # about +0.3 in probability in this world
    assert abs(help_b) < 0.1
    assert abs(effects[:, 1].mean()) < 0.08  # noop does nothing


def test_qini_on_held_out_units_is_positive(
    fitted: tuple[DoublyRobustUplift, UpliftData, np.ndarray],
) -> None:
    model, test, _ = fitted
    metrics = evaluate_uplift(model, test)
    assert metrics["qini_convert_help"] > 0.02
    assert metrics["qini_convert"] > 0


def test_qini_of_a_perfect_ranking_beats_random_and_reversed() -> None:
    n = 1000
    treated = np.arange(n) % 2 == 0
    responder = np.arange(n) < 300  # treatment works for the first 300 only
    y = (treated & responder).astype(float)
    w = np.full(n, 2.0)
    good, _ = qini_coefficient(responder.astype(float), treated, y, w)
    bad, _ = qini_coefficient(-responder.astype(float), treated, y, w)
    flat, _ = qini_coefficient(np.random.default_rng(0).random(n), treated, y, w)
    assert good > flat > bad
    assert abs(flat) < 0.03
