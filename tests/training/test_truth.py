"""Comparison of test-period predictions with a simulator's true probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.truth import Truth, compare_with_truth


def _world(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, Truth]:
    """Two cutoffs with very different base rates; labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    n = 4000
    cutoffs = pd.to_datetime(["2025-09-10", "2025-11-05"], utc=True)
    cutoff = np.repeat(cutoffs, n)
    risk = rng.normal(size=2 * n)
    level = np.repeat([-1.5, 1.5], n)  # the season: a low and a high base rate
    p_true = 1 / (1 + np.exp(-(level + 2 * risk)))
    y = (rng.random(2 * n) < p_true).astype(np.int64)
    ids = [f"C{i:05d}" for i in range(n)] * 2
    rows = pd.DataFrame({"customer_id": ids, "cutoff": cutoff})
    truth = Truth(rows.assign(p_churn=p_true, p_convert=p_true), None)
    return rows, y, truth


def test_gap_splits_into_within_and_between_cutoffs() -> None:
    rows, y, truth = _world()
    p_true = truth.customers["p_convert"].to_numpy()
    # ranks every cutoff as well as the truth but misses the level of each cutoff
    level = np.where(rows["cutoff"] == rows["cutoff"].min(), -1.5, 1.5)
    p_blind = 1 / (1 + np.exp(-(np.log(p_true / (1 - p_true)) - level)))
    m = compare_with_truth(rows, p_blind, y, truth, "conversion")
    assert m["auc_gap_to_truth_within_cutoffs"] == pytest.approx(0.0, abs=1e-9)
    assert m["auc_gap_to_truth_between_cutoffs"] > 0.02
    assert m["auc_gap_to_truth_within_cutoffs"] + m[
        "auc_gap_to_truth_between_cutoffs"
    ] == pytest.approx(m["auc_gap_to_truth"])
    exact = compare_with_truth(rows, p_true, y, truth, "conversion")
    assert exact["auc_gap_to_truth"] == pytest.approx(0.0, abs=1e-12)
    assert exact["auc_gap_to_truth_between_cutoffs"] == pytest.approx(0.0, abs=1e-12)


def test_noisy_ranking_shows_as_a_within_cutoff_gap() -> None:
    rows, y, truth = _world(1)
    p_true = truth.customers["p_churn"].to_numpy()
    noisy = np.clip(p_true + np.random.default_rng(2).normal(0, 0.25, len(p_true)), 0, 1)
    m = compare_with_truth(rows, noisy, y, truth, "churn")
    assert m["auc_gap_to_truth_within_cutoffs"] > 0.02
    assert m["auc_gap_to_truth"] > 0.02


def test_one_cutoff_has_no_decomposition() -> None:
    rows, y, truth = _world()
    first = (rows["cutoff"] == rows["cutoff"].min()).to_numpy()
    m = compare_with_truth(rows[first], y[first] * 0.5 + 0.25, y[first], truth, "churn")
    assert "auc_gap_to_truth" in m
    assert "auc_gap_to_truth_within_cutoffs" not in m
    assert "auc_gap_to_truth_between_cutoffs" not in m
