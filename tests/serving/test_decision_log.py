"""The service's own decision log as the input of policy evaluation: decisions made by the real
engine (epsilon-greedy exploration, a holdout), feedback stored in the state store, exported as
Parquet and evaluated by ``journeyml evaluate-policy`` on a workspace without simulator files.

The outcomes come from a small world the test defines itself (a conversion probability per
action), so the true value of each policy is computed here by hand from those probabilities,
not by the product's estimators.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.html import Report
from evaluation.policy_report import add_policy_sections
from evaluation.report_cli import read_policy_evaluation
from journeyml.cli import app
from journeyml.config import SIMULATOR_CONFIG_DIR, load_config
from serving.actions import ActionsCatalog
from serving.engine import DecisionContext
from serving.runtime import Runtime
from tests.serving.conftest import ServingWorkspace, serving_settings

# the test's world: the probability that a decision is followed by a conversion, per action
RATE = {
    "none": 0.10,
    "discount_offer": 0.40,
    "onboarding_help": 0.22,
    "retention_call": 0.30,
    "upsell_offer": 0.12,
    "content_email": 0.14,
}
CONVERSION = 50.0
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
AS_OF = "2026-03-15T00:00:00+00:00"


@pytest.fixture(scope="module")
def service_log(
    serving_ws: ServingWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pd.DataFrame]:
    """The state store of 3 rounds of decisions for 150 customers, with their feedback."""
    tmp = tmp_path_factory.mktemp("decision_log")
    settings = serving_settings(
        serving_ws,
        tmp,
        exploration={"method": "epsilon", "epsilon": 0.6},
        holdout={"share": 0.15, "salt": "ope-test"},
    )
    rt = Runtime(settings)
    rt.engine.rng = random.Random(3)
    rng = np.random.default_rng(4)
    made = []
    try:
        for r in range(3):
            for i, cid in enumerate(serving_ws.customers[:150]):
                at = T0 + timedelta(days=12 * r, minutes=i)
                d = rt.engine.decide(cid, DecisionContext(channel="web", at=at))
                assert d.fallback_reason is None, d.fallback_reason
                made.append((d.decision_id, d.action, d.propensity, d.holdout, d.explored))
                if rng.random() < RATE[d.action]:
                    rt.state.record_feedback(d.decision_id, "converted", at + timedelta(days=2))
                elif d.action != "none":
                    rt.state.record_feedback(d.decision_id, "ignored", at + timedelta(days=3))
    finally:
        rt.close()
    frame = pd.DataFrame(
        made, columns=["decision_id", "action", "propensity", "holdout", "explored"]
    )
    return tmp / "state.db", frame


def test_export_keeps_propensities_holdout_and_feedback(
    service_log: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    db, made = service_log
    out = tmp_path / "decisions.parquet"
    result = CliRunner().invoke(
        app, ["decisions", "export", "--state-url", f"sqlite:///{db}", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    log = pd.read_parquet(out).set_index("decision_id")
    assert len(log) == len(made) == 450
    mine = made.set_index("decision_id")
    assert (log.loc[mine.index, "chosen_action"] == mine["action"]).all()
    assert np.allclose(log.loc[mine.index, "propensity"], mine["propensity"])
    # exploration over k allowed candidates logs 1 - e + e/k for the best and e/k for the rest
    assert mine["explored"].sum() > 50 and mine["holdout"].sum() > 20
    assert (log.loc[mine.index[mine["holdout"]], "chosen_action"] == "none").all()
    assert log["converted_at"].notna().sum() > 50 and log["ignored_at"].notna().sum() > 50
    assert json.loads(log["features"].iloc[0])  # the features read at decision time
    missing = CliRunner().invoke(
        app, ["decisions", "export", "--state-url", f"sqlite:///{tmp_path / 'no.db'}"]
    )
    assert missing.exit_code == 2 and "no decision log" in missing.output


def true_values(log: pd.DataFrame, catalog: ActionsCatalog) -> dict[str, float]:
    """Each policy's expected net value per decision in the test's world, by hand."""
    cost = {"none": 0.0, **{a.id: a.cost for a in catalog.actions}}
    allowed = [
        {c["action"] for c in json.loads(text) if c["removed_by"] is None}
        for text in log["candidates"]
    ]
    out = {"no action": RATE["none"] * CONVERSION}
    for a in catalog.ids:
        per_row = [
            RATE[a] * CONVERSION - cost[a] if a in ok else RATE["none"] * CONVERSION
            for ok in allowed
        ]
        out[f"always {a}"] = float(np.mean(per_row))
    return out


def test_evaluate_policy_on_the_service_log_without_simulator_files(
    service_log: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    db, _ = service_log
    workspace = tmp_path / "deployment"  # what a deployment holds: the service's state store
    (workspace / "serving").mkdir(parents=True)
    shutil.copy(db, workspace / "serving" / "state.db")
    actions = SIMULATOR_CONFIG_DIR / "actions.yaml"
    out = tmp_path / "policy"
    result = CliRunner().invoke(
        app,
        [
            "evaluate-policy", "--data-dir", str(workspace), "--actions", str(actions),
            "--as-of", AS_OF, "--outcome-value", f"converted={CONVERSION}", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (workspace / "sim").exists() and not (out / "true_values.csv").exists()
    assert "learned policy" in result.output and "gate" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "service decision log" and summary["decisions"] == 450
    log = pd.read_parquet(workspace / "serving" / "decisions.parquet")
    truth = true_values(log, load_config(actions, ActionsCatalog))
    est = pd.read_csv(out / "estimates.csv")
    dr = est[est["estimator"] == "dr"].set_index("policy")
    covered = [p for p, v in truth.items() if dr.loc[p, "low"] <= v <= dr.loc[p, "high"]]
    assert len(covered) >= len(truth) - 1, (truth, dr[["value", "low", "high"]])
    # the best policy by hand is the best by the estimates
    assert dr.loc[list(truth), "value"].idxmax() == max(truth, key=lambda p: truth[p])
    # the logging policy's value is the mean realised reward: conversions x value - costs
    cost = {"none": 0.0, **{a.id: a.cost for a in load_config(actions, ActionsCatalog).actions}}
    realised = np.mean(
        log["converted_at"].notna() * CONVERSION - log["chosen_action"].map(cost).to_numpy()
    )
    on_policy = est[est["policy"] == "logging policy"].iloc[0]
    assert on_policy["value"] == pytest.approx(realised)
    gate = summary["learned_policy_gate"]
    assert set(gate) >= {"passed", "learned", "logging", "best_single", "fairness_check"}
    # the fairness audit: the logging policy's selection rate per plan, counted by hand
    fair = pd.read_csv(out / "fairness.csv")
    plans = [json.loads(t).get("plan") for t in log["features"]]
    by_hand = (log["chosen_action"] != "none").groupby(plans).mean()
    logged = fair[(fair["policy"] == "logging policy") & (fair["attribute"] == "plan")]
    assert set(logged["group"]) == set(by_hand.index)
    for row in logged.itertuples():
        assert row.selection_rate == pytest.approx(by_hand[row.group])
    assert (fair["policy"] == "learned policy").any()
    assert (out / "fairness_gaps.csv").exists()
    # the policy report renders the service's evaluation: the gate and the fairness audit
    report = Report("Policy report")
    add_policy_sections(report, read_policy_evaluation(out))
    page = report.render()
    assert "Fairness across segments" in page and "its gate" in page


def test_a_young_log_says_why_it_cannot_be_evaluated(
    service_log: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    db, _ = service_log
    (tmp_path / "serving").mkdir()
    shutil.copy(db, tmp_path / "serving" / "state.db")
    result = CliRunner().invoke(
        app,
        [
            "evaluate-policy", "--data-dir", str(tmp_path), "--as-of", "2026-01-06T00:00:00Z",
            "--actions", str(SIMULATOR_CONFIG_DIR / "actions.yaml"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2 and "complete 7-day outcome window" in result.output
