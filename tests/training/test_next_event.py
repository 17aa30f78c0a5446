"""The next step after every event: labels by hand on a literal log, point-in-time inputs,
the Markov baselines' backoff, and the model on a foreign clickstream and a mapped
date-only log."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.catalog import build_catalog
from features.pipeline import connect, register_inputs
from features.sequence import START_TYPE, SequenceSpec, infer_context_properties
from features.settings import FeatureSettings, load_feature_settings
from journeyml.config import JourneyMap, load_journey_map
from tests.features.helpers import events_table, write_lake
from tests.foreign_logs import generate_clickstream, generate_purchase_log
from training.models import BackoffMarkovBaseline
from training.next_event import (
    NO_EVENT,
    SESSION_END,
    AnchorData,
    build_anchor_data,
    fit_next_event,
    open_anchor_inputs,
    time_split,
)

T = datetime(2025, 3, 1, 12, tzinfo=UTC)
D = timedelta(days=1)
M = timedelta(minutes=1)


def ev(customer: str, at: datetime, event_type: str, event_id: str, session: str | None = None):
    return {
        "customer_id": customer,
        "timestamp": at,
        "event_type": event_type,
        "event_id": event_id,
        "session_id": session,
    }


LOG = [
    # a: two sessions from the log's own session ids
    ev("a", T, "page_view", "a0", "s1"),
    ev("a", T + 1 * M, "product_view", "a1", "s1"),
    ev("a", T + 2 * M, "add_to_cart", "a2", "s1"),
    ev("a", T + 2 * D, "page_view", "a3", "s2"),
    ev("a", T + 2 * D + 1 * M, "product_view", "a4", "s2"),
    # b: no session ids: a session ends after 30 minutes without an event
    ev("b", T, "page_view", "b0"),
    ev("b", T + 10 * M, "purchase", "b1"),
    ev("b", T + 60 * M, "page_view", "b2"),
    ev("b", T + 20 * D, "page_view", "b3"),
    # c: two events at one moment (a date-only log): only the later one (by id) is an anchor
    ev("c", T, "product_view", "c1"),
    ev("c", T, "page_view", "c0"),
    ev("c", T + 1 * D, "add_to_cart", "c2"),
    # d: its last event is within the horizon of the log's end: censored
    ev("d", T + 95 * D, "page_view", "d0"),
    # z: keeps the log going
    ev("z", T - 100 * D, "page_view", "z0"),
    ev("z", T + 100 * D, "page_view", "z1"),
]

# event id -> (next, gap in seconds, abandon); None / NaN where unknown
EXPECTED: dict[str, tuple[str | None, float | None, float | None]] = {
    "a0": ("product_view", 60.0, 1.0),
    "a1": ("add_to_cart", 60.0, 1.0),
    "a2": (SESSION_END, 2 * 86_400 - 120.0, 1.0),
    "a3": ("product_view", 60.0, 1.0),
    "a4": (NO_EVENT, None, 1.0),
    "b0": ("purchase", 600.0, 0.0),
    "b1": (SESSION_END, 3000.0, 0.0),  # the next event is 50 minutes later: a new session
    "b2": (NO_EVENT, 20 * 86_400 - 3600.0, 1.0),  # the next one is past the 14-day horizon
    "b3": (NO_EVENT, None, 1.0),
    "c1": (SESSION_END, 86_400.0, 1.0),
    "c2": (NO_EVENT, None, 1.0),
    "d0": (None, None, None),
    "z0": (NO_EVENT, 200 * 86_400.0, 1.0),
    "z1": (None, None, None),
}


@pytest.fixture(scope="module")
def literal(tmp_path_factory: pytest.TempPathFactory, journey_map: JourneyMap) -> AnchorData:
    lake = write_lake(tmp_path_factory.mktemp("next-event") / "lake", events_table(LOG))
    catalog = build_catalog(journey_map, FeatureSettings())
    con = open_anchor_inputs(lake, journey_map, catalog)
    try:
        return build_anchor_data(
            con, journey_map, catalog, SequenceSpec(last_k=3), "next_step_v1", None
        )
    finally:
        con.close()


def test_labels_by_hand(literal: AnchorData, journey_map: JourneyMap) -> None:
    assert journey_map.horizons.next_step_days == 14
    rows = literal.rows.set_index("event_id")
    assert sorted(rows.index) == sorted(EXPECTED)  # c0 shares its moment with c1: no anchor
    for event_id, (nxt, gap, abandon) in EXPECTED.items():
        row = rows.loc[event_id]
        assert (None if pd.isna(row["next"]) else row["next"]) == nxt, event_id
        assert (None if pd.isna(row["gap_seconds"]) else row["gap_seconds"]) == gap, event_id
        assert (None if pd.isna(row["abandon"]) else row["abandon"]) == abandon, event_id


def test_sequence_inputs_by_hand(literal: AnchorData) -> None:
    rows = literal.rows.set_index("event_id")
    a4 = rows.loc["a4"]
    assert (a4["seq_type_0"], a4["seq_type_1"], a4["seq_type_2"]) == (
        "product_view", "page_view", "add_to_cart",
    )  # fmt: skip
    assert a4["seq_prev_in_session"] == "page_view"
    assert (a4["seq_position"], a4["seq_session_seconds"]) == (2, 60.0)
    assert a4["seq_gap_1"] == 60.0 and a4["seq_gap_2"] == 2 * 86_400 - 120.0
    assert a4["seq_seconds_since_previous_session"] == 2 * 86_400 - 120.0
    a3 = rows.loc["a3"]
    assert a3["seq_prev_in_session"] == START_TYPE and a3["seq_position"] == 1
    assert rows.loc["b1"]["seq_session_converted"] == 1
    assert rows.loc["b0"]["seq_session_converted"] == 0  # the purchase comes after b0
    # c1 is the later of its moment: it sees c0 before it
    assert (rows.loc["c1"]["seq_type_0"], rows.loc["c1"]["seq_type_1"]) == (
        "product_view", "page_view",
    )  # fmt: skip
    assert (rows.loc["a0"]["seq_hour"], rows.loc["a0"]["seq_weekday"]) == (12, 5)  # a Saturday
    # the journey features are the feature query's, as of the anchor's moment
    assert rows.loc["a4"]["events_total"] == 5
    assert rows.loc["c1"]["events_total"] == 2


def test_markov_backs_off_to_shorter_histories() -> None:
    x = pd.DataFrame({"s0": ["a", "a", "a", "b", "b"], "s1": ["x", "x", "y", "x", "x"]})
    codes = np.array([0, 0, 1, 1, 1])
    chain = BackoffMarkovBaseline(("s0", "s1"), strength=2.0).fit(x, codes, 3)
    p = chain.predict_proba(pd.DataFrame({"s0": ["a", "a", "c"], "s1": ["x", "never", "never"]}))
    assert np.allclose(p.sum(axis=1), 1.0)
    prior = chain.prior_
    assert np.allclose(p[2], prior)  # nothing known: the class prior
    first = (np.array([2, 1, 0]) + 2 * prior) / (3 + 2)  # P(. | a)
    assert np.allclose(p[1], first)  # (a, never) backs off to P(. | a)
    assert np.allclose(p[0], (np.array([2, 0, 0]) + 2 * first) / (2 + 2))
    again = BackoffMarkovBaseline.from_json(chain.to_json())
    assert np.allclose(again.predict_proba(x), chain.predict_proba(x))


@pytest.fixture(scope="module")
def clickstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, JourneyMap, Path]:
    """A small foreign clickstream, mapped by ``journeyml init`` and ingested."""
    root = tmp_path_factory.mktemp("clicks")
    log = generate_clickstream(root / "log", n_users=200, days=91, seed=3)
    cli = str(Path(sys.executable).parent / "journeyml")
    cfg, lake = root / "cfg", root / "lake"
    subprocess.run(
        [cli, "init", str(log.events_csv), *log.map_args(), "--out", str(cfg)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [cli, "--config-dir", str(cfg), "events", "ingest", str(log.events_csv),
         "--out", str(lake)],
        check=True, capture_output=True,
    )  # fmt: skip
    return lake, load_journey_map(cfg / "journeys.yaml"), cfg


def clickstream_anchors(
    lake: Path, journey_map: JourneyMap, cfg: Path, events_sql: str | None = None
) -> AnchorData:
    catalog = build_catalog(journey_map, load_feature_settings(str(cfg / "features.yaml")))
    if events_sql is None:
        con = open_anchor_inputs(lake, journey_map, catalog)
    else:
        con = connect(memory_limit="1GB")
        register_inputs(con, journey_map, events_sql, None, catalog.settings.profile_attributes)
    try:
        spec = SequenceSpec(properties=("page", "platform"))
        return build_anchor_data(con, journey_map, catalog, spec, "next_step_v1", None)
    finally:
        con.close()


def test_context_properties_are_found_on_the_clickstream(clickstream) -> None:
    lake, journey_map, cfg = clickstream
    catalog = build_catalog(journey_map, load_feature_settings(str(cfg / "features.yaml")))
    con = open_anchor_inputs(lake, journey_map, catalog)
    try:
        assert infer_context_properties(con) == ("page", "platform")
    finally:
        con.close()


def test_no_input_sees_the_future(clickstream) -> None:
    """An anchor's inputs are the same when the log ends at the anchor."""
    lake, journey_map, cfg = clickstream
    full = clickstream_anchors(lake, journey_map, cfg)
    rows = full.rows[full.rows["next"].notna()]
    picked = rows.sample(6, random_state=0)
    glob = str(lake / "events" / "**" / "*.parquet")
    for _, anchor in picked.iterrows():
        cut = anchor["ts"].isoformat()
        truncated = clickstream_anchors(
            lake, journey_map, cfg,
            f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
            f" WHERE customer_id = '{anchor['customer_id']}' AND timestamp <= '{cut}'",
        )  # fmt: skip
        last = truncated.rows.iloc[-1]
        assert last["event_id"] == anchor["event_id"]
        for f in full.features:
            a, b = anchor[f], last[f]
            assert (pd.isna(a) and pd.isna(b)) or a == b, (f, a, b)


