"""Point-in-time correctness: nothing at or after a cutoff can change features at that cutoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.catalog import FeatureCatalog, build_catalog
from features.pipeline import build_snapshots
from features.settings import FeatureSettings, SnapshotSettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import JourneyMap
from tests.features.helpers import compute_features, events_table, write_lake

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CUTOFF = T0 + timedelta(days=30)
TYPES = [
    "page_view",
    "product_view",
    "purchase",
    "login",
    "complaint",
    "support_contact",
    "email_open",
    "nps_response",
    "action_discount_offer",
    "referral",
]


@st.composite
def event(draw: st.DrawFn, after: bool) -> dict[str, object]:
    low, high = (30 * 24 * 60, 60 * 24 * 60) if after else (0, 30 * 24 * 60 - 1)
    minute = draw(st.integers(low, high))
    etype = draw(st.sampled_from(TYPES))
    return {
        "event_id": f"{'f' if after else 'p'}{draw(st.integers(0, 10**9))}",
        "customer_id": draw(st.sampled_from(["c0", "c1", "c2"])),
        "timestamp": T0 + timedelta(minutes=minute),
        "event_type": etype,
        "channel": draw(st.sampled_from(["web", "app", "email", None])),
        "value": draw(st.floats(1, 500)) if etype == "purchase" else None,
        "session_id": draw(st.sampled_from(["s1", "s2", "s3", None])),
        "properties": f'{{"score": {draw(st.integers(0, 10))}}}'
        if etype == "nps_response"
        else None,
    }


def _unique(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    seen: dict[object, dict[str, object]] = {}
    for r in rows:
        seen.setdefault(r["event_id"], r)
    return list(seen.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(event(after=False), min_size=1, max_size=25),
    future=st.lists(event(after=True), max_size=15),
    changed_future=st.lists(event(after=True), max_size=15),
    at_cutoff=st.lists(st.sampled_from(TYPES), max_size=3),
)
def test_events_at_or_after_the_cutoff_never_change_features(
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    past: list[dict[str, object]],
    future: list[dict[str, object]],
    changed_future: list[dict[str, object]],
    at_cutoff: list[str],
) -> None:
    # events exactly at the cutoff belong to the future: features use events strictly before
    exact = [
        {"event_id": f"x{i}", "customer_id": "c0", "timestamp": CUTOFF, "event_type": t}
        for i, t in enumerate(at_cutoff)
    ]
    cutoffs = [T0 + timedelta(days=10), CUTOFF]
    one = compute_features(
        events_table(_unique(past + future + exact)), cutoffs, journey_map, catalog
    )
    # the other world: the same past, a different future (added, removed, altered events)
    other = compute_features(
        events_table(_unique(past + changed_future)), cutoffs, journey_map, catalog
    )
    pd.testing.assert_frame_equal(one, other)


def test_historical_retrieval_through_feast_is_point_in_time(
    tmp_path: Path, journey_map: JourneyMap
) -> None:
    # weekly snapshots from 7 days after the first event (2 Jan): 9, 16, 23 Jan
    settings = FeatureSettings(snapshots=SnapshotSettings(cadence_days=7, warmup_days=7))
    catalog = build_catalog(journey_map, settings)
    rows = [
        {"customer_id": "c0", "timestamp": T0 + timedelta(days=d), "event_type": t}
        for d, t in [(1, "page_view"), (5, "signup"), (12, "purchase"), (20, "complaint")]
    ]
    ws = Workspace(tmp_path)
    write_lake(ws.lake, events_table(rows))
    report = build_snapshots(ws.lake, ws.snapshots, journey_map, catalog)
    store = open_store(StoreSettings(), ws)
    apply_definitions(store, catalog, ws)
    # two weekly snapshots and the "now" snapshot just after the last event
    cutoffs = [T0 + timedelta(days=8), T0 + timedelta(days=15), report.as_of]
    entity_df = pd.DataFrame({"customer_id": ["c0"] * 3, "event_timestamp": cutoffs})
    training = (
        store.get_historical_features(
            entity_df=entity_df, features=store.get_feature_service("churn_v1")
        )
        .to_df()
        .sort_values("event_timestamp")
    )
    direct = compute_features(events_table(rows), cutoffs, journey_map, catalog)
    assert training["stage"].tolist() == ["consideration", "purchase", "retention"]
    assert training["conversions_total"].tolist() == [0, 1, 1]
    assert training["complaints_total"].tolist() == [0, 0, 1]
    for name in ["events_7d", "days_since_last_event", "stage", "last_event_2"]:
        assert training[name].tolist() == direct[name].tolist(), name
