"""The churn-risk list decided on Spark (``lists churn-risk --engine spark``) equals the DuckDB
path's customer by customer: same rows in the same order, same scores, reasons, actions and
holdout flags, and the same summary counts, with contacts already in the state store (the
contact policy blocks some actions), a suppression list and a minimum risk."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from journeyml.cli import app
from serving.engine import NO_ACTION, DecisionContext
from serving.lists import COLUMNS, ListFilters, churn_risk_list
from serving.runtime import Runtime
from tests.serving.conftest import ServingWorkspace, serving_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

NOW = datetime(2025, 7, 23, 9, 30, tzinfo=UTC)  # the day after the simulated log ends
SETTINGS = {"exploration": {"epsilon": 0.0}, "holdout": {"share": 0.2, "salt": "t"}}


@pytest.mark.slow
def test_the_spark_list_equals_the_duckdb_list(
    spark: SparkSession, serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    settings = serving_settings(serving_ws, tmp_path, **SETTINGS)
    snapshots = serving_ws.sim.root / "features" / "journey_features"
    rt = Runtime(settings)  # the endpoint writes contacts into the state store both lists read
    try:
        for cid in serving_ws.customers[:: max(1, len(serving_ws.customers) // 15)]:
            rt.engine.decide(cid, DecisionContext(at=NOW))
        suppression = set(serving_ws.customers[1:6])
        filters = ListFilters(min_risk=0.02, population="all")
        duck = churn_risk_list(
            rt.engine, snapshots, tmp_path / "duckdb", now=NOW, filters=filters,
            suppression=suppression,
        )  # fmt: skip
    finally:
        rt.close()
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
    dnc = tmp_path / "dnc.csv"
    dnc.write_text("customer_id\n" + "\n".join(sorted(suppression)) + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["lists", "churn-risk", "--data-dir", str(serving_ws.sim.root), "--config", str(config),
         "--engine", "spark", "--out", str(tmp_path / "spark"), "--now", NOW.isoformat(),
         "--min-risk", "0.02", "--population", "all", "--suppression-list", str(dnc)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = pd.read_parquet(tmp_path / "duckdb" / "churn_risk.parquet")
    b = pd.read_parquet(tmp_path / "spark" / "churn_risk.parquet")
    assert list(b.columns) == COLUMNS and len(a) == len(b) > 100
    assert b["customer_id"].tolist() == a["customer_id"].tolist()
    for col in COLUMNS:
        if pd.api.types.is_float_dtype(a[col]):
            assert np.allclose(b[col], a[col], rtol=1e-9, atol=0.0, equal_nan=True), col
        else:
            assert b[col].fillna("<na>").tolist() == a[col].fillna("<na>").tolist(), col
    assert (a["recommended_action"] != NO_ACTION).any() and a["holdout"].any()
    summary = json.loads((tmp_path / "spark" / "churn_risk.json").read_text("utf-8"))
    for key in ("customers_read", "opted_out", "consent_unknown", "suppressed_list", "active",
                "lapsed", "other_population",
                "suppressed_contact_policy",
                "below_min_risk", "listed", "holdout", "with_action", "by_band", "by_action",
                "model_versions"):  # fmt: skip
        assert summary[key] == getattr(duck, key), key
    assert duck.suppressed_list == 5 and duck.opted_out > 0
    parts = pd.read_parquet(tmp_path / "spark" / "churn_risk_parts")
    assert sorted(parts["customer_id"]) == sorted(a["customer_id"])
