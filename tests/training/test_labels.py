"""Labels on hand-made logs with exact expected values: horizon boundaries, who is active,
explicit churn, treatments, next steps, the cutoffs near the end of the log, and splits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from tests.features.helpers import events_table, write_lake
from training.config import SplitSettings
from training.labels import (
    LabelError,
    assign_splits,
    build_labels,
    compute_labels,
    labelled_cutoffs,
    open_lake,
    plan_splits,
)

T = datetime(2025, 3, 1, tzinfo=UTC)
D = timedelta(days=1)
US = timedelta(microseconds=1)


def ev(customer: str, at: datetime, event_type: str, event_id: str | None = None) -> dict:
    row: dict[str, object] = {"customer_id": customer, "timestamp": at, "event_type": event_type}
    if event_id:
        row["event_id"] = event_id
    return row


LOG = [
    # a: buys exactly at the cutoff (labels see events at or after T)
    ev("a", T - 10 * D, "page_view"),
    ev("a", T, "purchase"),
    # b: comes back exactly when the 30-day churn horizon has closed → churned
    ev("b", T - 10 * D, "page_view"),
    ev("b", T + 30 * D, "page_view"),
    # c: last activity 61 days before → not active; c2: exactly 60 days → active
    ev("c", T - 61 * D, "page_view"),
    ev("c2", T - 60 * D, "page_view"),
    ev("c2", T + 1 * D, "login"),
    # d: cancelled before the cutoff → not active
    ev("d", T - 5 * D, "page_view"),
    ev("d", T - 2 * D, "cancel_subscription"),
    # e: active after the cutoff but cancels inside the horizon → churned
    ev("e", T - 5 * D, "page_view"),
    ev("e", T + 1 * D, "login"),
    ev("e", T + 10 * D, "cancel_subscription"),
    # f: only a marketing action after the cutoff (not activity) → churned
    ev("f", T - 5 * D, "page_view"),
    ev("f", T + 1 * D, "action_discount_offer"),
    # g: buys one microsecond before the conversion horizon closes
    ev("g", T - 5 * D, "page_view"),
    ev("g", T + 30 * D - US, "purchase"),
    # h: next event has no stage; the next stage comes from the event after it
    ev("h", T - 5 * D, "page_view"),
    ev("h", T + 1 * D, "email_open"),
    ev("h", T + 2 * D, "product_view"),
    # i: bought one microsecond before the cutoff (a feature, not a label)
    ev("i", T - US, "purchase"),
    # j: two events at the same time: the smaller event id comes first
    ev("j", T - 1 * D, "page_view"),
    ev("j", T + 1 * D, "add_to_cart", "x1"),
    ev("j", T + 1 * D, "login", "x0"),
    # k: next event after the 14-day next-step horizon → next step none
    ev("k", T - 1 * D, "page_view"),
    ev("k", T + 14 * D, "page_view"),
    # l: a page view after buying is generic: the stage does not change → next stage none
    ev("l", T - 3 * D, "purchase"),
    ev("l", T + 2 * D, "page_view"),
    # m: a failed payment after buying is a regression: back to consideration
    ev("m", T - 3 * D, "purchase"),
    ev("m", T + 2 * D, "payment_failed"),
    # z: keeps the log going
    ev("z", T - 100 * D, "page_view"),
    ev("z", T + 100 * D, "page_view"),
]

EXPECTED = {
    #        active churn conversion next_event_type next_stage
    "a": (True, 0, 1, "purchase", "purchase"),
    "b": (True, 1, 0, "none", "none"),
    "c": (False, None, 0, "none", "none"),
    "c2": (True, 0, 0, "login", "consideration"),
    "d": (False, None, 0, "none", "none"),
    "e": (True, 1, 0, "login", "consideration"),
    "f": (True, 1, 0, "none", "none"),
    "g": (True, 0, 1, "none", "none"),
    "h": (True, 0, 0, "email_open", "consideration"),
    "i": (True, 1, 0, "none", "none"),
    "j": (True, 0, 0, "login", "consideration"),
    "k": (True, 0, 0, "none", "none"),
    "l": (True, 0, 0, "page_view", "none"),
    "m": (True, 0, 0, "payment_failed", "consideration"),
}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{**r, "event_id": r.get("event_id") or f"e{i:03d}"} for i, r in enumerate(LOG)]
    return write_lake(tmp_path_factory.mktemp("labels") / "lake", events_table(rows))


def labels_at(lake: Path, journey_map: JourneyMap, customers: list[str]) -> pd.DataFrame:
    con = open_lake(lake, journey_map)
    try:
        frame = compute_labels(
            con,
            journey_map,
            pd.DataFrame({"customer_id": customers, "cutoff": [T] * len(customers)}),
        )
    finally:
        con.close()
    return frame.set_index("customer_id")


@pytest.mark.parametrize("customer", sorted(EXPECTED))
def test_labels_on_a_hand_made_log(lake: Path, journey_map: JourneyMap, customer: str) -> None:
    row = labels_at(lake, journey_map, sorted(EXPECTED)).loc[customer]
    active, churn, conversion, next_type, next_stage = EXPECTED[customer]
    assert bool(row["active"]) is active
    assert (None if pd.isna(row["churn"]) else int(row["churn"])) == churn
    assert int(row["conversion"]) == conversion
    assert row["next_event_type"] == next_type
    assert row["next_stage"] == next_stage


def test_cutoffs_whose_horizon_passes_the_end_of_the_log_are_not_labelled(
    tmp_path: Path, journey_map: JourneyMap
) -> None:
    start = datetime(2025, 1, 1, 12, tzinfo=UTC)
    end = datetime(2025, 3, 31, 12, tzinfo=UTC)
    lake = write_lake(
        tmp_path / "lake",
        events_table([ev("a", start, "page_view"), ev("a", end, "page_view")]),
    )
    con = open_lake(lake, journey_map)
    try:
        cutoffs, log_end = labelled_cutoffs(con, journey_map, FeatureSettings())
    finally:
        con.close()
    assert log_end == end
    # weekly from Jan 1 + 28 days warm-up; the last whose 30 days end by Mar 31 12:00
    assert [c.date().isoformat() for c in cutoffs] == [
        "2025-01-29",
        "2025-02-05",
        "2025-02-12",
        "2025-02-19",
        "2025-02-26",
    ]
    labels = build_labels(lake, journey_map, FeatureSettings())
    assert set(pd.to_datetime(labels.frame["cutoff"], utc=True)) == {
        pd.Timestamp(c) for c in cutoffs
    }


def test_a_log_shorter_than_warm_up_and_horizon_says_so(
    tmp_path: Path, journey_map: JourneyMap
) -> None:
    lake = write_lake(
        tmp_path / "lake",
        events_table([ev("a", T, "page_view"), ev("a", T + 40 * D, "page_view")]),
    )
    with pytest.raises(LabelError, match="too short"):
        build_labels(lake, journey_map, FeatureSettings())


def purchase_only_map() -> JourneyMap:
    return JourneyMap.model_validate(
        {
            "stages": ["prospect", "customer"],
            "stage_events": {"customer": ["purchase"]},
            "conversions": ["purchase"],
            "churn": {"inactivity_days": 60, "events": [], "activity_events": ["purchase"]},
            "treatments": {"patterns": []},
        }
    )


def test_a_pure_purchase_log_churns_on_no_purchase_within_the_horizon(tmp_path: Path) -> None:
    log = [
        ev("stays", T - 20 * D, "purchase"),
        ev("stays", T + 10 * D, "purchase"),
        ev("leaves", T - 20 * D, "purchase"),
        ev("leaves", T + 40 * D, "purchase"),
        ev("lapsed", T - 90 * D, "purchase"),
    ]
    lake = write_lake(tmp_path / "lake", events_table(log))
    frame = labels_at(lake, purchase_only_map(), ["stays", "leaves", "lapsed"])
    assert frame.loc["stays", ["churn", "conversion"]].tolist() == [0, 1]
    assert frame.loc["leaves", ["churn", "conversion"]].tolist() == [1, 0]
    assert not frame.loc["lapsed", "active"]
    assert frame.loc["stays", "next_event_type"] == "purchase"


def weekly(n: int) -> list[datetime]:
    return [T + 7 * i * D for i in range(n)]


def test_splits_are_by_time_with_a_purge_gap() -> None:
    cutoffs = weekly(30)
    plan = plan_splits(
        cutoffs, SplitSettings(test_days=28, validation_days=28, validation="period"), gap_days=30
    )
    assert plan.test == tuple(cutoffs[26:])  # the last 4 weeks
    # validation ends 30 days (5 weeks rounded down to the grid) before the test period
    assert plan.validation[-1] <= plan.test[0] - 30 * D
    assert plan.train[-1] <= plan.validation[0] - 30 * D
    assert len(plan.validation) == 4
    assert max(plan.train) < min(plan.validation) < max(plan.validation) < min(plan.test)
    frame = pd.DataFrame({"cutoff": cutoffs})
    splits = assign_splits(frame, plan)
    assert splits.isna().sum() == len(cutoffs) - len(plan.train) - 4 - 4


def test_without_purge_the_splits_touch() -> None:
    cutoffs = weekly(12)
    plan = plan_splits(
        cutoffs,
        SplitSettings(test_days=21, validation_days=21, purge=False, validation="period"),
        gap_days=30,
    )
    assert len(plan.train) + len(plan.validation) + len(plan.test) == 12


def test_customer_grouped_validation_sits_inside_the_training_window() -> None:
    cutoffs = weekly(30)
    plan = plan_splits(cutoffs, SplitSettings(test_days=28, validation_share=0.25), gap_days=30)
    assert plan.test == tuple(cutoffs[26:])
    assert plan.train == plan.validation  # the same cutoffs, different customers
    assert plan.train[-1] <= plan.test[0] - 30 * D  # the purge gap before the test only
    assert plan.train[-1] > plan.test[0] - 37 * D  # and no more than one grid step beyond it
    ids = [f"c{i}" for i in range(400)]
    frame = pd.DataFrame([(c, t) for t in cutoffs for c in ids], columns=["customer_id", "cutoff"])
    frame["split"] = assign_splits(frame, plan)
    per_customer = frame[frame["split"].isin(["train", "validation"])].groupby("customer_id")[
        "split"
    ]
    assert (per_customer.nunique() == 1).all()  # a customer never straddles the two
    held = frame.loc[frame["split"] == "validation", "customer_id"].nunique() / len(ids)
    assert 0.18 < held < 0.32
    test_rows = frame[frame["cutoff"].isin(plan.test)]
    assert (test_rows["split"] == "test").all()  # every customer is scored on the test period
    in_gap = ~frame["cutoff"].isin([*plan.train, *plan.test])
    assert frame.loc[in_gap, "split"].isna().all()
    again = assign_splits(frame.sample(frac=1.0, random_state=2), plan)
    assert again.sort_index().equals(frame["split"])  # a fixed function of the customer id


def test_too_short_for_the_split_periods_names_the_fix() -> None:
    with pytest.raises(LabelError, match="shorter split periods"):
        plan_splits(weekly(6), SplitSettings(test_days=28, validation_days=28), gap_days=30)
    with pytest.raises(LabelError, match="shorter split periods"):
        plan_splits(
            weekly(6),
            SplitSettings(test_days=28, validation_days=28, validation="period"),
            gap_days=30,
        )
