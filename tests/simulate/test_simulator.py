"""The journey simulator: deterministic, follows the event contract, and its ground truth is
consistent with the log it writes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from journeyml.cli import app
from journeyml.config import JourneyMap, load_journey_map
from journeyml.events.ingest import validate_events
from journeyml.simulate.engine import NONE, fixed_policy
from journeyml.simulate.run import Incident, SimulationError, TruthOptions, simulate
from journeyml.simulate.world import World

JOURNEY = load_journey_map()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    simulate(
        World(),
        JOURNEY,
        1500,
        200,
        seed=3,
        out=out,
        truth=TruthOptions(last_cutoffs=2, sample=700, rollouts=64),
    )
    return out


def events(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "events").sort_values("event_id").reset_index(drop=True)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        simulate(
            World(),
            JOURNEY,
            150,
            60,
            seed=seed,
            out=tmp_path / name,
            truth=TruthOptions(last_cutoffs=1, sample=50, rollouts=8),
        )
        runs.append(events(tmp_path / name))
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not runs[0].equals(runs[2])
    truth = [pd.read_parquet(tmp_path / n / "truth" / "customers.parquet") for n in ("a", "b")]
    pd.testing.assert_frame_equal(truth[0], truth[1])


def test_log_follows_the_contract(world_dir: Path) -> None:
    ev = events(world_dir)
    customers = pd.read_parquet(world_dir / "customers.parquet")
    assert ev["event_id"].is_unique
    assert set(ev["customer_id"]) <= set(customers["customer_id"])
    assert ev["timestamp"].min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert ev["timestamp"].max() < pd.Timestamp("2025-07-20", tz="UTC")
    journey: JourneyMap = JOURNEY
    known = {
        t
        for t in ev["event_type"].unique()
        if journey.stage_of(t)
        or journey.is_treatment(t)
        or journey.is_response(t)
        or t in {"nps_response", "csat_response", "cancel_subscription", "email_open"}
    }
    assert known == set(ev["event_type"].unique())
    valued = ev["value"].notna()
    assert (ev.loc[valued, "event_type"] == "purchase").all()
    assert (ev.loc[valued, "value"] > 0).all()
    assert ev.loc[ev["event_type"] == "purchase", "value"].notna().all()
    actions = ev[ev["event_type"].str.startswith("action_")]
    assert actions["propensity"].between(0, 1, inclusive="right").all()
    assert (actions["event_type"] == "action_" + actions["action_id"]).all()
    scores = ev.loc[ev["event_type"] == "nps_response", "score"]
    assert scores.between(0, 10).all()
    # the log passes the event contract as it is
    report = validate_events(world_dir / "events", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert report.events.rows_valid == len(ev)


def test_decisions_log_records_every_decision(world_dir: Path) -> None:
    decisions = pd.read_parquet(world_dir / "truth" / "decisions.parquet")
    sent = events(world_dir).query("event_type.str.startswith('action_')", engine="python")
    assert (decisions["action_id"] != "none").sum() == len(sent)
    assert decisions["propensity"].between(0.04, 1).all()
    # propensities are honest: the share of each action matches its mean propensity
    for action, group in decisions.groupby("action_id"):
        share = len(group) / len(decisions)
        assert share == pytest.approx(
            decisions.assign(hit=decisions["action_id"] == action)["hit"].mean(), abs=1e-9
        )
        assert group["propensity"].mean() > 0


def realised(world_dir: Path) -> pd.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.sql(f"""
        WITH t AS (SELECT * FROM read_parquet('{world_dir}/truth/customers.parquet')),
        e AS (SELECT customer_id, timestamp, event_type
              FROM read_parquet('{world_dir}/events/*.parquet'))
        SELECT t.customer_id, t.cutoff, t.p_churn, t.p_convert,
            COALESCE(MAX(CASE WHEN e.event_type NOT LIKE 'action_%' THEN 1 END), 0) AS active,
            COALESCE(MAX(CASE WHEN e.event_type = 'cancel_subscription' THEN 1 END), 0) AS cancel,
            COALESCE(MAX(CASE WHEN e.event_type = 'purchase' THEN 1 END), 0) AS bought
        FROM t LEFT JOIN e ON e.customer_id = t.customer_id AND e.timestamp >= t.cutoff
            AND e.timestamp < t.cutoff + INTERVAL 30 DAY
        GROUP BY ALL""").df()


def test_truth_is_consistent_with_the_log(world_dir: Path) -> None:
    df = realised(world_dir)
    df["churn"] = ((df["active"] == 0) | (df["cancel"] == 1)).astype(int)
    n = len(df)
    assert n == 1400
    for p, y in (("p_churn", "churn"), ("p_convert", "bought")):
        # calibrated overall: within 4 standard errors of the realised rate
        se = np.sqrt(df[p].mean() * (1 - df[p].mean()) / n)
        assert abs(df[p].mean() - df[y].mean()) < 4 * se + 0.01, p
        # and ranked: the top fifth by true probability has far more events than the bottom
        top = df[df[p] >= df[p].quantile(0.8)][y].mean()
        bottom = df[df[p] <= df[p].quantile(0.2)][y].mean()
        assert top > bottom + 0.05, (p, top, bottom)


def test_true_effects_show_in_the_data(world_dir: Path) -> None:
    effects = pd.read_parquet(world_dir / "truth" / "effects.parquet")
    mean = effects.groupby("action_id")["effect_convert"].mean()
    assert mean["discount_offer"] > 0.02
    # heterogeneity: the same action helps some customers and hurts others
    assert (effects.query("action_id == 'retention_call'")["effect_churn"] < -0.01).any()
    assert (effects.query("action_id == 'upsell_offer'")["effect_churn"] > 0.01).any()
    # the logging policy randomised the discount: who got it bought more in the next 14 days
    con = duckdb.connect()
    rates = (
        con.sql(f"""
        SELECT d.action_id, AVG(CASE WHEN EXISTS (
            SELECT 1 FROM read_parquet('{world_dir}/events/*.parquet') e
            WHERE e.customer_id = d.customer_id AND e.event_type = 'purchase'
              AND e.timestamp >= d.timestamp AND e.timestamp < d.timestamp + INTERVAL 14 DAY)
            THEN 1 ELSE 0 END) AS bought
        FROM read_parquet('{world_dir}/truth/decisions.parquet') d
        WHERE d.action_id IN ('none', 'discount_offer')
        GROUP BY 1""")
        .df()
        .set_index("action_id")["bought"]
    )
    assert rates["discount_offer"] > rates["none"] + 0.02


def test_payment_incident_shows_in_the_log(tmp_path: Path) -> None:
    incident = Incident.parse("payment:40:14:0.6")
    simulate(World(), JOURNEY, 800, 80, seed=5, out=tmp_path, incidents=(incident,), truth=None)
    ev = events(tmp_path)
    day = (ev["timestamp"] - pd.Timestamp("2025-01-01", tz="UTC")).dt.days
    checkout = ev["event_type"].isin(["purchase", "payment_failed"])
    failed = ev["event_type"] == "payment_failed"
    during = failed[checkout & day.between(40, 53)].mean()
    before = failed[checkout & (day < 40)].mean()
    assert during > 0.4 > 0.1 > before


def test_policies_run_inside_the_simulator() -> None:
    world = World()
    discount = [a.id for a in world.actions].index("discount_offer")
    _, none = simulate(world, JOURNEY, 600, 90, seed=9, out=None, policy=fixed_policy(NONE))
    _, offer = simulate(world, JOURNEY, 600, 90, seed=9, out=None, policy=fixed_policy(discount))
    assert none.value()["action_cost_per_customer"] == 0
    assert offer.value()["purchases_per_customer"] > none.value()["purchases_per_customer"]
    assert offer.value()["action_cost_per_customer"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customers", "0"], "--customers must be positive"),
        (["--incident", "payment:x:3:0.5"], "--incident"),
        (["--incident", "login:1:3:0.5"], "payment:START_DAY"),
        (["--format", "xml"], "--format"),
        (["--start", "2025-13-01"], "--start"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(tmp_path / "o"), "--days", "10", "--customers", "20", *args]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_bad_world_key_is_named(tmp_path: Path) -> None:
    world = tmp_path / "world.yaml"
    world.write_text("policy_flor: 0.1\n")
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--world",
            str(world),
            "--out",
            str(tmp_path / "o"),
            "--days",
            "5",
            "--customers",
            "5",
        ],
    )
    assert result.exit_code == 2
    assert "policy_flor: unknown key" in result.output


def test_cli_writes_everything(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--customers",
            "100",
            "--days",
            "70",
            "--seed",
            "1",
            "--out",
            str(out),
            "--truth-sample",
            "20",
            "--truth-rollouts",
            "4",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "events.csv",
        "customers.csv",
        "world.json",
        "truth/decisions.parquet",
        "truth/customers.parquet",
        "truth/effects.parquet",
    ):
        assert (out / name).exists(), name


def test_simulate_rejects_nonsense() -> None:
    with pytest.raises(SimulationError):
        simulate(World(), JOURNEY, 10, 0, seed=1, out=None)
    assert date(2025, 1, 1).year == 2025