def test_the_model_learns_the_clickstream(clickstream) -> None:
    lake, journey_map, cfg = clickstream
    data = clickstream_anchors(lake, journey_map, cfg)
    masks = time_split(data.rows, 0.3, 0.2, journey_map.horizons.next_step_days)
    # the purge: no training label reaches into the test period
    t = data.rows["t"].to_numpy()
    test_start = t[masks["test"]].min()
    gap = data.rows["gap_seconds"].fillna(14 * 86_400).to_numpy() * 1e6
    assert (t[masks["train"]] + np.minimum(gap[masks["train"]], 14 * 86_400e6) < test_start).all()
    fit = fit_next_event(
        data, masks, 16, {"learning_rate": 0.1, "num_leaves": 7, "max_bin": 31}, 60, 10, 0, 1
    )
    m = fit.metrics
    assert SESSION_END in fit.model.classes_ and NO_EVENT in fit.model.classes_
    assert np.allclose(fit.test_proba.sum(axis=1), 1.0)
    # far better than the class prior, on the test period
    assert m["top3_accuracy"] > m["baseline_prior_top3_accuracy"] + 0.1
    assert m["log_loss"] < m["baseline_prior_log_loss"] - 0.3
    assert m["baseline_markov2_log_loss"] < m["baseline_prior_log_loss"]
    assert 0.0 < m["abandon_mean_prediction"] < 1.0 and m["abandon_auc"] > 0.6


