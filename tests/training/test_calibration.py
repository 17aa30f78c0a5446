"""Calibrators keep the model's ranking (strictly increasing), are stored as JSON and move
their level when the latest matured labels say the base rate has moved."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.bundle import apply_binary_calibrator
from training.calibration import fit_binary_calibrator, fit_shift, relevel
from training.metrics import expected_calibration_error


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores of a class-weighted model (too high) and labels drawn from the truth."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.2, n)
    truth = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < truth).astype(float)
    raw = 1 / (1 + np.exp(-(0.7 * z + 1.0)))
    return raw, y


@pytest.mark.parametrize("method", ["auto", "isotonic", "platt", "beta"])
def test_distinct_scores_stay_distinct_and_the_ranking_is_kept(method: str) -> None:
    raw, y = scores(20_000, seed=1)
    spec = fit_binary_calibrator(raw, y, method)
    spec = json.loads(json.dumps(spec))  # what the bundle stores
    assert spec["method"] in {"isotonic_interpolated", "platt", "beta"}
    fresh, _ = scores(23_000, seed=2)
    p = apply_binary_calibrator(spec, fresh)
    assert len(np.unique(p)) == len(np.unique(fresh))  # no two customers merged
    order = np.argsort(fresh)
    assert np.all(np.diff(p[order]) >= 0)
    assert np.all(np.diff(p[order])[np.diff(fresh[order]) > 0] > 0)
    # the calibrated score ranks exactly as the raw one
    _, y2 = scores(23_000, seed=2)
    assert roc_auc_score(y2, p) == pytest.approx(roc_auc_score(y2, fresh), abs=1e-12)


def test_isotonic_beyond_the_fitted_range_keeps_increasing() -> None:
    raw, y = scores(2_000, seed=3)
    spec = fit_binary_calibrator(raw, y, "isotonic")
    outside = np.array([1e-9, 1e-7, 1e-5, 0.999, 0.99999, 0.9999999])
    p = apply_binary_calibrator(spec, outside)
    assert np.all(np.diff(p) > 0)


def test_calibration_brings_the_ece_down() -> None:
    raw, y = scores(20_000, seed=4)
    spec = fit_binary_calibrator(raw, y, "auto")
    fresh, y_fresh = scores(20_000, seed=5)
    before = expected_calibration_error(y_fresh, fresh)
    after = expected_calibration_error(y_fresh, apply_binary_calibrator(spec, fresh))
    assert before > 0.1
    assert after < 0.02


def test_relevel_moves_the_level_only_when_the_base_rate_moved() -> None:
    raw, y = scores(20_000, seed=6)
    spec = fit_binary_calibrator(raw, y, "platt")
    same = relevel(spec, raw[:3000], y[:3000], raw, y)
    assert same.get("shift", 0.0) == 0.0
    rng = np.random.default_rng(7)
    recent_raw, _ = scores(3000, seed=8)
    calibrated = apply_binary_calibrator(spec, recent_raw)
    odds = calibrated / (1 - calibrated) * 2.0  # the season doubles everyone's odds
    recent_y = (rng.random(3000) < odds / (1 + odds)).astype(float)
    moved = relevel(spec, recent_raw, recent_y, raw, y)
    assert moved["shift"] > 0.3
    p = apply_binary_calibrator(moved, recent_raw)
    assert p.mean() == pytest.approx(recent_y.mean(), abs=1e-6)
    assert expected_calibration_error(recent_y, p) < expected_calibration_error(
        recent_y, calibrated
    )
    assert np.all(np.diff(p[np.argsort(recent_raw)]) >= 0)  # a shift keeps the ranking


def test_fit_shift_matches_the_rate() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4])
    s = fit_shift(p, np.array([1, 1, 0, 1]))
    z = np.log(p / (1 - p)) + s
    assert np.mean(1 / (1 + np.exp(-z))) == pytest.approx(0.75)


def test_older_step_isotonic_bundles_still_apply() -> None:
    spec = {"method": "isotonic", "x": [0.1, 0.5, 0.9], "y": [0.0, 0.5, 1.0]}
    assert apply_binary_calibrator(spec, np.array([0.3]))[0] == pytest.approx(0.25)
