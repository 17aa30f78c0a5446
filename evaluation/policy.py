"""Policy evaluation of a simulated workspace: off-policy estimates from its decision log, and
true values from running each policy inside the simulator.

The decision log of ``journeyml simulate`` (``sim/truth/decisions.parquet``: every decision,
"none" included, with the logging policy's propensity) becomes a logged bandit: the reward of
a decision is the revenue of the customer's conversions in the ``horizon_days`` after it minus
the cost of the action sent, computed by DuckDB over the event lake; the reward model's
context is what the log showed before the decision (revenue and events in the previous 30
days, days since the last event).

The two answers measure different things and are shown side by side: the off-policy value is
per decision over the horizon (one decision changed, the logging policy everywhere else); the
simulator's true value is per customer over the whole run with the policy deciding every time.
Their rankings of the policies should agree.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from evaluation.fairness import FairnessSettings, fairness_check, fairness_table, largest_gaps
from evaluation.monitor import _atomic
from evaluation.ope import BanditLog, evaluate_policy, fit_reward_model, fixed_policy
from evaluation.policy_learn import LearnerSettings
from evaluation.policy_sim import PolicyValues, true_policy_values
from journeyml.config import JourneyMap, matches_any
from journeyml.events.lake import read_events_sql
from serving.actions import ActionsCatalog

logger = logging.getLogger(__name__)


class NotSimulatedError(ValueError):
    """The workspace has no simulator output (``sim/world.json`` and the decision log)."""


def is_simulated(data_dir: Path) -> bool:
    """Whether the workspace holds a simulator run with its decision log."""
    sim = data_dir / "sim"
    return (sim / "world.json").is_file() and (sim / "truth" / "decisions.parquet").is_file()


def simulated_bandit_log(
    sim_dir: Path, lake: Path, journey: JourneyMap, horizon_days: int = 7
) -> tuple[BanditLog, pd.DataFrame]:
    """The simulator's decision log as a logged bandit (and the decisions with their rewards)."""
    decisions = sim_dir / "truth" / "decisions.parquet"
    world_file = sim_dir / "world.json"
    if not decisions.is_file() or not world_file.is_file():
        raise NotSimulatedError(
            f"no simulator decision log under {sim_dir} (truth/decisions.parquet and "
            "world.json): policy evaluation needs the logged propensities"
        )
    world = json.loads(world_file.read_text())
    costs = {a["id"]: float(a["cost"]) for a in world["actions"]}
    action_ids = ["none", *costs]
    con = duckdb.connect()
    try:
        con.execute(f"CREATE TEMP VIEW ev AS {read_events_sql(lake)}")
        types = [r[0] for r in con.execute("SELECT DISTINCT event_type FROM ev").fetchall()]
        conversions = [t for t in types if matches_any(t, journey.conversions)]
        if not conversions:
            raise ValueError(f"no event of the lake is a conversion ({journey.conversions})")
        conv = "(" + ", ".join("'" + t.replace("'", "''") + "'" for t in conversions) + ")"
        path = str(decisions).replace("'", "''")
        frame = con.execute(
            f"""
            WITH d AS (SELECT decision_id, customer_id, timestamp AS t, action_id, propensity
                       FROM read_parquet('{path}'))
            SELECT d.decision_id, d.customer_id, d.t, d.action_id, d.propensity,
              COALESCE(SUM(ev.value) FILTER (WHERE ev.timestamp > d.t
                  AND ev.event_type IN {conv}), 0) AS revenue,
              COALESCE(SUM(ev.value) FILTER (WHERE ev.timestamp <= d.t
                  AND ev.event_type IN {conv}), 0) AS revenue_30d,
              COUNT(ev.event_type) FILTER (WHERE ev.timestamp <= d.t) AS events_30d,
              MAX(ev.timestamp) FILTER (WHERE ev.timestamp <= d.t) AS last_event
            FROM d LEFT JOIN ev ON ev.customer_id = d.customer_id
              AND ev.timestamp > d.t - INTERVAL 30 DAY
              AND ev.timestamp <= d.t + INTERVAL ({int(horizon_days)}) DAY
            GROUP BY ALL ORDER BY d.t, d.decision_id
            """
        ).df()
    finally:
        con.close()
    unknown = sorted(set(frame["action_id"]) - set(action_ids))
    if unknown:
        raise ValueError(f"the decision log names actions the world does not have: {unknown}")
    frame["cost"] = frame["action_id"].map({"none": 0.0, **costs})
    frame["reward"] = frame["revenue"] - frame["cost"]
    since = (frame["t"] - frame["last_event"]).dt.total_seconds() / 86400.0
    contexts = pd.DataFrame(
        {
            "revenue_30d": frame["revenue_30d"],
            "events_30d": frame["events_30d"],
            "days_since_event": since.fillna(31.0).clip(upper=31.0),
        }
    )
    log = BanditLog(
        action_ids,
        frame["action_id"].map({a: i for i, a in enumerate(action_ids)}).to_numpy(),
        frame["propensity"].to_numpy(float),
        frame["reward"].to_numpy(float),
        frame["customer_id"].to_numpy(),
        contexts,
    )
    return log, frame


