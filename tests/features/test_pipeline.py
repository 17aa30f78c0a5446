"""Code tests of the feature pipeline on tiny literal logs, values checked by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlglot

from features.catalog import FeatureCatalog, build_catalog
from features.pipeline import (
    DEFAULT_COUNT_BITS,
    FeatureBuildError,
    build_snapshots,
    connect,
    count_bits_for,
    feature_query,
    plan_snapshots,
    register_inputs,
    register_snapshots_for_cutoffs,
    to_spark_sql,
)
from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from tests.features.helpers import (
    by_customer_and_time,
    compute_features,
    day,
    events_table,
    write_lake,
)

LOG = [
    {
        "customer_id": "a",
        "timestamp": day(1),
        "event_type": "page_view",
        "channel": "web",
        "session_id": "s1",
    },
    {
        "customer_id": "a",
        "timestamp": day(2),
        "event_type": "signup",
        "channel": "web",
        "session_id": "s1",
    },
    {
        "customer_id": "a",
        "timestamp": day(3),
        "event_type": "purchase",
        "channel": "web",
        "value": 50.0,
        "session_id": "s2",
    },
    {
        "customer_id": "a",
        "timestamp": day(10),
        "event_type": "product_view",
        "channel": "app",
        "session_id": "s3",
    },
    {
        "customer_id": "b",
        "timestamp": day(5),
        "event_type": "nps_response",
        "properties": '{"score": 9}',
    },
    {
        "customer_id": "a",
        "timestamp": day(11),
        "event_type": "action_discount_offer",
        "channel": "email",
        "properties": '{"action_id": "discount_offer"}',
    },
]


@pytest.fixture(scope="module")
def frame(journey_map: JourneyMap, catalog: FeatureCatalog) -> pd.DataFrame:
    cutoffs = [day(3), day(4), datetime(2025, 1, 12, tzinfo=UTC)]
    out = compute_features(events_table(LOG), cutoffs, journey_map, catalog)
    return out.set_index(["customer_id", out["event_timestamp"].dt.day])


@pytest.mark.parametrize(
    ("customer", "cutoff_day", "feature", "expected"),
    [
        # the purchase at exactly 3 Jan 12:00 is not seen by the snapshot at that instant
        ("a", 3, "events_7d", 2),
        ("a", 3, "conversions_30d", 0),
        ("a", 3, "days_since_last_conversion", 3.0),  # never: tenure (2) + 1
        ("a", 3, "stage", "consideration"),
        ("a", 3, "previous_stage", "awareness"),
        ("a", 3, "last_event_1", "signup"),
        ("a", 3, "last_event_3", "none"),
        ("a", 4, "events_7d", 3),
        ("a", 4, "sessions_7d", 2),
        ("a", 4, "value_sum_30d", 50.0),
        ("a", 4, "value_mean_30d", 50.0),
        ("a", 4, "stage", "purchase"),
        ("a", 12, "events_7d", 1),  # only the product view is within [5 Jan, 12 Jan)
        # a product view after the purchase is generic: the stage stays (no regression)
        ("a", 12, "stage", "purchase"),
        ("a", 12, "previous_stage", "consideration"),
        ("a", 12, "furthest_stage", "purchase"),
        ("a", 12, "stage_regressions", 0),
        ("a", 12, "days_in_stage", 8.5),
        ("a", 12, "tenure_days", 10.5),
        ("a", 12, "actions_7d", 1),  # the offer is a treatment: counted as an action...
        ("a", 12, "last_event_1", "product_view"),  # ...not as customer behaviour
        ("a", 12, "days_since_last_action", 0.5),
        ("a", 12, "channel_app_7d", 1),
        ("b", 12, "last_nps", 9.0),
        ("b", 12, "stage", "none"),
        ("b", 12, "stage_index", -1),
        ("b", 12, "segment", "unknown"),
    ],
)
def test_feature_values(
    frame: pd.DataFrame, customer: str, cutoff_day: int, feature: str, expected: object
) -> None:
    assert frame.loc[(customer, cutoff_day), feature] == expected


def test_no_snapshot_before_first_event(frame: pd.DataFrame) -> None:
    # b's first event is on 5 Jan: no rows for b at 3 or 4 Jan
    assert ("b", 3) not in frame.index
    assert ("b", 4) not in frame.index


def test_no_missing_values(frame: pd.DataFrame, catalog: FeatureCatalog) -> None:
    assert not frame[catalog.names].isna().any().any()
    numeric = frame[[f.name for f in catalog.features if f.dtype != "string"]]
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()


def test_row_order_in_the_file_does_not_matter(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    cutoffs = [datetime(2025, 1, 12, tzinfo=UTC)]
    forward = compute_features(events_table(LOG), cutoffs, journey_map, catalog)
    backward = compute_features(events_table(LOG[::-1]), cutoffs, journey_map, catalog)
    pd.testing.assert_frame_equal(forward, backward)


def test_single_event_customer(journey_map: JourneyMap, catalog: FeatureCatalog) -> None:
    log = [{"customer_id": "solo", "timestamp": day(1), "event_type": "purchase", "value": 5.0}]
    out = compute_features(events_table(log), [day(2)], journey_map, catalog)
    row = out.iloc[0]
    assert row["events_total"] == 1
    assert row["tenure_days"] == 1.0
    assert row["days_since_last_event"] == 1.0
    assert row["events_trend_30d"] == 2.0  # (1 + 1) / (0 + 1)
    assert row["previous_stage"] == "none"


def test_customer_with_only_marketing_gets_no_row(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    log = [{"customer_id": "x", "timestamp": day(1), "event_type": "action_content_email"}]
    out = compute_features(events_table(log), [day(2)], journey_map, catalog)
    assert out.empty


def test_build_snapshots_writes_and_replaces(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    lake = write_lake(tmp_path / "lake", events_table(LOG))
    out = tmp_path / "features" / "journey_features"
    report = build_snapshots(lake, out, journey_map, catalog)
    assert report.customers == 2
    assert report.as_of == datetime(2025, 1, 10, 12, 0, 0, 1, tzinfo=UTC)  # last activity + 1 µs
    first = pd.read_parquet(out)
    assert len(first) == report.rows
    assert list(first.columns[:2]) == ["customer_id", "event_timestamp"]
    again = build_snapshots(lake, out, journey_map, catalog)
    assert again.rows == report.rows
    assert sorted(p.name for p in out.parent.iterdir()) == ["journey_features"]


def test_build_on_empty_lake_is_a_clear_error(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    with pytest.raises(FeatureBuildError, match="run `journeyml events ingest` first"):
        build_snapshots(tmp_path / "lake", tmp_path / "out", journey_map, catalog)
    assert not (tmp_path / "out").exists()


def test_failed_build_keeps_previous_snapshots(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    lake = write_lake(tmp_path / "lake", events_table(LOG))
    out = tmp_path / "features" / "journey_features"
    build_snapshots(lake, out, journey_map, catalog)
    before = pd.read_parquet(out)
    with pytest.raises(FeatureBuildError, match="before the first event"):
        build_snapshots(lake, out, journey_map, catalog, as_of=datetime(2024, 1, 1, tzinfo=UTC))
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)


def test_plan_snapshots_weekly_then_now() -> None:
    plan = plan_snapshots(day(1, 15), day(20, 8), cadence_days=7, warmup_days=7)
    assert [c.day for c in plan.cutoffs] == [8, 15]
    assert plan.as_of > day(20, 8)


def test_catalog_names_unique_and_described(catalog: FeatureCatalog) -> None:
    assert len(set(catalog.names)) == len(catalog.names)
    assert all(f.description for f in catalog.features)
    assert "n_purchase_30d" in catalog.names
    assert "channel_web_7d" in catalog.names


def test_catalog_follows_config(journey_map: JourneyMap) -> None:
    settings = FeatureSettings(windows_days=[14], count_event_types=["purchase"], channels=["web"])
    names = build_catalog(journey_map, settings).names
    assert "n_purchase_14d" in names
    assert "n_page_view_14d" not in names
    assert "events_7d" not in names


def test_query_transpiles_to_spark(catalog: FeatureCatalog) -> None:
    spark = to_spark_sql(feature_query(catalog))
    # parses back as Spark SQL, keeps the window definitions, and loses no feature
    parsed = sqlglot.parse_one(spark, read="spark")
    assert parsed is not None
    assert "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW" in spark
    selected = {e.alias_or_name for e in parsed.expressions}
    assert set(catalog.names) <= selected
    # Spark has neither ASOF JOIN nor EPOCH_US: range joins on the cell's validity instead
    assert "ASOF" not in spark.upper()
    assert "EPOCH_US" not in spark.upper()
    assert spark.count("COALESCE(c.next_r, 9223372036854775807)") == 2


def _run_query(
    events: pa.Table,
    cutoffs: list[datetime],
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    count_bits: int,
) -> pd.DataFrame:
    con = connect(memory_limit="1GB")
    try:
        con.register("ev_arrow", events)
        register_inputs(
            con, journey_map, "SELECT * FROM ev_arrow", None, catalog.settings.profile_attributes
        )
        register_snapshots_for_cutoffs(con, cutoffs)
        return (
            con.execute(feature_query(catalog, count_bits=count_bits))
            .df()
            .pipe(by_customer_and_time)
        )
    finally:
        con.close()


def test_packed_counts_are_exact_at_their_width(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    # 7 events fill 3-bit counts to the top; their neighbours in the packed column stay put
    log = [
        {"customer_id": "p", "timestamp": day(d), "event_type": "purchase", "value": 10.0 * d}
        for d in range(1, 7)
    ] + [{"customer_id": "p", "timestamp": day(6, 13), "event_type": "page_view"}]
    assert count_bits_for(len(log)) == 3
    cutoffs = [day(7), day(20)]
    tight = _run_query(events_table(log), cutoffs, journey_map, catalog, 3)
    row = tight.iloc[0]
    assert (row["events_7d"], row["events_total"], row["n_purchase_7d"]) == (7, 7, 6)
    assert (row["conversions_total"], row["n_page_view_7d"], row["value_sum_7d"]) == (6, 1, 210.0)
    wide = _run_query(events_table(log), cutoffs, journey_map, catalog, DEFAULT_COUNT_BITS)
    pd.testing.assert_frame_equal(tight, wide)


def test_window_edges_at_a_snapshot_that_is_not_midnight(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    # a look-back boundary inside a day: that day is cut at the exact microsecond
    at = datetime(2025, 2, 10, 15, 30, 0, 250_000, tzinfo=UTC)
    edge = at - timedelta(days=7)
    log = [
        {"customer_id": "m", "timestamp": edge - timedelta(microseconds=1), "event_type": "login"},
        {"customer_id": "m", "timestamp": edge, "event_type": "purchase", "value": 3.0},
        {"customer_id": "m", "timestamp": edge + timedelta(hours=1), "event_type": "login"},
        {"customer_id": "m", "timestamp": at - timedelta(microseconds=1), "event_type": "login"},
        {"customer_id": "m", "timestamp": at, "event_type": "complaint"},
    ]
    row = _run_query(events_table(log), [at], journey_map, catalog, DEFAULT_COUNT_BITS).iloc[0]
    assert (row["events_7d"], row["n_login_7d"], row["events_total"]) == (3, 2, 4)
    assert (row["value_sum_7d"], row["complaints_total"]) == (3.0, 0)
    assert row["days_since_last_event"] == 1 / 86_400_000_000
    assert row["last_event_1"] == "login"


def test_event_types_unknown_to_the_journey_map(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    log = [
        {"customer_id": "u", "timestamp": day(1), "event_type": "page_view"},
        {"customer_id": "u", "timestamp": day(2), "event_type": "warranty_claim"},
    ]
    row = compute_features(events_table(log), [day(3)], journey_map, catalog).iloc[0]
    # an unknown event is still customer activity, but moves nobody between stages
    assert row["events_7d"] == 2
    assert row["stage"] == "awareness"
    assert row["last_event_1"] == "warranty_claim"


def test_unparseable_survey_score_is_ignored(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    log = [
        {
            "customer_id": "u",
            "timestamp": day(1),
            "event_type": "nps_response",
            "properties": '{"score": 7}',
        },
        {
            "customer_id": "u",
            "timestamp": day(2),
            "event_type": "nps_response",
            "properties": '{"score": "n/a"}',
        },
    ]
    row = compute_features(events_table(log), [day(3)], journey_map, catalog).iloc[0]
    assert row["last_nps"] == 7.0
