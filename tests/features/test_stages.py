"""The journey map's stage machine: stages move forward on the customer's own events, and back
only on the events the map names as regressions (``features.pipeline.stage_machine``, the one
definition that features, journey analytics and labels use)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.journey import open_journeys
from features.catalog import build_catalog
from features.pipeline import connect, register_inputs, stage_machine
from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from journeyml.events.config import EventsConfig
from journeyml.events.ingest import ingest_events
from tests.features.helpers import compute_features, day, events_table
from tests.foreign_logs import generate_clickstream

# the shipped map (configs/journeys.yaml), restated so the table below reads on its own
MAP = JourneyMap.model_validate(
    {
        "stages": ["awareness", "consideration", "purchase", "retention", "advocacy"],
        "stage_events": {
            "awareness": ["ad_click", "page_view"],
            "consideration": ["signup", "login", "product_view", "add_to_cart"],
            "purchase": ["checkout_start", "purchase"],
            "retention": ["support_contact", "complaint"],
            "advocacy": ["referral", "review_posted"],
        },
        "regressions": [
            {"events": ["cancel_subscription"], "to": "awareness"},
            {"events": ["payment_failed"], "to": "consideration"},
        ],
        "conversions": ["purchase"],
    }
)
A, C, P, R, V = "awareness", "consideration", "purchase", "retention", "advocacy"


def stage_paths(journey_map: JourneyMap, sequences: list[list[str]]) -> list[list[str | None]]:
    """The stage after each event of each sequence (one customer per sequence)."""
    rows = [
        {"customer_id": f"c{i:04d}", "timestamp": day(1) + timedelta(minutes=j), "event_type": e}
        for i, seq in enumerate(sequences)
        for j, e in enumerate(seq)
    ]
    con = connect(memory_limit="1GB")
    try:
        con.register("ev_arrow", events_table(rows))
        register_inputs(con, journey_map, "SELECT * FROM ev_arrow", None, [])
        source = (
            "SELECT e.customer_id, e.timestamp AS ts, e.event_id, r.stage_idx, r.back_idx "
            "FROM events e JOIN roles r USING (event_type)"
        )
        got = con.execute(
            f"SELECT customer_id, stage_now FROM "
            f"({stage_machine(source, 'customer_id', 'ts, event_id')}) ORDER BY customer_id, ts"
        ).fetchall()
    finally:
        con.close()
    out: list[list[str | None]] = [[] for _ in sequences]
    for cid, idx in got:
        out[int(cid[1:])].append(None if idx is None else journey_map.stages[idx])
    return out


@pytest.mark.parametrize(
    ("events", "path"),
    [
        # forward by the customer's own events
        (["page_view", "product_view", "purchase"], [A, C, P]),
        # generic events of earlier stages never send a customer back
        (["purchase", "page_view", "login", "ad_click"], [P, P, P, P]),
        (["referral", "page_view", "product_view", "support_contact"], [V, V, V, V]),
        # a jump forward skips stages; an equal stage is no change
        (["page_view", "review_posted", "purchase"], [A, V, V]),
        # a regression event moves back to the stage the map names...
        (["purchase", "payment_failed"], [P, C]),
        (["support_contact", "cancel_subscription"], [R, A]),
        # ...and the customer moves forward again from there
        (["purchase", "cancel_subscription", "page_view", "product_view"], [P, A, A, C]),
        (["purchase", "payment_failed", "login", "purchase"], [P, C, C, P]),
        # two regressions in a row: the latest decides
        (["referral", "payment_failed", "cancel_subscription", "signup"], [V, C, A, C]),
        # a regression puts a customer without a stage at its stage
        (["cancel_subscription", "page_view"], [A, A]),
        # events without a stage leave it as it is, before any stage too
        (["email_open", "page_view", "email_open", "action_discount_offer"], [None, A, A, A]),
        (["warranty_claim", "nps_response"], [None, None]),
    ],
)
def test_event_sequences_give_the_stage_path(events: list[str], path: list[str | None]) -> None:
    assert stage_paths(MAP, [events]) == [path]


VOCABULARY = [
    "page_view",
    "ad_click",
    "login",
    "signup",
    "product_view",
    "add_to_cart",
    "checkout_start",
    "purchase",
    "support_contact",
    "complaint",
    "referral",
    "review_posted",
    "payment_failed",
    "cancel_subscription",
    "email_open",
    "warranty_claim",
    "action_discount_offer",
]


def reference_path(journey_map: JourneyMap, events: list[str]) -> list[int | None]:
    """The rules of configs/journeys.yaml written as a plain loop."""
    stage: int | None = None
    out: list[int | None] = []
    for e in events:
        back = journey_map.regression_to(e)
        forward = journey_map.stage_of(e)
        if back is not None:
            stage = journey_map.stage_index(back)
        elif forward is not None:
            idx = journey_map.stage_index(forward)
            stage = idx if stage is None else max(stage, idx)
        out.append(stage)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=25), min_size=1, max_size=8)
)
def test_only_regression_events_move_a_customer_back(sequences: list[list[str]]) -> None:
    paths = stage_paths(MAP, sequences)
    for events, path in zip(sequences, paths, strict=True):
        idx = [None if s is None else MAP.stage_index(s) for s in path]
        assert idx == reference_path(MAP, events)
        for i in range(1, len(events)):
            before, after = idx[i - 1], idx[i]
            if before is not None and (after is None or after < before):
                assert MAP.regression_to(events[i]) is not None, (events, path)
            if MAP.regression_to(events[i]) is None and before is not None:
                assert after is not None and after >= before


def test_stage_features_follow_the_machine() -> None:
    catalog = build_catalog(MAP, FeatureSettings(channels=[], profile_attributes=[]))
    log = [
        {"customer_id": "x", "timestamp": day(1), "event_type": "product_view"},
        {"customer_id": "x", "timestamp": day(2), "event_type": "purchase"},
        {"customer_id": "x", "timestamp": day(3), "event_type": "page_view"},
        {"customer_id": "x", "timestamp": day(4), "event_type": "payment_failed"},
        {"customer_id": "x", "timestamp": day(5), "event_type": "login"},
        {"customer_id": "x", "timestamp": day(6), "event_type": "cancel_subscription"},
    ]
    out = compute_features(events_table(log), [day(4), day(5), day(7)], MAP, catalog)
    got = out[["stage", "previous_stage", "furthest_stage", "stage_regressions", "days_in_stage"]]
    assert got.values.tolist() == [
        # the page view on day 3 leaves the buyer in "purchase" (since day 2)
        [P, C, P, 0, 2.0],
        # the failed payment on day 4 is a regression
        [C, P, P, 1, 1.0],
        # the login on day 5 changes nothing; the cancellation on day 6 is a second regression
        [A, C, P, 2, 1.0],
    ]


def test_a_regression_to_an_unknown_stage_is_a_clear_error() -> None:
    data = MAP.model_dump()
    data["regressions"] = [{"events": ["cancel_subscription"], "to": "lapsed"}]
    with pytest.raises(ValueError, match=r"regressions.0.to: 'lapsed' is not a stage"):
        JourneyMap.model_validate(data)


def test_an_event_cannot_move_both_ways() -> None:
    data = MAP.model_dump()
    data["regressions"] = [{"events": ["purchase"], "to": "awareness"}]
    with pytest.raises(ValueError, match=r"'purchase' is also a stage event of 'purchase'"):
        JourneyMap.model_validate(data)


# -- on a log the simulator did not make ----------------------------------------------------------

CLICKSTREAM_MAP = JourneyMap.model_validate(
    {
        "stages": ["browse", "interest", "checkout", "customer"],
        "stage_events": {
            "browse": ["home", "search", "catalog"],
            "interest": ["product", "add_item"],
            "checkout": ["cart", "shipping", "payment"],
            "customer": ["order_placed"],
        },
        "regressions": [{"events": ["payment_error"], "to": "checkout"}],
        "conversions": ["order_placed"],
        "churn": {"inactivity_days": 30},
        "horizons": {"churn_days": 14, "conversion_days": 14, "next_step_days": 7},
    }
)


def test_a_foreign_clickstream_moves_back_only_on_its_regressions(tmp_path: Path) -> None:
    log = generate_clickstream(tmp_path / "log", n_users=150, seed=3, days=60, incidents=())
    config = EventsConfig(memory_limit="512MB", threads=1).with_column_maps(log.column_map)
    ingest_events(log.events_csv, tmp_path / "lake", config=config)
    con = open_journeys(tmp_path / "lake", CLICKSTREAM_MAP)
    try:
        moves = con.execute(
            "SELECT event_type, from_idx, to_idx FROM moves WHERE from_idx IS NOT NULL"
        ).df()
    finally:
        con.close()
    back = moves[moves["to_idx"] < moves["from_idx"]]
    assert len(moves) > 100
    # every session starts at "home" or "search": with the latest event deciding, most stage
    # changes would be regressions; here only payment errors after an order move anyone back
    assert set(back["event_type"]) <= {"payment_error"}
    assert len(back) / len(moves) < 0.10
    forward = moves[moves["to_idx"] > moves["from_idx"]]
    assert forward["event_type"].map(CLICKSTREAM_MAP.stage_of).notna().all()