@dataclass
class PolicyEvaluation:
    """Off-policy estimates, true simulator values and the logged action mix."""

    estimates: pd.DataFrame  # policy, estimator, value, low, high, ess, max_weight
    true_values: pd.DataFrame | None
    action_mix: pd.DataFrame  # segment x action shares of the logged decisions
    facts: dict[str, object] = field(default_factory=dict)
    oracle_choices: dict[str, str] = field(default_factory=dict)
    fairness: pd.DataFrame | None = None  # per policy, attribute and group (evaluation.fairness)
    fairness_gaps: pd.DataFrame | None = None  # per policy, attribute and measure

    def write(self, out: Path) -> list[Path]:
        """estimates.csv, true_values.csv, action_mix.csv and summary.json, atomically."""
        out.mkdir(parents=True, exist_ok=True)
        paths = [_atomic(out / "estimates.csv", lambda p: self.estimates.to_csv(p, index=False))]
        true_values = self.true_values
        if true_values is not None:
            paths.append(
                _atomic(out / "true_values.csv", lambda p: true_values.to_csv(p, index=False))
            )
        paths.append(_atomic(out / "action_mix.csv", lambda p: self.action_mix.to_csv(p)))
        fairness, gaps = self.fairness, self.fairness_gaps
        if fairness is not None and gaps is not None:
            paths.append(_atomic(out / "fairness.csv", lambda p: fairness.to_csv(p, index=False)))
            paths.append(_atomic(out / "fairness_gaps.csv", lambda p: gaps.to_csv(p, index=False)))
        summary = {**self.facts, "oracle_choices": self.oracle_choices}
        paths.append(
            _atomic(
                out / "summary.json",
                lambda p: p.write_text(json.dumps(summary, indent=1, default=str)),
            )
        )
        return paths


def evaluate_policies(
    data_dir: Path,
    journey: JourneyMap,
    horizon_days: int = 7,
    simulate_values: bool = True,
    sim_customers: int | None = None,
    sim_days: int | None = None,
    learn: bool = True,
    learner: LearnerSettings | None = None,
) -> PolicyEvaluation:
    """Off-policy estimates of the compared policies and, optionally, their true values
    (with ``learn``, also of a policy learned from the logging policy's decision log, with
    ``learner``'s settings: by default on the journey features)."""
    sim_dir, lake = data_dir / "sim", data_dir / "lake"
    log, frame = simulated_bandit_log(sim_dir, lake, journey, horizon_days)
    q = fit_reward_model(log)
    targets: dict[str, np.ndarray] = {}
    for action in log.action_ids:
        targets["no action" if action == "none" else f"always {action}"] = fixed_policy(log, action)
    targets["random"] = np.full((len(log), len(log.action_ids)), 1 / len(log.action_ids))
    true_values: PolicyValues | None = None
    if simulate_values:
        from journeyml.simulate.world import World

        world_doc = json.loads((sim_dir / "world.json").read_text())
        options = world_doc["options"]
        world = World.model_validate(world_doc["world"])
        true_values = true_policy_values(
            world,
            journey,
            sim_customers or int(options["customers"]),
            sim_days or int(options["days"]),
            seed=int(options["seed"]) + 1000,
            learner=(learner or LearnerSettings()) if learn else None,
        )
        personas = pd.read_parquet(sim_dir / "truth" / "personas.parquet")
        persona_of = dict(zip(personas["customer_id"], personas["persona"], strict=True))
        chosen = frame["customer_id"].map(persona_of).map(true_values.oracle_choices)
        oracle = np.zeros((len(log), len(log.action_ids)))
        oracle[np.arange(len(log)), chosen.fillna("none").map(log.action_ids.index)] = 1.0
        targets["oracle (true effects)"] = oracle
    rows = [
        {"policy": "logging policy", "estimator": "on-policy mean",
         "value": float(log.rewards.mean()), "low": np.nan, "high": np.nan,
         "effective_sample_size": float(len(log)), "max_weight": 1.0}
    ]  # fmt: skip
    for name, target in targets.items():
        for est in evaluate_policy(log, target, q).values():
            rows.append(
                {
                    "policy": name,
                    "estimator": est.estimator,
                    "value": est.value,
                    "low": est.low,
                    "high": est.high,
                    "effective_sample_size": est.effective_sample_size,
                    "max_weight": est.max_weight,
                }
            )
    estimates = pd.DataFrame(rows)
    customers = pd.read_parquet(sim_dir / "customers.parquet")
    segment_col = "segment" if "segment" in customers.columns else None
    seg = (
        frame["customer_id"].map(
            dict(zip(customers["customer_id"], customers[segment_col], strict=True))
        )
        if segment_col
        else pd.Series("all", index=frame.index)
    )
    mix = pd.crosstab(
        seg.fillna("unknown").rename("segment"), frame["action_id"].rename("action"),
        normalize="index",
    )  # fmt: skip
    facts: dict[str, object] = {
        "decisions": len(log),
        "customers": int(frame["customer_id"].nunique()),
        "horizon_days": horizon_days,
        "first_decision": str(frame["t"].min()),
        "last_decision": str(frame["t"].max()),
    }
    if true_values is not None:
        facts.update(
            sim_customers=true_values.customers,
            sim_days=true_values.days,
            sim_seed=true_values.seed + 1,
        )
    return PolicyEvaluation(
        estimates,
        None if true_values is None else true_values.values,
        mix,
        facts,
        {} if true_values is None else true_values.oracle_choices,
    )