def test_a_mapped_date_only_log_without_sessions(tmp_path: Path) -> None:
    """A date-only order export: sessions come from gaps (one a day), and orders of one day
    are one moment, so a next step is always another day's."""
    log = generate_purchase_log(tmp_path / "log", n_customers=60, days=200, seed=2)
    cli = str(Path(sys.executable).parent / "journeyml")
    cfg, lake = tmp_path / "cfg", tmp_path / "lake"
    subprocess.run(
        [cli, "init", str(log.events_csv), *log.map_args(), "--out", str(cfg)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [cli, "--config-dir", str(cfg), "events", "ingest", str(log.events_csv),
         "--out", str(lake)],
        check=True, capture_output=True,
    )  # fmt: skip
    journey_map = load_journey_map(cfg / "journeys.yaml")
    catalog = build_catalog(journey_map, load_feature_settings(str(cfg / "features.yaml")))
    con = open_anchor_inputs(lake, journey_map, catalog)
    try:
        data = build_anchor_data(con, journey_map, catalog, SequenceSpec(), "next_step_v1", None)
        days = con.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT customer_id, timestamp FROM events)"
        ).fetchall()[0][0]
    finally:
        con.close()
    rows = data.rows
    assert len(rows) == days
    assert set(rows["next"].dropna()) <= {SESSION_END, NO_EVENT}
    assert (rows["seq_position"] >= 1).all()
    assert (rows.loc[rows["next"] == SESSION_END, "gap_seconds"] >= 86_400).all()


