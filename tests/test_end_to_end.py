"""The demo chain on a small simulated world, through the command line: simulate, validate,
ingest, build features, materialise; then one definition of every feature holds across the
training snapshots, the online store and the real-time update."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from features.catalog import build_catalog
from features.realtime import EventStore, RealtimeUpdater, read_online
from features.settings import load_feature_settings
from features.store import Workspace, open_store
from journeyml.cli import app
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from journeyml.events.schema import NORMALISED_EVENT_SCHEMA, events_glob

NOW = "2026-06-01T00:00:00"


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    sim = root / "sim"
    run(
        "simulate",
        "--customers",
        "300",
        "--days",
        "120",
        "--seed",
        "11",
        "--out",
        str(sim),
        "--truth-cutoffs",
        "0",
    )
    run("events", "validate", str(sim / "events"), "--now", NOW)
    run(
        "events",
        "ingest",
        str(sim / "events"),
        "--customers",
        str(sim / "customers.parquet"),
        "--out",
        str(root / "lake"),
        "--now",
        NOW,
    )
    run("features", "build", "--data-dir", str(root))
    run("features", "materialize", "--data-dir", str(root))
    return root


def test_online_store_holds_the_latest_snapshot(data: Path) -> None:
    catalog = build_catalog(
        load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"),
        load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml")),
    )
    snapshots = pd.read_parquet(Workspace(data).snapshots)
    latest = snapshots[snapshots["event_timestamp"] == snapshots["event_timestamp"].max()]
    sample = latest.sample(40, random_state=0).set_index("customer_id")
    store = open_store(
        load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml")).store, Workspace(data)
    )
    as_of = latest["event_timestamp"].iloc[0].to_pydatetime()
    for row in read_online(store, catalog, list(sample.index), now=as_of):
        assert row.found and not row.any_stale
        for spec in catalog.features:
            want = sample.loc[row.customer_id, spec.name]
            got = row.values[spec.name]
            if spec.dtype == "float64":
                # the SQLite online store keeps event times to the second, so recency features
                # read back within a second of the snapshot's value
                assert got == pytest.approx(want, abs=2e-5), spec.name
            else:
                assert got == want, spec.name


def test_real_time_update_matches_the_batch_pipeline(data: Path, tmp_path: Path) -> None:
    """Hold back each sampled customer's last events, then send them through the update."""
    journey_map = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    catalog = build_catalog(
        journey_map, load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml"))
    )
    ws = Workspace(data)
    snapshots = pd.read_parquet(ws.snapshots)
    as_of = snapshots["event_timestamp"].max().to_pydatetime()
    events = pd.read_parquet(events_glob(ws.lake).replace("/**/*.parquet", ""))
    active = events[~events["event_type"].str.startswith("action_")]
    customers = active["customer_id"].value_counts().index[:15].tolist()
    recent = events[events["customer_id"].isin(customers)].sort_values("timestamp")
    held = recent.groupby("customer_id").tail(3)
    # a lake without the held-back events, and an updater that receives them
    lake = tmp_path / "lake"
    part = lake / "events" / "event_month=all"
    part.mkdir(parents=True)
    kept = events.drop(index=held.index)
    pa.parquet.write_table(
        pa.Table.from_pandas(kept, schema=NORMALISED_EVENT_SCHEMA, preserve_index=False),
        part / "b.parquet",
    )
    (lake / "customers.parquet").write_bytes((ws.lake / "customers.parquet").read_bytes())
    store = open_store(load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml")).store, ws)
    updater = RealtimeUpdater(
        store, catalog, journey_map, EventStore(f"sqlite:///{tmp_path / 'events.db'}"), lake
    )
    batch = pa.Table.from_pandas(held, schema=NORMALISED_EVENT_SCHEMA, preserve_index=False)
    report = updater.apply(batch, as_of=as_of + timedelta(seconds=1))
    assert report.customers == sorted(customers)
    online = {
        r.customer_id: r.values for r in read_online(store, catalog, customers, now=report.as_of)
    }
    expected = updater.compute(customers, report.as_of).set_index("customer_id")
    truth = snapshots[snapshots["event_timestamp"] == snapshots["event_timestamp"].max()]
    truth = truth.set_index("customer_id")
    for c in customers:
        for spec in catalog.features:
            if spec.dtype == "float64":
                assert online[c][spec.name] == pytest.approx(
                    expected.loc[c, spec.name], abs=1e-5
                ), spec.name
                if not spec.ages_with_time:
                    # the same history as the batch snapshot: identical values
                    assert online[c][spec.name] == pytest.approx(truth.loc[c, spec.name])
            else:
                assert (
                    online[c][spec.name] == expected.loc[c, spec.name] == truth.loc[c, spec.name]
                ), spec.name


def test_simulated_csv_with_other_column_names_loads_through_the_mapping(tmp_path: Path) -> None:
    run(
        "simulate",
        "--customers",
        "60",
        "--days",
        "40",
        "--seed",
        "2",
        "--out",
        str(tmp_path / "sim"),
        "--format",
        "csv",
        "--truth-cutoffs",
        "0",
    )
    frame = pd.read_csv(tmp_path / "sim" / "events.csv")
    renamed = frame.rename(
        columns={
            "customer_id": "user_id",
            "timestamp": "ts",
            "event_type": "event",
            "value": "amount",
        }
    )
    renamed.to_csv(tmp_path / "export.csv", index=False)
    maps = [
        "--map",
        "user_id=customer_id",
        "--map",
        "ts=timestamp",
        "--map",
        "event=event_type",
        "--map",
        "amount=value",
    ]
    failed = CliRunner().invoke(
        app, ["events", "validate", str(tmp_path / "export.csv"), "--now", NOW]
    )
    assert failed.exit_code == 2  # without the mapping the required columns are missing
    run("events", "validate", str(tmp_path / "export.csv"), "--now", NOW, *maps)
    run(
        "events",
        "ingest",
        str(tmp_path / "export.csv"),
        "--out",
        str(tmp_path / "lake"),
        "--now",
        NOW,
        *maps,
    )
    lake = pd.read_parquet(tmp_path / "lake" / "events")
    assert len(lake) == len(frame)
    assert lake["value"].sum() == pytest.approx(frame["value"].sum())
    assert set(lake["customer_id"]) == set(frame["customer_id"])
