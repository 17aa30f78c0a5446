"""The SQL feature pipeline and the plain pandas peer of the build benchmark agree on every
feature, on a random log built to hit the edge cases (ties at the cutoff and at window edges, at
midnight and in the middle of a day, two events at the same instant, single-event and
marketing-only customers, survey scores good and bad, missing profiles), with the packed counts
at their default width and as narrow as the data allows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from benchmarks.pandas_features import compute_pandas_features
from features.catalog import FeatureCatalog
from features.pipeline import (
    DEFAULT_COUNT_BITS,
    connect,
    count_bits_for,
    feature_query,
    register_inputs,
    register_snapshots_for_cutoffs,
)
from journeyml.config import JourneyMap
from tests.features.helpers import by_customer_and_time, events_table

START = datetime(2025, 1, 1, tzinfo=UTC)
# midnight cutoffs, and one in the middle of a day (like the "now" snapshot): its look-back
# boundaries cut days at the exact microsecond
ODD = START + timedelta(days=75, hours=13, minutes=5, seconds=7, microseconds=123_456)
CUTOFFS = [*(START + timedelta(days=d) for d in (10, 31, 45, 60, 92, 120)), ODD]
TYPES = [
    "page_view",
    "ad_click",
    "signup",
    "product_view",
    "add_to_cart",
    "checkout_start",
    "payment_failed",
    "purchase",
    "login",
    "support_contact",
    "complaint",
    "referral",
    "review_posted",
    "email_open",
    "email_click",
    "offer_redeemed",
    "nps_response",
    "csat_response",
    "cancel_subscription",
    "warranty_claim",  # unknown to the journey map: activity without a stage
    "action_discount_offer",
    "action_content_email",
]
SCORES = [
    '{"score": 9}',
    '{"score": 0}',
    '{"score": "7"}',
    '{"score": "n/a"}',
    '{"other": 1}',
    None,
]


def random_log(seed: int = 0, customers: int = 300) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for c in range(customers):
        cid = f"c{c:04d}"
        n = int(rng.integers(1, 30))
        # every 5th customer ties on whole hours, so events land exactly on cutoffs and edges
        if c % 5 == 0:
            offsets = rng.integers(0, 125 * 24, n) * 3600 * 10**6
        else:
            offsets = rng.integers(0, 125 * 86400 * 10**6, n)
        for j, off in enumerate(offsets):
            et = str(rng.choice(TYPES))
            ts = START + timedelta(microseconds=int(off))
            row: dict[str, object] = {
                "event_id": f"{cid}-{int(rng.integers(0, 10**6)):06d}-{j}",
                "customer_id": cid,
                "timestamp": ts,
                "event_type": et,
                "channel": rng.choice(["web", "app", "email", "store", None, "fax"]),
                "session_id": None if rng.random() < 0.3 else f"{cid}-s{int(rng.integers(0, 6))}",
            }
            if et in ("purchase", "checkout_start") and rng.random() < 0.8:
                row["value"] = float(np.round(rng.gamma(2.0, 30.0), 2))
            if et in ("nps_response", "csat_response"):
                row["properties"] = SCORES[int(rng.integers(0, len(SCORES)))]
            if et.startswith("action_"):
                row["properties"] = json.dumps({"action_id": et[7:]})
            rows.append(row)
    cutoff = CUTOFFS[2]
    rows += [
        # the tie at the cutoff instant and at the 7- and 30-day window edges
        {"customer_id": "tie", "timestamp": cutoff - timedelta(days=40), "event_type": "login"},
        {"customer_id": "tie", "timestamp": cutoff - timedelta(days=30), "event_type": "purchase"},
        {"customer_id": "tie", "timestamp": cutoff - timedelta(days=7), "event_type": "signup"},
        {"customer_id": "tie", "timestamp": cutoff, "event_type": "complaint"},
        # two events at the same instant: the event_id decides the order
        {"customer_id": "twin", "timestamp": CUTOFFS[0], "event_type": "purchase"},
        {
            "customer_id": "twin",
            "timestamp": START + timedelta(days=2),
            "event_type": "referral",
            "event_id": "b",
            "session_id": "s",
        },
        {
            "customer_id": "twin",
            "timestamp": START + timedelta(days=2),
            "event_type": "ad_click",
            "event_id": "a",
            "session_id": "s",
        },
        {"customer_id": "solo", "timestamp": START + timedelta(days=3), "event_type": "purchase"},
        {"customer_id": "mkt", "timestamp": START, "event_type": "action_content_email"},
        {"customer_id": "mkt", "timestamp": START, "event_type": "email_open"},
        {"customer_id": "only_mkt", "timestamp": START, "event_type": "action_upsell_offer"},
        # the same ties at the edges of the mid-day cutoff's windows
        {"customer_id": "odd", "timestamp": ODD - timedelta(days=90), "event_type": "login"},
        {
            "customer_id": "odd",
            "timestamp": ODD - timedelta(days=30, microseconds=1),
            "event_type": "purchase",
            "value": 4.5,
        },
        {
            "customer_id": "odd",
            "timestamp": ODD - timedelta(days=30),
            "event_type": "purchase",
            "value": 2.5,
        },
        {"customer_id": "odd", "timestamp": ODD - timedelta(days=7), "event_type": "signup"},
        {"customer_id": "odd", "timestamp": ODD, "event_type": "complaint"},
    ]
    table = events_table(rows)
    ids = [r.get("event_id") or f"x{i}" for i, r in enumerate(rows)]
    return table.set_column(0, "event_id", pa.array(ids, pa.string()))


def random_customers(seed: int = 0, customers: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    ids = [f"c{c:04d}" for c in range(0, customers, 2)] + ["tie", "ghost"]
    return pd.DataFrame(
        {
            "customer_id": ids,
            "segment": rng.choice(["value", "premium", None], len(ids)),
            "plan": rng.choice(["free", "pro"], len(ids)),
            # no `region` column: that profile feature reads "unknown" for everyone
            "marketing_opt_out": rng.random(len(ids)) < 0.2,
        }
    )


def sql_features(
    events: pa.Table,
    customers_path: Path,
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    count_bits: int = DEFAULT_COUNT_BITS,
) -> pd.DataFrame:
    con = connect(memory_limit="1GB")
    try:
        con.register("ev_arrow", events)
        register_inputs(
            con,
            journey_map,
            "SELECT * FROM ev_arrow",
            customers_path,
            catalog.settings.profile_attributes,
        )
        register_snapshots_for_cutoffs(con, CUTOFFS)
        query = feature_query(catalog, journey_map.experience.score_property, count_bits)
        return con.execute(query).df().pipe(by_customer_and_time)
    finally:
        con.close()


def mismatches(sql: pd.DataFrame, ref: pd.DataFrame, catalog: FeatureCatalog) -> dict[str, str]:
    """Features that differ, each with its first disagreeing row."""
    bad: dict[str, str] = {}
    for spec in catalog.features:
        a, b = sql[spec.name], ref[spec.name]
        if spec.dtype == "float64":
            x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
            # 1e-9 relative; the absolute floor absorbs cancellation in window sums of money
            differ = ~np.isclose(x, y, rtol=1e-9, atol=1e-9)
        else:
            differ = (a.astype(str) != b.astype(str)).to_numpy()
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            key = (sql["customer_id"].iat[i], sql["event_timestamp"].iat[i])
            bad[spec.name] = (
                f"{differ.sum()} rows, first {key}: sql={a.iat[i]!r} pandas={b.iat[i]!r}"
            )
    return bad


@pytest.fixture(scope="module")
def frames(
    tmp_path_factory: pytest.TempPathFactory, journey_map: JourneyMap, catalog: FeatureCatalog
) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = random_log()
    customers = random_customers()
    path = tmp_path_factory.mktemp("profile") / "customers.parquet"
    customers.to_parquet(path)
    sql = sql_features(events, path, journey_map, catalog)
    sql["event_timestamp"] = sql["event_timestamp"].astype("datetime64[us, UTC]")
    ref = compute_pandas_features(events.to_pandas(), customers, CUTOFFS, journey_map, catalog)
    return sql, ref


def test_same_snapshot_rows(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    sql, ref = frames
    assert len(sql) > 1000
    keys = ["customer_id", "event_timestamp"]
    pd.testing.assert_frame_equal(sql[keys], ref[keys])
    assert "only_mkt" not in set(ref["customer_id"])  # marketing alone makes no snapshot


def test_every_feature_agrees(
    frames: tuple[pd.DataFrame, pd.DataFrame], catalog: FeatureCatalog
) -> None:
    sql, ref = frames
    assert list(ref.columns) == ["customer_id", "event_timestamp", *catalog.names]
    assert mismatches(sql, ref, catalog) == {}


def test_every_feature_agrees_with_counts_packed_to_the_busiest_customer(
    tmp_path: Path,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
) -> None:
    # what build_snapshots runs: counts as narrow as the busiest customer allows
    events = random_log()
    busiest = max(pd.Series(events.column("customer_id").to_pylist()).value_counts())
    path = tmp_path / "customers.parquet"
    random_customers().to_parquet(path)
    tight = sql_features(events, path, journey_map, catalog, count_bits_for(busiest))
    tight["event_timestamp"] = tight["event_timestamp"].astype("datetime64[us, UTC]")
    _, ref = frames
    assert count_bits_for(busiest) < DEFAULT_COUNT_BITS
    assert mismatches(tight, ref, catalog) == {}


def test_log_reaches_the_edge_cases(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    # guards the fixture itself: these rows are what the agreement above is about
    _, ref = frames
    row = ref.set_index(["customer_id", "event_timestamp"])
    tie = row.loc[("tie", pd.Timestamp(CUTOFFS[2]))]
    assert (tie["events_7d"], tie["events_30d"], tie["complaints_total"]) == (1, 2, 0)
    twin = row.loc[("twin", pd.Timestamp(CUTOFFS[0]))]
    assert (twin["last_event_1"], twin["stage"], twin["sessions_30d"]) == (
        "referral",
        "advocacy",
        1,
    )
    assert set(ref["last_nps"]) >= {-1.0, 0.0, 7.0, 9.0}
    assert set(ref["segment"]) >= {"unknown", "value"}
    assert set(ref["region"]) == {"unknown"}
    assert set(ref["marketing_opt_out"]) == {"true", "false", "unknown"}
    odd = row.loc[("odd", pd.Timestamp(ODD))]
    assert (odd["events_7d"], odd["events_30d"], odd["events_90d"]) == (1, 2, 4)
    assert (odd["value_sum_30d"], odd["complaints_total"]) == (2.5, 0)
