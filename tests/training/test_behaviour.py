"""Model behaviour tests on the trained churn and conversion models (loaded from the registry
as serving loads them): directional expectations, invariance, minimum functionality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.features.helpers import by_customer_and_time
from tests.training.conftest import Trained
from training.bundle import ModelBundle, load_model_bundle
from training.config import LOWER_IS_BETTER, load_training_config
from training.pipeline import TrainedModel
from training.registry import baseline_values, decide_promotion
from training.tracking import CHALLENGER, resolve_tracking, use_tracking


@pytest.fixture(scope="module")
def churn(trained: Trained) -> ModelBundle:
    use_tracking(resolve_tracking(trained.config.tracking, trained.ws.root))
    return load_model_bundle(f"models:/{trained.config.registered_name('churn')}@{CHALLENGER}")


@pytest.fixture(scope="module")
def rows(trained: Trained) -> pd.DataFrame:
    snaps = by_customer_and_time(pd.read_parquet(trained.ws.root / "features" / "journey_features"))
    return snaps.sample(n=400, random_state=1).reset_index(drop=True)


def columns(frame: pd.DataFrame, *prefixes: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefixes)]


@pytest.mark.parametrize("extra", [1, 3, 10])
def test_more_complaints_never_lower_churn_risk(
    churn: ModelBundle, rows: pd.DataFrame, extra: int
) -> None:
    more = rows.copy()
    for c in columns(rows, "complaints_", "n_complaint_"):
        more[c] = more[c] + extra
    more["days_since_last_complaint"] = np.minimum(more["days_since_last_complaint"], 1.0)
    before, after = churn.predict_proba(rows), churn.predict_proba(more)
    assert np.all(after >= before - 1e-12)


def test_a_conversion_yesterday_does_not_raise_churn_risk(
    churn: ModelBundle, rows: pd.DataFrame
) -> None:
    bought = rows.copy()
    for c in columns(rows, "conversions_", "n_purchase_"):
        bought[c] = bought[c] + 1
    for c in ("days_since_last_conversion", "days_since_last_event"):
        bought[c] = np.minimum(bought[c], 1.0)
    before, after = churn.predict_proba(rows), churn.predict_proba(bought)
    assert np.all(after <= before + 1e-12)


def test_predictions_do_not_depend_on_the_customer_id_or_row_order(
    churn: ModelBundle, rows: pd.DataFrame
) -> None:
    renamed = rows.assign(customer_id=[f"X{i}" for i in range(len(rows))])
    np.testing.assert_array_equal(churn.predict_proba(rows), churn.predict_proba(renamed))
    shuffled = rows.sample(frac=1.0, random_state=3)
    np.testing.assert_array_equal(
        churn.predict_proba(shuffled), churn.predict_proba(rows)[shuffled.index.to_numpy()]
    )


def test_unknown_categories_and_missing_values_still_score(
    churn: ModelBundle, rows: pd.DataFrame
) -> None:
    odd = rows.head(20).copy()
    odd["stage"] = "a_stage_never_seen"
    odd["segment"] = None
    odd["events_7d"] = np.nan
    p = churn.predict_proba(odd)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize(
    "model",
    [
        "churn",
        pytest.param(
            "conversion",
            marks=pytest.mark.xfail(
                strict=True,
                reason="on the 400-customer fixture the conversion model does not pass its own "
                "gate: ECE 0.057 against the 0.05 ceiling, AUC 0.695 against the random "
                "forest's 0.700 (measured 2026-12-06); remove this mark when it does",
            ),
        ),
    ],
)
def test_minimum_functionality_is_what_the_promotion_gate_asks(
    trained: Trained, model: str
) -> None:
    """The floors and margins of configs/models.yaml's gate, not looser ones: the trained
    model would pass its own promotion gate on its test period."""
    r = trained.results[model]
    assert isinstance(r, TrainedModel)
    m = r.metrics
    gate = load_training_config().gate(model)
    for name, floor in gate.floors.items():
        if name in LOWER_IS_BETTER:
            assert m[name] <= floor, (name, m[name], floor)
        else:
            assert m[name] >= floor, (name, m[name], floor)
    bases = baseline_values(m, gate.metric)
    assert {"logreg", "random_forest", "recency_frequency"} <= set(bases)
    for base, value in bases.items():
        assert m[gate.metric] >= value + gate.baseline_margin, (base, m[gate.metric], value)
    assert m["top_decile_lift"] > 1.0
    assert decide_promotion(model, m, gate, None, None).promote
