"""The generic pipeline on a log with a single event type with values (retail transactions):
churn is no purchase within the horizon; every model that needs more (uplift) is skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from features.catalog import build_catalog
from features.pipeline import build_snapshots
from features.settings import FeatureSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import JourneyMap
from journeyml.events.schema import NORMALISED_EVENT_SCHEMA
from tests.features.helpers import write_lake
from tests.training.conftest import small_config
from training.pipeline import NoActionsError, train_models
from training.tracking import resolve_tracking

START = datetime(2025, 1, 1, tzinfo=UTC)


def purchase_map() -> JourneyMap:
    return JourneyMap.model_validate(
        {
            "stages": ["prospect", "customer"],
            "stage_events": {"customer": ["purchase"]},
            "conversions": ["purchase"],
            "churn": {"inactivity_days": 60, "events": [], "activity_events": ["purchase"]},
            "treatments": {"patterns": []},
        }
    )


def retail_log(customers: int, days: int, seed: int) -> pa.Table:
    """Buyers with their own purchase rate and a lifetime after which they stop buying."""
    rng = np.random.default_rng(seed)
    ids, ts, values = [], [], []
    for c in range(customers):
        rate = rng.gamma(2.0, 0.05)
        arrival = rng.uniform(0, days * 0.5)
        end = arrival + rng.exponential(120)
        t = arrival
        while True:
            t += rng.exponential(1 / rate)
            if t > min(end, days):
                break
            ids.append(f"R{c:05d}")
            ts.append(START + timedelta(days=float(t)))
            values.append(round(float(rng.lognormal(3.5, 0.6)), 2))
    n = len(ids)
    return pa.Table.from_pydict(
        {
            "event_id": [f"p{i}" for i in range(n)],
            "customer_id": ids,
            "timestamp": ts,
            "event_type": ["purchase"] * n,
            "channel": ["store"] * n,
            "value": values,
            "session_id": [None] * n,
            "properties": [None] * n,
        },
        schema=NORMALISED_EVENT_SCHEMA,
    )


def test_the_pipeline_trains_on_a_pure_purchase_log(tmp_path: Path) -> None:
    journey = purchase_map()
    ws = Workspace(tmp_path / "data")
    write_lake(ws.lake, retail_log(500, 210, seed=4))
    settings = FeatureSettings(profile_attributes=[], channels=["store"])
    catalog = build_catalog(journey, settings)
    build_snapshots(ws.lake, ws.snapshots, journey, catalog)
    apply_definitions(open_store(settings.store, ws), catalog, ws)
    config = small_config(tmp_path)
    target = resolve_tracking(config.tracking, ws.root)
    results = train_models(
        ws.root,
        ["churn", "conversion", "next_step", "uplift"],
        journey,
        settings,
        config,
        target,
        skip_without_actions=True,
    )
    by_model = {r.model: r for r in results}
    assert set(by_model) == {"churn", "conversion", "next_step"}  # no actions: no uplift
    churn = by_model["churn"].metrics
    assert 0.0 < churn["test_positive_rate"] < 1.0
    assert churn["auc"] > 0.6
    assert churn["auc"] > churn["baseline_recency_frequency_auc"] - 0.05
    assert by_model["conversion"].metrics["auc"] > 0.6
    for model in ("churn", "conversion"):  # churn is no purchase: BG/NBD answers both
        m = by_model[model].metrics
        assert 0.6 < m["baseline_bgnbd_auc"] <= 1.0
        assert 0.6 < m["baseline_random_forest_auc"] <= 1.0
        assert {"baseline_logreg_auc", "baseline_recency_frequency_auc"} <= set(m)
        # one fact, one answer: the conversion model mirrors churn's, and the run checked it
        assert abs(m["complement_auc_gap"]) <= m["complement_auc_noise"]
        assert m["complement_mean_abs_gap"] < 0.05
    assert by_model["next_step"].metrics["top1_accuracy"] > 0.4
    with pytest.raises(NoActionsError):
        train_models(ws.root, ["uplift"], journey, settings, config, target)
