"""The journey simulator: deterministic, follows the event contract, and its ground truth is
consistent with the log it writes.

Statistical checks use fixed seeds and tolerances of 4+ standard errors computed from the sample
at hand, so they are stable, yet a truth computed with the wrong label definition, horizon or
action effects is off by many standard errors and fails.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from journeyml.events.ingest import validate_events
from journeyml.simulate.policy import NONE, Observation, Policy, fixed_policy, logging_policy
from journeyml.simulate.run import Incident, SimulationError, TruthOptions, simulate
from journeyml.simulate.world import World

JOURNEY = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
START = pd.Timestamp("2025-01-01", tz="UTC")
DAYS = 200
K = 32  # roll-outs per customer: Monte Carlo noise of p adds var p(1-p)/K to a label's


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    simulate(
        World(),
        JOURNEY,
        1500,
        DAYS,
        seed=3,
        out=out,
        truth=TruthOptions(last_cutoffs=3, sample=600, rollouts=K),
    )
    return out


def read_events(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "events")


def sql(query: str) -> pd.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.sql(query).df()


def realised(run: Path, truth_file: str = "customers.parquet") -> pd.DataFrame:
    """The labels the log shows after each truth cutoff (the training labels' definition)."""
    df = sql(f"""
        WITH t AS (SELECT * FROM read_parquet('{run}/truth/{truth_file}')),
        e AS (SELECT customer_id, timestamp, event_type FROM read_parquet('{run}/events/*.parquet'))
        SELECT t.*,
            COALESCE(MAX(CASE WHEN e.event_type NOT LIKE 'action_%' THEN 1 END), 0) AS active,
            COALESCE(MAX(CASE WHEN e.event_type = 'cancel_subscription' THEN 1 END), 0)
                AS cancelled,
            COALESCE(MAX(CASE WHEN e.event_type = 'purchase' THEN 1 END), 0) AS bought
        FROM t LEFT JOIN e ON e.customer_id = t.customer_id AND e.timestamp >= t.cutoff
            AND e.timestamp < t.cutoff + INTERVAL 30 DAY
        GROUP BY ALL""")
    df["churned"] = ((df["active"] == 0) | (df["cancelled"] == 1)).astype(int)
    return df


def assert_calibrated(p: pd.Series, y: pd.Series, what: str, z: float = 4.0) -> None:
    """Mean label within z standard errors of the mean true probability."""
    var = (p * (1 - p)).sum() * (1 + 1 / K)
    se = np.sqrt(var) / len(p)
    assert abs(y.mean() - p.mean()) < z * se + 1e-9, (what, y.mean(), p.mean(), se)


# -- determinism ----------------------------------------------------------------------------


def test_same_seed_same_files_other_seed_other_world(tmp_path: Path) -> None:
    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        simulate(
            World(),
            JOURNEY,
            200,
            70,
            seed=seed,
            out=tmp_path / name,
            truth=TruthOptions(last_cutoffs=1, sample=40, rollouts=4),
        )
        runs[name] = files(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert "truth/effects.parquet" in runs["a"]
    assert runs["a"]["events/part-00000.parquet"] != runs["c"]["events/part-00000.parquet"]


# -- the event contract -----------------------------------------------------------------------


def test_log_follows_the_contract(run: Path) -> None:
    ev = read_events(run)
    customers = pd.read_parquet(run / "customers.parquet")
    required = {"event_id", "customer_id", "timestamp", "event_type", "channel", "value"}
    assert required | {"session_id", "action_id", "propensity", "decision_id", "score"} <= set(
        ev.columns
    )
    assert ev["event_id"].is_unique and ev["event_id"].notna().all()
    assert ev["customer_id"].str.match(r"^C\d{7}$").all()
    assert set(ev["customer_id"]) <= set(customers["customer_id"])
    assert ev["timestamp"].min() >= START
    assert ev["timestamp"].max() < START + pd.Timedelta(days=DAYS)
    # in file order, each customer's events are in time order
    assert ev.groupby("customer_id")["timestamp"].is_monotonic_increasing.all()
    assert set(ev["channel"]) == {"web", "app", "email", "phone", "chat", "store"}
    for t in ev["event_type"].unique():
        known = (
            JOURNEY.stage_of(t)
            or JOURNEY.regression_to(t)
            or JOURNEY.is_treatment(t)
            or JOURNEY.is_response(t)
            or JOURNEY.is_churn_event(t)
            or t in JOURNEY.experience.nps + JOURNEY.experience.csat
        )
        assert known, t
    valued = ev["value"].notna()
    assert (ev.loc[valued, "event_type"] == "purchase").all()
    assert (ev.loc[valued, "value"] > 0).all()
    assert ev.loc[ev["event_type"] == "purchase", "value"].notna().all()
    assert ev.loc[ev["event_type"] == "nps_response", "score"].between(0, 10).all()
    assert ev.loc[ev["event_type"] == "csat_response", "score"].between(1, 5).all()
    assert (
        ev["score"].notna().sum() == ev["event_type"].isin(["nps_response", "csat_response"]).sum()
    )
    web_app = ev["event_type"].isin(["page_view", "product_view", "add_to_cart", "checkout_start"])
    assert ev.loc[web_app, "session_id"].notna().all()
    # the log passes the events package's contract validation as it is
    report = validate_events(run / "events", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert report.events.rows_valid == len(ev)


def test_signup_events_match_the_customers_table(run: Path) -> None:
    ev = read_events(run)
    customers = pd.read_parquet(run / "customers.parquet").set_index("customer_id")
    signups = ev[ev["event_type"] == "signup"].set_index("customer_id")["timestamp"]
    assert signups.index.is_unique
    assert (customers.loc[signups.index, "signup_at"] == signups).all()
    new = customers[customers["signup_at"] >= START]
    assert set(new.index) == set(signups.index)
    assert (customers["signup_at"] < START).mean() > 0.4  # tenure varies
    assert set(customers["plan"]) == {"basic", "premium"}
    assert 0.01 < customers["marketing_opt_out"].mean() < 0.1
    # observable attributes are correlated with the latent persona, not equal to it
    personas = pd.read_parquet(run / "truth" / "personas.parquet").set_index("customer_id")
    table = pd.crosstab(
        personas["persona"], customers.loc[personas.index, "plan"], normalize="index"
    )
    assert (
        table.loc["premium_at_risk", "premium"] > 0.6 > 0.2 > table.loc["bargain_hunter", "premium"]
    )


def test_decisions_are_logged_with_honest_propensities(run: Path) -> None:
    ev = read_events(run)
    decisions = pd.read_parquet(run / "truth" / "decisions.parquet")
    sent = ev[ev["event_type"].str.startswith("action_")]
    assert (sent["event_type"] == "action_" + sent["action_id"]).all()
    assert sent["channel"].isin(["email", "phone", "app"]).all()
    assert decisions["decision_id"].is_unique
    assert decisions["propensity"].between(0, 1, inclusive="right").all()
    assert (decisions["propensity"] >= World().policy.min_propensity - 1e-12).all()
    merged = sent.merge(decisions, on="decision_id", suffixes=("", "_d"), validate="one_to_one")
    assert len(merged) == (decisions["action_id"] != "none").sum()
    for column in ("customer_id", "timestamp", "action_id", "propensity"):
        assert (merged[column] == merged[f"{column}_d"]).all(), column
    # every week, everyone signed up and not cancelled gets a decision (silent churners too)
    days = decisions["timestamp"].dt.floor("D")
    assert days.dt.weekday.nunique() == 1
    assert decisions.groupby(days).size().min() > 800
    # opted-out customers never get marketing actions
    customers = pd.read_parquet(run / "customers.parquet")
    opted = decisions["customer_id"].isin(
        customers.loc[customers["marketing_opt_out"], "customer_id"]
    )
    marketing = {a.id for a in World().actions if a.marketing}
    assert opted.sum() > 0 and not decisions.loc[opted, "action_id"].isin(marketing).any()
    # propensities are honest: E[1{A = a} / propensity] = 1 over the customers a is allowed for
    for action in ["none", *World().action_ids]:
        allowed = decisions[~opted] if action in marketing else decisions
        w = np.where(allowed["action_id"] == action, 1 / allowed["propensity"], 0.0)
        se = w.std() / np.sqrt(len(w))
        assert abs(w.mean() - 1) < 4 * se, (action, w.mean(), se)


def test_world_json_describes_the_run(run: Path) -> None:
    world = json.loads((run / "world.json").read_text())
    assert world["seed"] == 3
    assert world["options"]["customers"] == 1500
    assert {p["name"] for p in world["personas"]} >= {"bargain_hunter", "premium_at_risk"}
    assert world["actions"][0]["effects"]["bargain_hunter"]["convert"] > 1
    summary = world["summary"]
    assert summary["events"] == len(read_events(run))
    assert 0 < summary["churn_rate"] < 1 and 0 < summary["conversion_rate"] < 1
    assert summary["event_types"]["purchase"] > 0
    assert world["outputs"]["events"] == "events"


# -- ground truth -----------------------------------------------------------------------------


def test_truth_is_calibrated_against_the_log(run: Path) -> None:
    df = realised(run)
    assert len(df) == 1800 and df["cutoff"].nunique() == 3
    for p, y in (("p_churn", "churned"), ("p_convert", "bought")):
        assert_calibrated(df[p], df[y], p)
        # per persona too (4.5 SE: ten checks, none may fail by chance)
        for persona, group in df.groupby("persona"):
            assert_calibrated(group[p], group[y], f"{p} {persona}", z=4.5)
    # (no calibration by bins of p itself: with finite roll-outs, selecting on the estimate
    # selects on its noise, so extreme bins are biased by construction)


def test_truth_ranks_customers(run: Path) -> None:
    df = realised(run)
    for p, y, gap in (("p_churn", "churned", 0.15), ("p_convert", "bought", 0.4)):
        top = df[df[p] >= df[p].quantile(0.75)][y].mean()
        bottom = df[df[p] <= df[p].quantile(0.25)][y].mean()
        assert top > bottom + gap, (p, top, bottom)


def test_customers_who_already_left_churn_for_sure(run: Path) -> None:
    df = realised(run)
    gone = df[~df["alive"]]
    assert len(gone) > 10
    assert np.allclose(gone["p_churn"], 1) and (gone["p_convert"] == 0).all()
    assert (gone["churned"] == 1).all() and (gone["bought"] == 0).all()


def test_true_effects_are_heterogeneous_as_the_world_says(run: Path) -> None:
    effects = pd.read_parquet(run / "truth" / "effects.parquet")
    personas = pd.read_parquet(run / "truth" / "customers.parquet")[
        ["customer_id", "cutoff", "persona"]
    ]
    eff = effects.merge(personas, validate="many_to_one")
    mean = eff.groupby(["action_id", "persona"])[["effect_convert", "effect_churn"]].mean()
    discount = mean.loc["discount_offer", "effect_convert"]
    assert discount["bargain_hunter"] > 0.1 > 0.02 > discount["loyal_regular"]
    upsell = mean.loc["upsell_offer"]
    assert upsell.loc["premium_at_risk", "effect_churn"] > 0.03
    assert upsell.loc["loyal_regular", "effect_convert"] > 0.02
    call = mean.loc["retention_call", "effect_churn"]
    assert call["premium_at_risk"] < -0.02
    assert call["loyal_regular"] >= 0  # annoys happy customers
    assert (eff["cost"] > 0).all()
    opted = eff[eff["action_id"] == "discount_offer"]["eligible"]
    assert (~opted).any() and opted.mean() > 0.9


def test_randomised_discounts_show_their_effect_in_the_data(run: Path) -> None:
    """Inverse-propensity estimate of the 30-day conversion after a logged decision: among
    bargain hunters, a discount raises it; among loyal regulars it barely moves."""
    df = sql(f"""
        WITH d AS (SELECT * FROM read_parquet('{run}/truth/decisions.parquet')
                   WHERE timestamp < TIMESTAMP '2025-01-01' + INTERVAL {DAYS - 30} DAY),
        p AS (SELECT customer_id, timestamp FROM read_parquet('{run}/events/*.parquet')
              WHERE event_type = 'purchase')
        SELECT d.decision_id, d.action_id, d.propensity, ps.persona,
            COALESCE(MAX(CASE WHEN p.timestamp IS NOT NULL THEN 1 END), 0) AS bought
        FROM d JOIN read_parquet('{run}/truth/personas.parquet') ps USING (customer_id)
        LEFT JOIN p ON p.customer_id = d.customer_id AND p.timestamp >= d.timestamp
            AND p.timestamp < d.timestamp + INTERVAL 30 DAY
        GROUP BY ALL""")

    def ipw(group: pd.DataFrame, action: str) -> tuple[float, float]:
        w = np.where(group["action_id"] == action, 1 / group["propensity"], 0.0)
        mean = float((w * group["bought"]).sum() / w.sum())
        se = float(np.sqrt((w**2 * (group["bought"] - mean) ** 2).sum()) / w.sum())
        return mean, se

    lift = {}
    for persona in ("bargain_hunter", "loyal_regular"):
        group = df[df["persona"] == persona]
        (m1, s1), (m0, s0) = ipw(group, "discount_offer"), ipw(group, "none")
        lift[persona] = (m1 - m0, np.hypot(s1, s0))
    gain, se = lift["bargain_hunter"]
    assert gain > 4 * se, lift
    assert lift["loyal_regular"][0] < gain - 3 * np.hypot(se, lift["loyal_regular"][1]), lift


# -- truth under other policies -------------------------------------------------------------


def discount_everyone(obs: Observation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A plain-function policy (no probabilities(): truth simulates its decision)."""
    action = World().action_index("discount_offer")
    chosen = np.where(obs.eligible[:, action], action, NONE)
    return chosen, np.ones(len(obs))


def test_truth_follows_the_policy_that_ran(tmp_path: Path) -> None:
    """Under a discount-for-everyone policy the realised labels match that run's truth, and
    that truth is far above the truth of a no-action run on the same seed: a truth that ignored
    the actions' effects would fail the calibration."""
    runs = {}
    for name, policy in (("discount", discount_everyone), ("none", fixed_policy(NONE))):
        simulate(
            World(),
            JOURNEY,
            1000,
            DAYS,
            seed=8,
            out=tmp_path / name,
            policy=policy,
            truth=TruthOptions(last_cutoffs=2, sample=400, rollouts=K),
        )
        runs[name] = df = realised(tmp_path / name)
        assert_calibrated(df["p_convert"], df["bought"], f"p_convert {name}")
        assert_calibrated(df["p_churn"], df["churned"], f"p_churn {name}")
    treated, control = runs["discount"]["p_convert"], runs["none"]["p_convert"]
    se = np.hypot(
        np.sqrt((treated * (1 - treated)).sum()) / len(treated),
        np.sqrt((control * (1 - control)).sum()) / len(control),
    )
    assert treated.mean() - control.mean() > 5 * se
    # common random numbers: the policy's own arm equals the forced discount arm exactly
    df = runs["discount"]
    eff = pd.read_parquet(tmp_path / "discount" / "truth" / "effects.parquet")
    eff = eff[eff["action_id"] == "discount_offer"].merge(
        df[["customer_id", "cutoff", "p_convert", "p_convert_none"]],
        on=["customer_id", "cutoff"],
        suffixes=("_arm", ""),
    )
    ok = eff["eligible"]
    assert ok.any() and (~ok).any()
    assert (eff.loc[ok, "p_convert_arm"] == eff.loc[ok, "p_convert"]).all()
    assert (eff.loc[~ok, "p_convert"] == eff.loc[~ok, "p_convert_none"]).all()


# -- incidents --------------------------------------------------------------------------------


def test_payment_incident_shows_in_the_log(tmp_path: Path) -> None:
    incident = Incident.parse("payment:40:14:0.6")
    simulate(World(), JOURNEY, 800, 80, seed=5, out=tmp_path, incidents=(incident,), truth=None)
    ev = read_events(tmp_path)
    day = (ev["timestamp"] - START).dt.days
    during, before = day.between(40, 53), day.between(26, 39)
    attempts = ev["event_type"] == "checkout_start"
    failed = ev["event_type"] == "payment_failed"
    assert failed[during].sum() / attempts[during].sum() > 0.4
    assert failed[before].sum() / attempts[before].sum() < 0.1
    complaints = ev["event_type"] == "complaint"
    assert complaints[during].sum() > 1.5 * complaints[before].sum()


def test_checkout_incident_breaks_the_funnel(tmp_path: Path) -> None:
    incident = Incident.parse("checkout:30:10:0.8")
    simulate(World(), JOURNEY, 800, 60, seed=6, out=tmp_path, incidents=(incident,), truth=None)
    ev = read_events(tmp_path)
    day = (ev["timestamp"] - START).dt.days
    during, before = day.between(30, 39), day.between(20, 29)
    step = ev["event_type"]
    ratio_during = (step[during] == "checkout_start").sum() / (step[during] == "add_to_cart").sum()
    ratio_before = (step[before] == "checkout_start").sum() / (step[before] == "add_to_cart").sum()
    assert ratio_during < 0.35 * ratio_before


def test_incidents_outside_the_run_are_refused() -> None:
    with pytest.raises(SimulationError, match="--incident payment:90"):
        simulate(World(), JOURNEY, 10, 30, incidents=(Incident("payment", 90, 3, 0.5),))


# -- the policy API ---------------------------------------------------------------------------


def values_by_persona(policy: Policy, world: World) -> pd.DataFrame:
    _, outcomes = simulate(world, JOURNEY, 2000, 120, seed=9, out=None, truth=None, policy=policy)
    frame = outcomes.frame([p.name for p in world.personas])
    return frame.groupby("persona")[["purchases", "churned", "action_cost"]].mean()


def test_policies_change_outcomes_in_the_direction_of_the_true_effects() -> None:
    world = World()
    none = values_by_persona(fixed_policy(NONE), world)
    discount = values_by_persona(fixed_policy(world.action_index("discount_offer")), world)
    call = values_by_persona(fixed_policy(world.action_index("retention_call")), world)
    upsell = values_by_persona(fixed_policy(world.action_index("upsell_offer")), world)
    assert (none["action_cost"] == 0).all() and (discount["action_cost"] > 0).all()
    bought = discount["purchases"] / none["purchases"]
    assert bought["bargain_hunter"] > 1.3 and bought["loyal_regular"] < 1.1
    assert call.loc["premium_at_risk", "churned"] < 0.75 * none.loc["premium_at_risk", "churned"]
    assert upsell.loc["premium_at_risk", "churned"] > 1.2 * none.loc["premium_at_risk", "churned"]


def test_the_logging_policy_is_just_a_policy() -> None:
    world = World()
    _, default = simulate(world, JOURNEY, 300, 60, seed=2, truth=None)
    _, explicit = simulate(
        world, JOURNEY, 300, 60, seed=2, truth=None, policy=logging_policy(world)
    )
    assert (default.purchases == explicit.purchases).all()
    assert default.value() == explicit.value()


def test_a_run_can_be_kept_in_memory() -> None:
    summary, outcomes = simulate(
        World(),
        JOURNEY,
        300,
        90,
        seed=2,
        keep_log=True,
        truth=TruthOptions(last_cutoffs=1, sample=30, rollouts=4),
    )
    log = outcomes.log
    assert log is not None
    assert len(log.events) == summary.events
    assert len(log.decisions) == summary.decisions
    assert log.truth_customers is not None and len(log.truth_customers) == 30
    assert (log.events.groupby("customer_id")["timestamp"].is_monotonic_increasing).all()


def test_a_policy_breaking_the_rules_is_stopped() -> None:
    world = World()

    def spam(obs: Observation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(obs), world.action_index("content_email")), np.ones(len(obs))

    with pytest.raises(SimulationError, match="opted out"):
        simulate(world, JOURNEY, 400, 10, seed=1, truth=None, policy=spam)


def test_simulate_rejects_nonsense(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="--days must be positive"):
        simulate(World(), JOURNEY, 10, 0, seed=1)
    with pytest.raises(SimulationError, match="--customers must be positive"):
        simulate(World(), JOURNEY, -5, 10, seed=1)
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(SimulationError, match="--out"):
        simulate(World(), JOURNEY, 10, 10, seed=1, out=precious)
    assert (precious / "chapter1.tex").exists()
