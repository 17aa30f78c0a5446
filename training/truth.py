"""Scoring models against a simulator's ground truth (``journeyml simulate`` writes ``truth/``).

Only simulated data has truth: the true probability of each label at a few cutoffs for a sample
of active customers (``customers.parquet``) and the true effect of each action
(``effects.parquet``). These functions compare a model's test-period predictions with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from training.metrics import expected_calibration_error

TRUTH_COLUMN = {"churn": "p_churn", "conversion": "p_convert"}


@dataclass(frozen=True)
class Truth:
    """Ground truth of a simulated world, keyed by (customer_id, cutoff)."""

    customers: pd.DataFrame
    effects: pd.DataFrame | None


def load_truth(folder: str | Path) -> Truth | None:
    """Reads ``truth/customers.parquet`` (and ``effects.parquet``); None when absent."""
    folder = Path(folder)
    path = folder / "customers.parquet"
    if not path.is_file():
        return None
    customers = pd.read_parquet(path)
    customers["cutoff"] = pd.to_datetime(customers["cutoff"], utc=True)
    customers["customer_id"] = customers["customer_id"].astype(str)
    effects = None
    if (folder / "effects.parquet").is_file():
        effects = pd.read_parquet(folder / "effects.parquet")
        effects["cutoff"] = pd.to_datetime(effects["cutoff"], utc=True)
        effects["customer_id"] = effects["customer_id"].astype(str)
    return Truth(customers, effects)


def compare_with_truth(
    rows: pd.DataFrame, p_model: np.ndarray, y: np.ndarray, truth: Truth, label: str
) -> dict[str, float]:
    """AUC of the model and of the true probabilities on the same customers, and calibration.

    Args:
        rows: customer_id and cutoff of each scored row (the test period).
        p_model: the model's calibrated probabilities for ``rows``.
        y: the observed labels of ``rows``.
        truth: the simulator's truth.
        label: ``churn`` or ``conversion``.

    Returns:
        ``auc_truth`` (true probabilities vs observed labels), ``auc_model_on_truth_rows``,
        ``auc_gap_to_truth`` (the first minus the second), ``ece_truth_rows`` (the model
        against observed labels on those rows), ``mae_to_truth`` (mean |p_model − p_true|),
        ``mean_true_probability`` and ``truth_rows``; empty when no row has truth.

        The pooled AUCs also rank customers of different cutoffs against each other, so the
        truth, which knows the season ahead, gains from cutoffs whose base rates differ. When
        the truth covers several cutoffs, ``auc_gap_to_truth_within_cutoffs`` is the row-
        weighted mean of the gap within each cutoff (ranking alone) and
        ``auc_gap_to_truth_between_cutoffs`` the pooled gap minus it (what the model loses by
        not knowing each cutoff's base rate, e.g. a season the training log never showed).
    """
    column = TRUTH_COLUMN[label]
    scored = pd.DataFrame(
        {
            "customer_id": rows["customer_id"].astype(str).to_numpy(),
            "cutoff": pd.to_datetime(rows["cutoff"], utc=True).to_numpy(),
            "p_model": np.asarray(p_model, dtype=np.float64),
            "y": np.asarray(y, dtype=np.int64),
        }
    )
    scored["cutoff"] = pd.to_datetime(scored["cutoff"], utc=True)
    joined = scored.merge(truth.customers[["customer_id", "cutoff", column]], how="inner")
    if joined.empty or joined["y"].nunique() < 2:
        return {}
    auc_truth = float(roc_auc_score(joined["y"], joined[column]))
    auc_model = float(roc_auc_score(joined["y"], joined["p_model"]))
    within = _within_cutoff_gap(joined, column)
    decomposition = (
        {
            "auc_gap_to_truth_within_cutoffs": within,
            "auc_gap_to_truth_between_cutoffs": (auc_truth - auc_model) - within,
        }
        if within is not None
        else {}
    )
    return {
        **decomposition,
        "auc_truth": auc_truth,
        "auc_model_on_truth_rows": auc_model,
        "auc_gap_to_truth": auc_truth - auc_model,
        "ece_truth_rows": expected_calibration_error(
            joined["y"].to_numpy(), joined["p_model"].to_numpy()
        ),
        "ece_of_truth": expected_calibration_error(
            joined["y"].to_numpy(), joined[column].to_numpy()
        ),
        "mae_to_truth": float(np.mean(np.abs(joined["p_model"] - joined[column]))),
        "mean_true_probability": float(joined[column].mean()),
        "mean_model_probability": float(joined["p_model"].mean()),
        "truth_rows": float(len(joined)),
    }


def _within_cutoff_gap(joined: pd.DataFrame, column: str) -> float | None:
    """Row-weighted mean over cutoffs of AUC(truth) − AUC(model) within the cutoff; None
    with fewer than two cutoffs that have both label values."""
    gaps, weights = [], []
    for _, group in joined.groupby("cutoff", sort=True):
        if group["y"].nunique() < 2:
            continue
        gaps.append(
            roc_auc_score(group["y"], group[column]) - roc_auc_score(group["y"], group["p_model"])
        )
        weights.append(len(group))
    if len(gaps) < 2:
        return None
    return float(np.average(gaps, weights=weights))


def compare_effects_with_truth(
    rows: pd.DataFrame,
    predicted: dict[str, np.ndarray],
    actions: list[str],
    truth: Truth,
) -> dict[str, float]:
    """Predicted against true action effects at the truth cutoffs.

    Reports, per outcome, the correlation of predicted and true effects (pooled over actions,
    and the mean within-action correlation) and the true value of acting on the predictions:
    per customer, the action with the best predicted effect (or none when no action is
    predicted to help), scored with the *true* effects, next to the oracle (best true action),
    the best single action for everyone, and a random action.
    """
    if truth.effects is None:
        return {}
    keys = pd.DataFrame(
        {
            "customer_id": rows["customer_id"].astype(str).to_numpy(),
            "cutoff": pd.to_datetime(rows["cutoff"], utc=True).to_numpy(),
            "row": np.arange(len(rows)),
        }
    )
    keys["cutoff"] = pd.to_datetime(keys["cutoff"], utc=True)
    out: dict[str, float] = {}
    for outcome, column, sign in (
        ("convert", "effect_convert", 1.0),
        ("churn", "effect_churn", -1.0),
    ):
        true = truth.effects.pivot_table(
            index=["customer_id", "cutoff"], columns="action_id", values=column
        ).reset_index()
        joined = keys.merge(true, on=["customer_id", "cutoff"], how="inner")
        common = [a for a in actions if a in joined.columns]
        if joined.empty or not common:
            continue
        idx = [actions.index(a) for a in common]
        pred = predicted[outcome][joined["row"].to_numpy()][:, idx]
        real = joined[common].to_numpy(dtype=np.float64)
        out[f"effect_corr_{outcome}"] = float(np.corrcoef(pred.ravel(), real.ravel())[0, 1])
        within = [
            np.corrcoef(pred[:, j], real[:, j])[0, 1]
            for j in range(len(common))
            if np.std(pred[:, j]) > 0 and np.std(real[:, j]) > 0
        ]
        out[f"effect_corr_within_{outcome}"] = float(np.mean(within)) if within else float("nan")
        # gains are "good" outcomes: more conversion, less churn
        good_pred, good_real = sign * pred, sign * real
        rows_i = np.arange(len(real))
        choice = np.argmax(good_pred, axis=1)
        act = good_pred[rows_i, choice] > 0
        model_gain = np.where(act, good_real[rows_i, choice], 0.0).mean()
        oracle_gain = np.maximum(good_real.max(axis=1), 0.0).mean()
        best_single = max(0.0, float(good_real.mean(axis=0).max()))
        random_gain = float(good_real.sum(axis=1).mean() / (len(common) + 1))
        out[f"policy_gain_{outcome}_model"] = float(model_gain)
        out[f"policy_gain_{outcome}_oracle"] = float(oracle_gain)
        out[f"policy_gain_{outcome}_best_single_action"] = best_single
        out[f"policy_gain_{outcome}_random"] = random_gain
        out[f"policy_value_ratio_{outcome}"] = (
            float(model_gain / oracle_gain) if oracle_gain > 0 else float("nan")
        )
        out["truth_units"] = float(len(real))
    return out