def test_large_logs_are_sampled_by_customer(
    literal: AnchorData, journey_map: JourneyMap, tmp_path: Path
) -> None:
    lake = write_lake(tmp_path / "lake", events_table(LOG))
    catalog = build_catalog(journey_map, FeatureSettings())
    con = open_anchor_inputs(lake, journey_map, catalog)
    try:
        sampled = build_anchor_data(
            con, journey_map, catalog, SequenceSpec(), "next_step_v1", 6, journey_inputs=False
        )
    finally:
        con.close()
    assert sampled.sampled_share < 1.0
    kept = set(sampled.rows["customer_id"])
    assert kept < set(literal.rows["customer_id"])
    # whole journeys are kept: every anchor of a kept customer
    for c in kept:
        assert (sampled.rows["customer_id"] == c).sum() == (literal.rows["customer_id"] == c).sum()


def test_trained_registered_and_gated_beside_its_markov_baselines(
    sim_ws, journey_map: JourneyMap, tmp_path: Path
) -> None:
    from tests.training.conftest import small_config
    from training.bundle import NextEventScorer, load_model_bundle
    from training.pipeline import train_models
    from training.registry import decide_promotion
    from training.tracking import CHALLENGER, resolve_tracking, use_tracking

    config = small_config(tmp_path)
    target = resolve_tracking(config.tracking, sim_ws.root)
    (result,) = train_models(
        sim_ws.root, ["next_event"], journey_map, sim_ws.settings, config, target
    )
    m = result.metrics
    for name in ("markov1", "markov2", "prior"):
        assert f"baseline_{name}_top3_accuracy" in m and f"baseline_{name}_log_loss" in m
    assert 0.0 <= m["abandon_ece"] <= 1.0
    use_tracking(target)
    bundle = load_model_bundle(f"models:/{result.registered_name}@{CHALLENGER}")
    assert bundle.kind == "next_event"
    assert set(bundle.manifest["files"]) == {"model.txt", "abandon.txt", "encoders.json",
                                              "calibrator.json"}  # fmt: skip
    row = {f: None for f in bundle.features} | {"seq_type_0": "add_to_cart"}
    proba, p_abandon = NextEventScorer(bundle).predict([row])
    assert proba.shape == (1, len(bundle.classes)) and abs(proba.sum() - 1) < 1e-9
    assert p_abandon is not None and 0.0 < p_abandon[0] < 1.0
    decision = decide_promotion("next_event", m, config.gate("next_event"), None, None)
    beats = all(
        m[metric] > m[f"baseline_{b}_{metric}"] if metric != "log_loss"
        else m[metric] < m[f"baseline_{b}_{metric}"]
        for b in ("markov1", "markov2", "prior") for metric in ("top3_accuracy", "log_loss")
    )  # fmt: skip
    assert decision.promote is beats, decision.reasons
