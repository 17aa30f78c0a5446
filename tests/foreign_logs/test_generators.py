"""The foreign-log generators' contracts and statistics: determinism, columns, date-only dates,
truth consistent with the log, incidents visible in their windows, second-order journeys, trend
and weekday seasonality, and a churn hazard that the observable behaviour predicts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.foreign_logs import (
    ForeignLog,
    generate_clickstream,
    generate_purchase_log,
    generate_subscription_log,
)
from tests.foreign_logs.clickstream import ACTIONS
from tests.foreign_logs.incidents import Incident, Redirect
from tests.foreign_logs.purchase import DEFAULT_PARAMS, best_probabilities

SMALL: dict[str, Callable[..., ForeignLog]] = {
    "purchase": lambda out, seed: generate_purchase_log(out, n_customers=300, seed=seed),
    "clickstream": lambda out, seed: generate_clickstream(out, n_users=200, seed=seed),
    "subscription": lambda out, seed: generate_subscription_log(out, n_accounts=150, seed=seed),
}
SIMULATOR_NAMES = {"customer_id", "timestamp", "event_type", "channel", "value", "session_id"}


@pytest.fixture(scope="module")
def clicks(tmp_path_factory: pytest.TempPathFactory) -> tuple[ForeignLog, pd.DataFrame]:
    log = generate_clickstream(tmp_path_factory.mktemp("clicks"), seed=4)
    frame = pd.read_csv(log.events_csv, keep_default_na=False)
    frame["t"] = pd.to_datetime(frame["event_time"])
    frame["day"] = (frame["t"] - pd.Timestamp(log.start, tz="UTC")).dt.days
    return log, frame


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_same_seed_same_log_other_seed_other_log(kind: str, tmp_path: Path) -> None:
    a, b, c = (SMALL[kind](tmp_path / name, seed) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert a.events_csv.read_bytes() == b.events_csv.read_bytes()
    for name, path in a.truth.items():
        assert path.read_bytes() == b.truth[name].read_bytes(), name
    assert a.events_csv.read_bytes() != c.events_csv.read_bytes()


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_columns_map_and_own_names(kind: str, tmp_path: Path) -> None:
    log = SMALL[kind](tmp_path, 0)
    frame = pd.read_csv(log.events_csv)
    assert tuple(frame.columns) == log.columns and len(frame) == log.n_events
    assert set(log.column_map) <= set(frame.columns)
    assert {"customer_id", "timestamp", "event_type"} <= set(log.column_map.values())
    # nothing leans on the contract's (or the simulator's) column names
    assert not SIMULATOR_NAMES & set(frame.columns)
    assert frame.iloc[:, 0].nunique() == log.n_customers or kind == "purchase"
    for path in log.truth.values():
        assert path.is_file() and path.parent == log.truth_dir
    ts = next(c for c, d in log.column_map.items() if d == "timestamp")
    assert frame[ts].min() >= str(log.start) and frame[ts].max() < str(log.end)


def test_parquet_holds_the_same_rows(tmp_path: Path) -> None:
    log = generate_clickstream(tmp_path, n_users=100, seed=3, parquet=True, with_value=True)
    assert log.events_parquet is not None and log.column_map["order_total"] == "value"
    csv = pd.read_csv(log.events_csv, keep_default_na=False, na_values={"order_total": [""]})
    pq = pd.read_parquet(log.events_parquet)
    pd.testing.assert_frame_equal(csv, pq, check_dtype=False)
    placed = pq["action"] == "order_placed"
    assert pq.loc[placed, "order_total"].gt(0).all() and pq.loc[~placed, "order_total"].isna().all()


def test_purchase_log_is_date_only_with_real_same_day_repeats(tmp_path: Path) -> None:
    log = generate_purchase_log(tmp_path, n_customers=3000, seed=8)
    orders = pd.read_csv(log.events_csv, dtype={"order_date": str})
    assert orders["order_date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert set(orders["txn"]) == {"order"} and orders["amount"].gt(0).all()
    facts = json.loads(log.truth["params"].read_text())
    assert facts["duplicate_rows"] == orders.duplicated().sum() > 0
    assert facts["same_day_repeat_orders"] >= facts["duplicate_rows"]
    # staggered first purchases over the first cohort_days
    first = pd.to_datetime(orders.groupby("client")["order_date"].min())
    assert (first - pd.Timestamp(log.start)).dt.days.max() < facts["cohort_days"]
    assert first.dt.to_period("M").nunique() >= 4
    bare = generate_purchase_log(tmp_path / "bare", n_customers=50, seed=8, event_column=None)
    assert "txn" not in bare.columns and "event_type" not in bare.column_map.values()


def test_purchase_truth_is_the_history_of_the_log(tmp_path: Path) -> None:
    log = generate_purchase_log(tmp_path, n_customers=2000, seed=9)
    orders = pd.read_csv(log.events_csv)
    hidden = pd.read_csv(log.truth["customers"])
    truth = pd.read_csv(log.truth["cutoff"])
    facts = json.loads(log.truth["params"].read_text())
    again = best_probabilities(orders, pd.Timestamp(facts["cutoff"]).date(), 90, DEFAULT_PARAMS)
    pd.testing.assert_frame_equal(truth.drop(columns="alive_at_cutoff"), again)
    # no order after a customer's drop-out
    last = pd.to_datetime(orders.groupby("client")["order_date"].max())
    dropped = hidden.set_index("client")["dropout_day"]
    assert ((last - pd.Timestamp(log.start)).dt.days <= dropped.loc[last.index].to_numpy()).all()
    # the best probabilities rank and are calibrated on the realised labels
    assert roc_auc_score(truth["purchased"], truth["p_purchase"]) > 0.7
    assert truth["p_purchase"].mean() == pytest.approx(truth["purchased"].mean(), abs=0.03)
    alive = truth["alive_at_cutoff"]
    assert truth["p_alive"].mean() == pytest.approx(alive.mean(), abs=0.04)


def test_clickstream_incidents_are_visible_in_their_windows(
    clicks: tuple[ForeignLog, pd.DataFrame],
) -> None:
    log, frame = clicks
    records = json.loads(log.truth["incidents"].read_text())["incidents"]
    assert {r["kind"] for r in records} == {"step_failure", "error_surge", "loop", "volume_drop"}
    frame = frame.sort_values(["session", "t"], kind="stable")
    frame["next"] = frame.groupby("session")["action"].shift(-1).fillna("(end)")
    for record in records:
        assert record["affected_customers"] >= 20, record["name"]
        inside = frame["day"].between(record["start_day"], record["end_day"] - 1)
        segment = np.ones(len(frame), dtype=bool)
        for column, value in record["segment"].items():
            segment &= frame[column] == value
        for rule in record["redirects"]:
            at = frame["action"] == rule["from_action"]
            moved = frame["next"] == rule["to_action"]
            during = moved[at & inside & segment].mean()
            before = moved[at & ~inside & segment].mean()
            assert during > before + 0.25, (record["name"], during, before)
            if record["segment"]:
                elsewhere = moved[at & inside & ~segment].mean()
                assert during > elsewhere + 0.25, (record["name"], during, elsewhere)
        if record["volume_factor"] < 1:
            sessions = frame[segment].groupby("day")["session"].nunique()
            days = sessions.index.to_series()
            during = sessions[days.between(record["start_day"], record["end_day"] - 1)].mean()
            lead = sessions[days.between(record["start_day"] - 21, record["start_day"] - 1)].mean()
            assert during < 0.5 * lead
    affected = pd.read_csv(log.truth["affected"])
    counts = affected.groupby("incident")["user_ref"].nunique()
    assert counts.to_dict() == {r["name"]: r["affected_customers"] for r in records}


def test_clickstream_without_incidents_has_no_redirects(tmp_path: Path) -> None:
    log = generate_clickstream(tmp_path, n_users=200, seed=4, incidents=())
    assert json.loads(log.truth["incidents"].read_text())["incidents"] == []
    with pytest.raises(ValueError, match="unknown action 'checkout'"):
        generate_clickstream(
            tmp_path / "bad", n_users=10, seed=4,
            incidents=(Incident("x", "loop", 1, 5, {}, (Redirect("checkout", "cart", 0.5),)),),
        )  # fmt: skip


def _log_loss(train: pd.DataFrame, test: pd.DataFrame, keys: list[str]) -> float:
    vocab = [*ACTIONS, "(end)"]
    counts = (
        train.groupby([*keys, "next"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=vocab, fill_value=0)
    )
    probs = (counts + 0.5).div((counts + 0.5).sum(axis=1), axis=0)
    fallback = train["next"].value_counts(normalize=True).reindex(vocab, fill_value=1e-4)
    index = pd.MultiIndex.from_frame(test[keys]) if len(keys) > 1 else pd.Index(test[keys[0]])
    known = index.isin(probs.index)
    p = np.where(
        known,
        probs.reindex(index).to_numpy()[
            np.arange(len(test)), [vocab.index(n) for n in test["next"]]
        ],
        fallback.loc[test["next"]].to_numpy(),
    )
    return float(-np.log(p).mean())


def test_clickstream_journeys_are_second_order(clicks: tuple[ForeignLog, pd.DataFrame]) -> None:
    _, frame = clicks
    frame = frame.sort_values(["session", "t"], kind="stable")
    grouped = frame.groupby("session")["action"]
    frame["prev"] = grouped.shift(1).fillna("(start)")
    frame["next"] = grouped.shift(-1).fillna("(end)")
    cart = frame[frame["action"] == "cart"]
    to_shipping = (cart["next"] == "shipping").groupby(cart["prev"]).mean()
    assert to_shipping["add_item"] - to_shipping["search"] > 0.4
    cut = frame["day"].quantile(0.7)
    train, test = frame[frame["day"] < cut], frame[frame["day"] >= cut]
    first = _log_loss(train, test, ["action"])
    second = _log_loss(train, test, ["prev", "action"])
    assert second < first - 0.05


def test_clickstream_ramps_up_with_busier_weekends(clicks: tuple[ForeignLog, pd.DataFrame]) -> None:
    log, frame = clicks
    sessions = frame.groupby("day")["session"].nunique().reindex(range(log.days), fill_value=0)
    assert sessions.iloc[-40:-12].mean() > 1.5 * sessions.iloc[:28].mean()  # past the incidents
    weekday = (pd.Timestamp(log.start) + pd.to_timedelta(sessions.index, unit="D")).dayofweek
    weekend = sessions[weekday >= 5].sum() / (weekday >= 5).sum()
    working = sessions[weekday < 5].sum() / (weekday < 5).sum()
    assert weekend > 1.15 * working
    assert frame["event_time"].str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z").all()
    assert frame["t"].dt.hour.nunique() > 12 and set(frame["platform"]) == {"ios", "android", "web"}


def test_subscription_cancellations_follow_observable_behaviour(tmp_path: Path) -> None:
    log = generate_subscription_log(tmp_path, n_accounts=1500, seed=6)
    frame = pd.read_csv(log.events_csv)
    frame["t"] = pd.to_datetime(frame["ts"], format="%Y-%m-%d %H:%M:%S")
    cancels = pd.read_csv(log.truth["cancellations"])
    assert len(cancels) == (frame["kind"] == "cancel").sum() > 50
    assert set(cancels["cause"]) == {"voluntary", "payment"}
    assert frame.loc[frame["kind"] == "invoice_paid", "amount"].gt(0).all()
    assert frame.loc[frame["kind"] != "invoice_paid", "amount"].isna().all()
    assert {"plan_upgrade", "plan_downgrade", "reactivate"} <= set(frame["kind"])
    # after an upgrade the account's rows carry a higher tier
    rank = frame["tier"].map({"basic": 0, "pro": 1, "team": 2})
    ups = frame.index[frame["kind"] == "plan_upgrade"]
    before = rank.groupby(frame["account"]).shift(1).loc[ups]
    assert (rank.loc[ups] > before).mean() > 0.95

    rows = pd.concat([_churn_rows(frame, pd.Timestamp(log.start), d) for d in (120, 180, 240, 300)])
    assert rows["churned"].sum() >= 40
    # low and falling usage and failed charges each point at the accounts that cancel
    assert roc_auc_score(rows["churned"], -rows["recent"]) > 0.65
    decline = np.log1p(rows["prior"]) - np.log1p(rows["recent"])
    assert roc_auc_score(rows["churned"], decline) > 0.58
    failed = rows["failed"] > 0
    assert rows.loc[failed, "churned"].mean() > 2 * rows.loc[~failed, "churned"].mean()


def _churn_rows(frame: pd.DataFrame, start: pd.Timestamp, day: int) -> pd.DataFrame:
    """Per account active at the cutoff: usage in the last and the previous 28 days, failed
    charges in the last 28 days, and whether it cancelled in the next 28 days."""
    cutoff, window = start + pd.Timedelta(days=day), pd.Timedelta(days=28)
    seen = frame[frame["t"] < cutoff]
    state = seen.groupby("account")["kind"].last()
    active = state.index[state != "cancel"]

    def count(kind: str, since: pd.Timestamp, until: pd.Timestamp) -> pd.Series:
        rows = seen[(seen["kind"] == kind) & (seen["t"] >= since) & (seen["t"] < until)]
        return rows.groupby("account").size().reindex(active, fill_value=0)

    ahead = frame[(frame["t"] >= cutoff) & (frame["t"] < cutoff + window)]
    return pd.DataFrame(
        {
            "recent": count("usage", cutoff - window, cutoff),
            "prior": count("usage", cutoff - 2 * window, cutoff - window),
            "failed": count("charge_failed", cutoff - window, cutoff),
            "churned": active.isin(ahead.loc[ahead["kind"] == "cancel", "account"]),
        }
    )
