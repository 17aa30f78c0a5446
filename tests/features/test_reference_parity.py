"""The SQL pipeline and the independent pandas reference (benchmarks/) agree on every feature:
a second, separately written check of every feature's semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.reference_features import compute_reference_features
from features.catalog import FeatureCatalog
from features.pipeline import build_snapshots
from journeyml.config import JourneyMap, load_journey_map
from journeyml.simulate.run import TruthOptions, simulate
from journeyml.simulate.world import World
from tests.features.helpers import day, events_table, write_lake


def assert_same(sql: pd.DataFrame, ref: pd.DataFrame, catalog: FeatureCatalog) -> None:
    sql = sql.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)
    sql["event_timestamp"] = sql["event_timestamp"].astype("datetime64[ns, UTC]")
    ref = ref.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)
    assert len(sql) == len(ref)
    assert (sql["customer_id"] == ref["customer_id"]).all()
    assert (sql["event_timestamp"] == ref["event_timestamp"]).all()
    for spec in catalog.features:
        a, b = sql[spec.name], ref[spec.name]
        if spec.dtype == "float64":
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=spec.name)
        else:
            mismatch = a.astype(str) != b.astype(str)
            assert not mismatch.any(), (spec.name, sql[mismatch].head(3), ref[mismatch].head(3))


def sql_and_reference(
    lake: Path, out: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> tuple[pd.DataFrame, pd.DataFrame]:
    report = build_snapshots(lake, out, journey_map, catalog)
    sql = pd.read_parquet(out)
    events = pd.read_parquet(lake / "events")[
        [
            "event_id",
            "customer_id",
            "timestamp",
            "event_type",
            "channel",
            "value",
            "session_id",
            "properties",
        ]
    ]
    customers = (
        pd.read_parquet(lake / "customers.parquet")
        if (lake / "customers.parquet").exists()
        else None
    )
    cutoffs = sorted(sql["event_timestamp"].unique())
    ref = compute_reference_features(events, customers, cutoffs, journey_map, catalog)
    assert report.rows == len(sql)
    return sql, ref


def test_agree_on_edge_cases(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    log = [
        {
            "customer_id": "a",
            "timestamp": day(1),
            "event_type": "page_view",
            "channel": "web",
            "session_id": "s1",
        },
        {
            "customer_id": "a",
            "timestamp": day(1),
            "event_type": "signup",
            "channel": "web",
            "session_id": "s1",
            "event_id": "tie",
        },
        {"customer_id": "a", "timestamp": day(29, 0), "event_type": "purchase", "value": 5.0},
        {"customer_id": "b", "timestamp": day(3), "event_type": "action_content_email"},
        {
            "customer_id": "b",
            "timestamp": day(4),
            "event_type": "nps_response",
            "properties": '{"score": 4}',
        },
        {"customer_id": "c", "timestamp": day(2), "event_type": "action_retention_call"},
        {"customer_id": "d", "timestamp": day(5), "event_type": "purchase", "value": 3.0},
        {"customer_id": "d", "timestamp": day(6), "event_type": "page_view"},
        {"customer_id": "d", "timestamp": day(7), "event_type": "complaint"},
        {"customer_id": "d", "timestamp": day(8), "event_type": "email_open"},
    ]
    lake = write_lake(tmp_path / "lake", events_table(log))
    sql, ref = sql_and_reference(lake, tmp_path / "f", journey_map, catalog)
    assert_same(sql, ref, catalog)


@pytest.mark.slow
def test_agree_on_a_simulated_world(tmp_path: Path, catalog: FeatureCatalog) -> None:
    journey_map = load_journey_map()
    sim = tmp_path / "sim"
    simulate(World(), journey_map, 250, 120, seed=4, out=sim, truth=TruthOptions(last_cutoffs=0))
    from journeyml.events.ingest import ingest_events

    lake = tmp_path / "lake"
    ingest_events(
        sim / "events",
        lake,
        customers=sim / "customers.parquet",
        now=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(),
    )
    sql, ref = sql_and_reference(lake, tmp_path / "f", journey_map, catalog)
    assert len(sql) > 2000
    assert_same(sql, ref, catalog)
