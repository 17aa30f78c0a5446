"""Training reads features through the feature store: the DuckDB engine returns what Feast's
get_historical_features returns, with Feast's point-in-time and TTL semantics."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from features.store import Workspace, open_store
from tests.features.helpers import by_customer_and_time
from tests.training.conftest import SimWorkspace
from training.dataset import describe_service, read_features


def test_duckdb_engine_matches_feast_get_historical_features(sim_ws: SimWorkspace) -> None:
    store = open_store(sim_ws.settings.store, Workspace(sim_ws.root))
    spec = describe_service(store, "churn_v1")
    assert spec.version == "v1"
    assert "stage" in spec.categorical and "events_7d" not in spec.categorical
    snaps = by_customer_and_time(pd.read_parquet(sim_ws.root / "features" / "journey_features"))
    picked = snaps.sample(n=40, random_state=0)[["customer_id", "event_timestamp"]]
    ts = pd.to_datetime(picked["event_timestamp"], utc=True)
    entities = pd.concat(
        [
            picked.assign(event_timestamp=ts),  # exactly at a snapshot
            picked.assign(event_timestamp=ts + timedelta(days=3)),  # between snapshots
            picked.head(5).assign(event_timestamp=ts.head(5) - timedelta(days=400)),  # none yet
            pd.DataFrame(  # an unknown customer
                {"customer_id": ["nobody"], "event_timestamp": [ts.iloc[0]]}
            ),
        ],
        ignore_index=True,
    )
    fast = read_features(store, spec, entities, "duckdb")
    feast = read_features(store, spec, entities, "feast")
    pd.testing.assert_index_equal(fast.index, entities.index)
    for name in spec.features:
        a, b = fast[name], feast[name]
        if name in spec.categorical:
            assert a.fillna("<NA>").tolist() == b.fillna("<NA>").tolist(), name
        else:
            np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), equal_nan=True)
    assert fast.iloc[-6:]["events_total"].isna().all()
    assert fast.iloc[:80]["events_total"].notna().all()


def test_features_are_the_snapshot_at_the_cutoff(sim_ws: SimWorkspace) -> None:
    store = open_store(sim_ws.settings.store, Workspace(sim_ws.root))
    spec = describe_service(store, "next_step_v1")
    snaps = by_customer_and_time(
        pd.read_parquet(sim_ws.root / "features" / "journey_features")
    ).head(30)
    got = read_features(store, spec, snaps[["customer_id", "event_timestamp"]], "duckdb")
    for name in spec.features:
        if name in spec.categorical:
            assert got[name].tolist() == snaps[name].tolist()
        else:
            np.testing.assert_allclose(got[name].to_numpy(float), snaps[name].to_numpy(float))
