"""The batch churn-risk list: the endpoint's decisions in batch, filters, left-out counts,
deterministic order, atomic files and clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from journeyml.cli import app
from serving import lists as lists_module
from serving.engine import NO_ACTION, DecisionContext, DecisionEngine
from serving.lists import ListError, ListFilters, batch_engine, churn_risk_list
from serving.runtime import Runtime
from tests.serving.conftest import ServingWorkspace, serving_settings

NOW = datetime(2025, 7, 23, 9, 30, tzinfo=UTC)  # the day after the simulated log ends
NO_EXPLORATION = {"exploration": {"epsilon": 0.0}, "holdout": {"share": 0.2, "salt": "t"}}


@pytest.fixture()
def engine(serving_ws: ServingWorkspace, tmp_path: Path) -> Iterator[DecisionEngine]:
    eng = batch_engine(serving_settings(serving_ws, tmp_path, **NO_EXPLORATION))
    yield eng
    eng.state.close()


def snapshots(sw: ServingWorkspace) -> Path:
    return sw.sim.root / "features" / "journey_features"


def test_the_list_decides_as_the_endpoint_does(
    serving_ws: ServingWorkspace, engine: DecisionEngine, tmp_path: Path
) -> None:
    summary = churn_risk_list(engine, snapshots(serving_ws), tmp_path / "out", now=NOW)
    listed = pd.read_parquet(tmp_path / "out" / "churn_risk.parquet").set_index("customer_id")
    assert summary.listed == len(listed) > 100
    assert summary.holdout == int(listed["holdout"].sum()) > 0
    assert (listed.loc[listed["holdout"], "recommended_action"] == NO_ACTION).all()
    assert (listed["recommended_action"] != NO_ACTION).any()
    # the endpoint, on its own (empty) state store, for a sample of the listed customers
    # a deadline no shared machine misses: this test compares values, not timings
    rt = Runtime(
        serving_settings(serving_ws, tmp_path / "endpoint", deadline_ms=10_000, **NO_EXPLORATION)
    )
    try:
        for cid in listed.index[:: max(1, len(listed) // 40)]:
            d = rt.engine.decide(str(cid), DecisionContext(at=NOW))
            assert d.fallback_reason is None and d.scores is not None
            row = listed.loc[cid]
            assert row["churn_risk"] == pytest.approx(d.scores.churn_risk, abs=1e-9)
            assert row["risk_band"] == d.scores.risk_band
            assert row["conversion_propensity"] == pytest.approx(d.scores.conversion_propensity)
            assert row["next_step"] == d.scores.next_steps[0][0]
            assert bool(row["holdout"]) == d.holdout
            assert row["recommended_action"] == d.action, cid
            texts = [r.text for r in d.scores.reasons]
            assert [row[f"reason_{i}"] for i in range(1, len(texts) + 1)] == texts
            assert row["action_reason"] == d.why, (row["action_reason"], d.why)
            if d.action != NO_ACTION:  # the words cite the figures that ranked the action
                net, gross = row["incremental_value"], row["expected_value"]
                assert d.why.startswith(f"{d.action} {net:.2f} ({gross:.2f} expected"), d.why
                assert "highest expected value net of cost" in d.why
                chosen = next(o for o in d.ranked if o.action == d.action)
                assert all((o.priority or 0.0) <= (chosen.priority or 0.0) for o in d.ranked)
    finally:
        rt.close()


def test_contact_policy_opt_out_and_suppression_leave_customers_out_and_are_counted(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    settings = serving_settings(serving_ws, tmp_path, exploration={"epsilon": 0.0})
    settings = settings.model_copy(
        update={"holdout": settings.holdout.model_copy(update={"share": 0.0})}
    )
    rt = Runtime(settings)  # the endpoint writes contacts into the state store the list reads
    try:
        first = churn_risk_list(rt.engine, snapshots(serving_ws), tmp_path / "a", now=NOW)
        before = pd.read_parquet(tmp_path / "a" / "churn_risk.parquet").set_index("customer_id")
        contacted = before.index[before["recommended_action"] != NO_ACTION][:10]
        assert len(contacted)
        for cid in contacted:
            assert rt.engine.decide(str(cid), DecisionContext(at=NOW)).action != NO_ACTION
        suppression = set(before.index[-5:])
        second = churn_risk_list(
            rt.engine, snapshots(serving_ws), tmp_path / "b", now=NOW, suppression=suppression
        )
        after = pd.read_parquet(tmp_path / "b" / "churn_risk.parquet").set_index("customer_id")
        for cid in contacted:
            blocked = rt.state.blocked(str(cid), rt.engine._candidates, rt.engine.policy, NOW)
            assert after.loc[cid, "recommended_action"] not in blocked
            assert after.loc[cid, "recommended_action"] != before.loc[cid, "recommended_action"]
    finally:
        rt.close()
    assert second.suppressed_list == 5 and not suppression & set(after.index)
    assert len(after) == len(before) - 5
    opted = pd.read_parquet(snapshots(serving_ws))
    latest = opted.sort_values("event_timestamp").groupby("customer_id").tail(1)
    out = set(latest.loc[latest["marketing_opt_out"] == "true", "customer_id"])
    assert first.opted_out == len(out) > 0 and not out & set(before.index)
    assert first.customers_read == len(latest)
    assert first.customers_read == first.listed + first.opted_out + first.other_population


def test_filters_order_and_repeatability(
    serving_ws: ServingWorkspace, engine: DecisionEngine, tmp_path: Path
) -> None:
    by_risk = ListFilters(rank_by="risk")
    full = churn_risk_list(
        engine, snapshots(serving_ws), tmp_path / "full", now=NOW, filters=by_risk
    )
    frame = pd.read_csv(tmp_path / "full" / "churn_risk.csv")
    assert frame["churn_risk"].is_monotonic_decreasing
    segment = str(frame["segment"].value_counts().index[0])
    filters = ListFilters(segments=(segment,), min_risk=0.1, top=7, rank_by="risk")
    small = churn_risk_list(
        engine, snapshots(serving_ws), tmp_path / "small", now=NOW, filters=filters, chunk_rows=50
    )
    got = pd.read_csv(tmp_path / "small" / "churn_risk.csv")
    want = frame[(frame["segment"] == segment) & (frame["churn_risk"] >= 0.1)].head(7)
    assert got["customer_id"].tolist() == want["customer_id"].tolist()
    assert small.listed == len(got) and small.beyond_top == small.customers_read - (
        small.below_min_risk
        + small.listed
        + small.opted_out
        + small.suppressed
        + small.other_population
    )
    assert small.other_segment == full.customers_read - small.customers_read > 0
    # chunking does not change the list: same bytes with other chunk sizes
    churn_risk_list(
        engine, snapshots(serving_ws), tmp_path / "again", now=NOW, chunk_rows=33, filters=by_risk
    )
    assert (tmp_path / "again" / "churn_risk.csv").read_bytes() == (
        tmp_path / "full" / "churn_risk.csv"
    ).read_bytes()


def test_a_crash_leaves_the_previous_list_whole(
    serving_ws: ServingWorkspace,
    engine: DecisionEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    churn_risk_list(engine, snapshots(serving_ws), out, now=NOW, filters=ListFilters(top=3))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = lists_module.score_chunk
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> pd.DataFrame:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lists_module, "score_chunk", failing)
    with pytest.raises(RuntimeError, match="killed"):
        churn_risk_list(engine, snapshots(serving_ws), out, now=NOW, chunk_rows=40)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no work folder left


def test_bad_input_gets_clear_errors(
    serving_ws: ServingWorkspace, engine: DecisionEngine, tmp_path: Path
) -> None:
    with pytest.raises(ListError, match="features build"):
        churn_risk_list(engine, tmp_path / "nothing", tmp_path / "out", now=NOW)
    with pytest.raises(ListError, match="--min-risk"):
        ListFilters(min_risk=1.5)
    with pytest.raises(ListError, match="--top"):
        ListFilters(top=0)
    with pytest.raises(ListError, match="does not exist"):
        lists_module.read_suppression_list(tmp_path / "missing.csv")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_cli_writes_the_list_and_explains_bad_options(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    settings = serving_settings(serving_ws, tmp_path)
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    suppressed = tmp_path / "dnc.csv"
    suppressed.write_text(f"customer_id\n{serving_ws.customers[0]}\n")
    runner = CliRunner()
    args = ["lists", "churn-risk", "--data-dir", str(serving_ws.sim.root), "--config", str(config)]
    out = tmp_path / "lists"
    result = runner.invoke(
        app,
        [*args, "--out", str(out), "--top", "20", "--suppression-list", str(suppressed)],
    )
    assert result.exit_code == 0, result.output
    assert "left out: on the suppression list" in result.output
    frame = pd.read_csv(out / "churn_risk.csv")
    assert len(frame) == 20 and list(frame.columns) == lists_module.COLUMNS
    bad = runner.invoke(app, [*args, "--out", str(out), "--min-risk", "3"])
    assert bad.exit_code == 2 and "--min-risk" in bad.output
    bad = runner.invoke(app, [*args, "--now", "yesterday"])
    assert bad.exit_code == 2 and "ISO" in bad.output


def test_the_default_list_holds_only_customers_who_can_still_be_saved(
    serving_ws: ServingWorkspace, engine: DecisionEngine, tmp_path: Path
) -> None:
    from journeyml.config import load_journey_map

    journey = load_journey_map(engine.settings.journeys)
    assert journey.churn.inactivity_days is not None
    default = churn_risk_list(engine, snapshots(serving_ws), tmp_path / "d", now=NOW)
    listed = pd.read_parquet(tmp_path / "d" / "churn_risk.parquet")
    assert (listed["status"] == "active").all()
    # the snapshot rows, aged to the list's time as the list ages them
    rows = pd.read_parquet(snapshots(serving_ws))
    latest = rows.sort_values("event_timestamp").groupby("customer_id").tail(1)
    age = (
        pd.Timestamp(NOW) - pd.to_datetime(latest["event_timestamp"], utc=True)
    ).dt.total_seconds() / 86400
    since = latest["days_since_last_event"] + age.to_numpy()
    cancelled = latest["last_event_1"].map(
        lambda v: isinstance(v, str) and journey.is_churn_event(v)
    )
    lapsed = set(latest.loc[(since > journey.churn.inactivity_days) | cancelled, "customer_id"])
    assert lapsed, "the world has lapsed customers"
    assert not lapsed & set(listed["customer_id"])
    assert default.lapsed == len(lapsed)
    assert default.active + default.lapsed == default.customers_read
    # the lapsed are a win-back list of their own; "all" lists both with their status
    winback = churn_risk_list(
        engine,
        snapshots(serving_ws),
        tmp_path / "w",
        now=NOW,
        filters=ListFilters(population="lapsed"),
    )
    back = pd.read_parquet(tmp_path / "w" / "churn_risk.parquet")
    assert (back["status"] == "lapsed").all() and set(back["customer_id"]) <= lapsed
    everyone = churn_risk_list(
        engine,
        snapshots(serving_ws),
        tmp_path / "a",
        now=NOW,
        filters=ListFilters(population="all"),
    )
    assert everyone.listed == default.listed + winback.listed
    assert everyone.other_population == 0
    # the ranking separates customers: few ties among the riskiest
    top = listed.head(500)["churn_risk"]
    assert top.nunique() >= 0.8 * len(top)
    with pytest.raises(ListError, match="--population"):
        ListFilters(population="gone")


def test_the_list_ranks_by_what_an_action_gains_and_says_whom_it_would_change(
    serving_ws: ServingWorkspace, engine: DecisionEngine, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = churn_risk_list(engine, snapshots(serving_ws), out, now=NOW, split_by="action")
    listed = pd.read_parquet(out / "churn_risk.parquet")
    cost = {a.id: a.cost for a in engine.actions}
    acted = listed[listed["recommended_action"] != NO_ACTION]
    assert len(acted) > 20
    # net of cost: the incremental value is the action's expected value less its cost
    net = acted["expected_value"] - acted["recommended_action"].map(cost)
    assert (acted["incremental_value"] - net).abs().max() < 1e-9
    assert (acted["incremental_value"] > 0).all()
    # the default order is by that value (the holdout, withheld, ranks where it would be)
    shown = listed.loc[~listed["holdout"], "incremental_value"]
    assert shown.is_monotonic_decreasing
    assert summary.incremental_value == pytest.approx(listed["incremental_value"].sum())
    # target groups from the best action's uplift and the risk, thresholds from the settings
    t = engine.settings.target_groups
    group = listed["target_group"]
    assert set(group) <= {"persuadable", "sure thing", "lost cause", "do not disturb"}
    assert (listed.loc[group == "persuadable", "uplift"] >= t.persuadable_uplift).all()
    assert (listed.loc[group == "do not disturb", "uplift"] <= t.do_not_disturb_uplift).all()
    quiet = group.isin(["sure thing", "lost cause"])
    assert listed.loc[quiet, "uplift"].between(t.do_not_disturb_uplift, t.persuadable_uplift).all()
    assert (listed.loc[group == "lost cause", "churn_risk"] >= t.lost_cause_risk).all()
    assert (listed.loc[group == "sure thing", "churn_risk"] < t.lost_cause_risk).all()
    assert summary.by_target_group == group.value_counts().to_dict()
    # every customer with an action is in exactly one action file, in the list's order
    files = sorted(out.glob("churn_risk__action_*.csv"))
    assert {f.name for f in files} == {
        f"churn_risk__action_{a}.csv" for a in acted["recommended_action"].unique()
    }
    for f in files:
        part = pd.read_csv(f, dtype={"customer_id": str})
        action = f.stem.removeprefix("churn_risk__action_")
        want = acted.loc[acted["recommended_action"] == action, "customer_id"].tolist()
        assert part["customer_id"].tolist() == want
    # ranked by risk instead: the same customers and actions, another order
    churn_risk_list(
        engine, snapshots(serving_ws), tmp_path / "risk", now=NOW,
        filters=ListFilters(rank_by="risk"), split_by="channel",
    )  # fmt: skip
    by_risk = pd.read_parquet(tmp_path / "risk" / "churn_risk.parquet")
    assert by_risk["churn_risk"].is_monotonic_decreasing
    assert sorted(by_risk["customer_id"]) == sorted(listed["customer_id"])
    assert list((tmp_path / "risk").glob("churn_risk__channel_*.csv"))
    with pytest.raises(ListError, match="--rank-by"):
        ListFilters(rank_by="value")
    with pytest.raises(ListError, match="--split-by"):
        churn_risk_list(engine, snapshots(serving_ws), out, now=NOW, split_by="segment")


def test_the_summary_compares_with_the_previous_list_by_hashed_id(
    serving_ws: ServingWorkspace, engine: DecisionEngine, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = churn_risk_list(engine, snapshots(serving_ws), out, now=NOW, split_by="action")
    assert first.diff == {"previous": None}
    before = pd.read_parquet(out / "churn_risk.parquet")
    gone = set(before["customer_id"][:4])
    # the previous list, given by flag: a CSV with customer ids and a few customers more
    extra = before.head(3).assign(customer_id=["x-1", "x-2", "x-3"])
    older = pd.concat([before, extra]).drop(columns=["customer_key"])
    older.to_csv(tmp_path / "older.csv", index=False)
    second = churn_risk_list(
        engine, snapshots(serving_ws), out, now=NOW, suppression=gone,
        previous=tmp_path / "older.csv",
    )  # fmt: skip
    assert second.diff["new"] == 0
    assert second.diff["gone"] == len(gone) + 3
    assert second.diff["still_listed"] == len(before) - len(gone)
    assert second.diff["action_changed"] == 0
    diff = pd.read_csv(out / "churn_risk_diff.csv", dtype=str)
    assert "customer_id" not in diff.columns and len(diff) == len(before) + 3
    assert not set(diff["customer_key"]) & set(before["customer_id"])  # ids never shown
    # the split of the first list is gone: the second one asked for none
    assert not list(out.glob("churn_risk__action_*.csv"))
    # by default, the list already in the folder: everyone still listed, the 4 back as new
    third = churn_risk_list(engine, snapshots(serving_ws), out, now=NOW)
    assert (third.diff["new"], third.diff["gone"]) == (len(gone), 0)
    assert third.diff["previous"] == str(out / "churn_risk.parquet")
    with pytest.raises(ListError, match="--previous"):
        churn_risk_list(engine, snapshots(serving_ws), out, now=NOW, previous=tmp_path / "none.csv")
