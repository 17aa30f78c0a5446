"""Features from the log's own columns: a dimension (counts and shares by value, the latest
value) and a measure (sums and means), declared in the feature settings, without code. They go
through the one feature definition: batch snapshots, the real-time update, the Spark text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import sqlglot

from features.catalog import FeatureCatalog, build_catalog
from features.definitions import SERVICE_VIEWS, feast_objects
from features.pipeline import build_snapshots, feature_query, to_spark_sql
from features.realtime import EventStore, RealtimeUpdater, read_online
from features.settings import FeatureSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import ConfigError, JourneyMap, validate_config
from journeyml.events.config import EventsConfig
from journeyml.events.ingest import ingest_events
from tests.features.helpers import compute_features, events_table

# a clickstream export with its own column names, a platform column and a numeric column
CSV = """\
user,ts,action,device,items
u1,2025-01-01T10:00:00Z,page_view,ios,
u1,2025-01-02T10:00:00Z,add_to_cart,ios,2
u1,2025-01-03T10:00:00Z,purchase,web,3
u1,2025-01-06T10:00:00Z,page_view,android,
u1,2025-01-07T10:00:00Z,add_to_cart,,1.5
u2,2025-01-05T10:00:00Z,page_view,web,4
"""
AS_OF = datetime(2025, 1, 8, tzinfo=UTC)
MAP = {"user": "customer_id", "ts": "timestamp", "action": "event_type"}


@pytest.fixture(scope="module")
def settings() -> FeatureSettings:
    return validate_config(
        {
            "windows_days": [3, 30],
            "channels": [],
            # no profile features: the profile view is left out, not registered empty
            "profile_attributes": [],
            "dimensions": [{"column": "device", "values": ["ios", "web"], "name": "platform"}],
            "measures": [{"column": "items"}],
        },
        FeatureSettings,
        "features.yaml",
    )


@pytest.fixture(scope="module")
def log_catalog(journey_map: JourneyMap, settings: FeatureSettings) -> FeatureCatalog:
    return build_catalog(journey_map, settings)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("log_columns")
    (root / "export.csv").write_text(CSV)
    config = EventsConfig(memory_limit="512MB", threads=1).with_column_maps(MAP)
    ingest_events(root / "export.csv", root / "lake", config=config, now=AS_OF)
    return root / "lake"


@pytest.fixture(scope="module")
def batch(lake: Path, journey_map: JourneyMap, log_catalog: FeatureCatalog) -> pd.DataFrame:
    out = lake.parent / "features"
    build_snapshots(lake, out, journey_map, log_catalog, as_of=AS_OF)
    frame = pd.read_parquet(out)
    return frame[frame["event_timestamp"] == AS_OF].set_index("customer_id")


@pytest.mark.parametrize(
    ("customer", "feature", "expected"),
    [
        # [5 Jan, 8 Jan): u1's android view and the cart without a device
        ("u1", "platform_ios_3d", 0),
        ("u1", "platform_other_3d", 1),
        ("u1", "platform_other_share_3d", 1.0),
        # the whole month: ios 2, web 1, android ("other") 1, of 4 events with a device
        ("u1", "platform_ios_30d", 2),
        ("u1", "platform_web_30d", 1),
        ("u1", "platform_other_30d", 1),
        ("u1", "platform_ios_share_30d", 0.5),
        ("u1", "platform_web_share_30d", 0.25),
        # the latest event with a device was the android view: not listed, so "other"
        ("u1", "platform_last", "other"),
        ("u2", "platform_last", "web"),
        ("u2", "platform_web_share_3d", 1.0),
        # items: 2 + 3 + 1.5 over the month, on three events that have a number
        ("u1", "items_sum_30d", 6.5),
        ("u1", "items_mean_30d", 6.5 / 3),
        ("u1", "items_sum_3d", 1.5),
        ("u1", "items_mean_3d", 1.5),
        ("u2", "items_sum_3d", 4.0),
    ],
)
def test_dimension_and_measure_values(
    batch: pd.DataFrame, customer: str, feature: str, expected: object
) -> None:
    got = batch.loc[customer, feature]
    if isinstance(expected, float):
        assert got == pytest.approx(expected)
    else:
        assert got == expected


def test_before_any_value(journey_map: JourneyMap, log_catalog: FeatureCatalog) -> None:
    log = [{"customer_id": "x", "timestamp": AS_OF - timedelta(days=1), "event_type": "login"}]
    row = compute_features(events_table(log), [AS_OF], journey_map, log_catalog).iloc[0]
    assert row["platform_last"] == "none"
    assert row["platform_ios_share_30d"] == 0.0
    assert (row["items_sum_30d"], row["items_mean_30d"]) == (0.0, 0.0)


def test_catalog_describes_them_and_the_services_carry_them(
    log_catalog: FeatureCatalog,
) -> None:
    d = log_catalog.descriptions
    assert d["platform_ios_30d"] == "events with device 'ios' in the last 30 days"
    assert d["platform_other_30d"] == "events with a device other than ios, web in the last 30 days"
    assert d["items_mean_3d"].startswith("mean items of the events that have one")
    assert "latest device" in d["platform_last"]
    objects = feast_objects(log_catalog, "/tmp/none.parquet")
    for service in SERVICE_VIEWS:
        names = {
            f.name
            for projection in objects.services[service].feature_view_projections
            for f in projection.features
        }
        assert {"platform_ios_30d", "platform_last", "items_sum_30d"} <= names, service


def test_the_spark_text_carries_them(log_catalog: FeatureCatalog) -> None:
    spark = to_spark_sql(feature_query(log_catalog))
    parsed = sqlglot.parse_one(spark, read="spark")
    selected = {e.alias_or_name for e in parsed.expressions}
    assert set(log_catalog.names) <= selected
    assert "GET_JSON_OBJECT" in spark.upper()


def test_the_realtime_update_equals_the_batch(
    tmp_path: Path,
    lake: Path,
    batch: pd.DataFrame,
    journey_map: JourneyMap,
    log_catalog: FeatureCatalog,
) -> None:
    ws = Workspace(tmp_path)
    # the lake up to 4 Jan, then the rest arrives online
    first = [r for r in CSV.splitlines()[1:] if r.split(",")[1] < "2025-01-05"]
    (tmp_path / "early.csv").write_text(CSV.splitlines()[0] + "\n" + "\n".join(first) + "\n")
    config = EventsConfig(memory_limit="512MB", threads=1).with_column_maps(MAP)
    ingest_events(tmp_path / "early.csv", ws.lake, config=config, now=AS_OF)
    report = build_snapshots(ws.lake, ws.snapshots, journey_map, log_catalog)
    store = open_store(log_catalog.settings.store, ws)
    apply_definitions(store, log_catalog, ws)
    store.materialize(report.as_of - timedelta(days=30), report.as_of + timedelta(seconds=1))
    updater = RealtimeUpdater(
        store, log_catalog, journey_map, EventStore(f"sqlite:///{tmp_path / 'ev.db'}"), ws.lake
    )
    later = pd.read_parquet(lake / "events").sort_values("timestamp")
    later = later[later["timestamp"] >= datetime(2025, 1, 5, tzinfo=UTC)]
    updater.apply(pa.Table.from_pandas(later, preserve_index=False), as_of=AS_OF)
    got = read_online(store, log_catalog, ["u1", "u2"], now=AS_OF)
    assert "customer_profile" not in log_catalog.views
    names = [f.name for f in log_catalog.features if f.name.startswith(("platform_", "items_"))]
    assert len(names) == 2 * 3 * 2 + 1 + 2 * 2
    for row in got:
        for spec in log_catalog.features:
            want, value = batch.loc[row.customer_id, spec.name], row.values[spec.name]
            if spec.dtype == "float64":
                assert value == pytest.approx(want, abs=1e-9), (row.customer_id, spec.name)
            else:
                assert value == want, (row.customer_id, spec.name)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dimensions": [{"column": "device", "values": []}]}, "list the values"),
        ({"dimensions": [{"column": "dev ice", "values": ["a"]}]}, "not a column name"),
        ({"measures": [{"column": "items"}, {"column": "items"}]}, "distinct names"),
        ({"measures": [{"column": "Items", "name": "Items"}]}, "lower case"),
    ],
)
def test_bad_declarations_are_clear_errors(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(entry, FeatureSettings, "features.yaml")


def test_a_foreign_clickstreams_platform_and_page_become_features(tmp_path: Path) -> None:
    from tests.features.test_stages import CLICKSTREAM_MAP
    from tests.foreign_logs import generate_clickstream

    log = generate_clickstream(tmp_path / "log", n_users=60, seed=5, days=45, incidents=())
    config = EventsConfig(memory_limit="512MB", threads=1).with_column_maps(log.column_map)
    ingest_events(log.events_csv, tmp_path / "lake", config=config)
    settings = validate_config(
        {
            "windows_days": [30],
            "channels": [],
            "dimensions": [
                {"column": "platform", "values": ["ios", "android"]},
                {"column": "page", "values": ["shoes", "bags"], "name": "category"},
            ],
        },
        FeatureSettings,
        "features.yaml",
    )
    catalog = build_catalog(CLICKSTREAM_MAP, settings)
    as_of = datetime.combine(log.end, datetime.min.time(), tzinfo=UTC)
    build_snapshots(tmp_path / "lake", tmp_path / "features", CLICKSTREAM_MAP, catalog, as_of)
    got = pd.read_parquet(tmp_path / "features")
    got = got[got["event_timestamp"] == as_of].set_index("customer_id")
    raw = pd.read_csv(log.events_csv, parse_dates=["event_time"])
    raw = raw[raw["event_time"] >= as_of - timedelta(days=30)]
    platform = raw.groupby("user_ref")["platform"]
    pages = raw.dropna(subset=["page"]).groupby("user_ref")["page"]
    want = pd.DataFrame(
        {
            "platform_ios_30d": platform.apply(lambda s: (s == "ios").sum()),
            "platform_other_30d": platform.apply(lambda s: (s == "web").sum()),
            "category_bags_30d": pages.apply(lambda s: (s == "bags").sum()),
            "category_other_30d": pages.apply(lambda s: (~s.isin(["shoes", "bags"])).sum()),
        }
    ).fillna(0)
    assert len(want) > 10
    shown = got.loc[want.index, list(want.columns)].astype(float)
    pd.testing.assert_frame_equal(shown, want.astype(float), check_names=False)
    latest = pd.read_csv(log.events_csv).groupby("user_ref")["platform"].last()
    expected_last = latest.where(latest.isin(["ios", "android"]), "other")
    assert (got.loc[expected_last.index, "platform_last"] == expected_last).all()