def evaluate_service_policies(
    decisions: pd.DataFrame,
    catalog: ActionsCatalog,
    horizon_days: int = 7,
    as_of: datetime | None = None,
    outcome_values: dict[str, float] | None = None,
    learn: bool = True,
    segment_by: str = "segment",
    fairness: FairnessSettings | None = None,
) -> PolicyEvaluation:
    """Off-policy estimates from the service's own decision log (no simulator needed): no
    action, each single action where allowed, random, the logging policy and, with ``learn``,
    a policy learned from the log's point-in-time features (see :mod:`evaluation.policy_log`)."""
    from evaluation.policy_log import evaluate_service_log, log_facts, read_service_log

    log = read_service_log(decisions, catalog, horizon_days, outcome_values, as_of)
    estimates, gate, learned_actions = evaluate_service_log(log, learn=learn)
    facts = log_facts(log, horizon_days)
    fairness = fairness or FairnessSettings()
    f = log.frame
    groups = pd.DataFrame({a: _segments(f, a) for a in fairness.attributes}, index=f.index)
    audits = [
        fairness_table(
            groups, f["chosen_action"], f["expected_value"], f["churn_risk"],
            f["conversion_propensity"], f["converted"],
        ).assign(policy="logging policy")
    ]  # fmt: skip
    if learned_actions is not None:
        audits.append(
            fairness_table(groups, learned_actions, None, f["churn_risk"]).assign(
                policy="learned policy"
            )
        )
    table = pd.concat(audits, ignore_index=True)
    gaps = pd.concat(
        [largest_gaps(t).assign(policy=t["policy"].iloc[0]) for t in audits if len(t)],
        ignore_index=True,
    )
    if gate is not None:
        learned_gaps = gaps[gaps["policy"] == "learned policy"]
        unfair = fairness_check(learned_gaps, fairness)
        if unfair:
            gate = replace(gate, passed=False, reasons=[*gate.reasons, *unfair])
        facts["learned_policy_gate"] = {**asdict(gate), "fairness_check": fairness.check}
    seg = _segments(f, segment_by)
    mix = pd.crosstab(seg.rename("segment"), f["chosen_action"].rename("action"), normalize="index")
    return PolicyEvaluation(estimates, None, mix, facts, fairness=table, fairness_gaps=gaps)


def _segments(frame: pd.DataFrame, attribute: str) -> pd.Series:
    """Each decision's value of a profile attribute from its logged features ("unknown")."""
    values = []
    for text in frame["features"]:
        feats = json.loads(text) if isinstance(text, str) and text else {}
        value = feats.get(attribute)
        values.append("unknown" if value is None else str(value))
    return pd.Series(values, index=frame.index)
