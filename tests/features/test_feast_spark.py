"""Feast's Spark offline store over the snapshots: with ``store.offline.type: spark`` the
feature views read a ``SparkSource`` over the same Parquet files, and Feast's
``get_historical_features`` (run by Spark) returns what the DuckDB read returns, with Feast's
point-in-time and TTL semantics: at a snapshot, between snapshots, before any, for an unknown
customer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from features.catalog import build_catalog
from features.settings import OfflineStoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import JourneyMap
from tests.features.helpers import by_customer_and_time
from tests.training.conftest import build_sim_workspace
from training.dataset import describe_service, read_features

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.mark.slow
def test_get_historical_features_on_the_spark_offline_store(
    spark: SparkSession, journey_map: JourneyMap, tmp_path: Path
) -> None:
    sim = build_sim_workspace(tmp_path / "sim", journey_map, 120, 100, seed=8)
    store_settings = sim.settings.store.model_copy(
        update={"offline": OfflineStoreSettings(type="spark")}
    )
    ws = Workspace(tmp_path / "spark_ws")  # its own registry, the simulated snapshots
    ws.snapshots.parent.mkdir(parents=True)
    ws.snapshots.symlink_to(sim.root / "features" / "journey_features", target_is_directory=True)
    store = open_store(store_settings, ws)
    objects = apply_definitions(store, build_catalog(journey_map, sim.settings), ws)
    assert isinstance(objects.source, SparkSource)
    assert store.config.offline_store.type == "spark"
    spec = describe_service(store, "churn_v1")
    snaps = by_customer_and_time(pd.read_parquet(sim.root / "features" / "journey_features"))
    picked = snaps.sample(n=25, random_state=0)[["customer_id", "event_timestamp"]]
    ts = pd.to_datetime(picked["event_timestamp"], utc=True)
    entities = pd.concat(
        [
            picked.assign(event_timestamp=ts),  # exactly at a snapshot
            picked.assign(event_timestamp=ts + timedelta(days=3)),  # between snapshots
            picked.head(4).assign(event_timestamp=ts.head(4) - timedelta(days=400)),  # none yet
            pd.DataFrame({"customer_id": ["nobody"], "event_timestamp": [ts.iloc[0]]}),
        ],
        ignore_index=True,
    )
    fast = read_features(store, spec, entities, "duckdb")
    feast = read_features(store, spec, entities, "feast")
    for name in spec.features:
        a, b = fast[name], feast[name]
        if name in spec.categorical:
            assert a.fillna("<NA>").tolist() == b.fillna("<NA>").tolist(), name
        else:
            np.testing.assert_allclose(
                b.to_numpy(float), a.to_numpy(float), rtol=1e-9, equal_nan=True, err_msg=name
            )
    assert feast.iloc[:50]["events_total"].notna().all()
    assert feast.iloc[-5:]["events_total"].isna().all()
