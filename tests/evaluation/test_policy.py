"""Policy evaluation of a simulated workspace: off-policy estimates from the decision log
agree with the policies' true values in the simulator, the oracle beats every policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.html import Report
from evaluation.policy import NotSimulatedError, PolicyEvaluation, evaluate_policies
from evaluation.policy_learn import LearnerSettings
from evaluation.policy_report import add_policy_sections
from journeyml.cli import app
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy")
    runner = CliRunner()
    args = ["simulate", "--customers", "1200", "--days", "150", "--seed", "5"]
    result = runner.invoke(app, [*args, "--out", str(root / "sim"), "--truth-cutoffs", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["events", "ingest", str(root / "sim" / "events"), "--out", str(root / "lake")]
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def evaluation(workspace: Path) -> PolicyEvaluation:
    return evaluate_policies(
        workspace,
        load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"),
        sim_customers=800,
        sim_days=150,
        # the observation learner is the quick one; the journey-feature learner (the default)
        # is tested in test_policy_sim.py
        learner=LearnerSettings(features="observation", num_threads=1),
    )


def test_the_log_and_the_simulator_rank_policies_alike(evaluation: PolicyEvaluation) -> None:
    dr = evaluation.estimates[evaluation.estimates["estimator"] == "dr"].set_index("policy")
    assert evaluation.true_values is not None
    truth = evaluation.true_values.set_index("policy")["net_value"]
    compared = [p for p in dr.index if p in truth.index]
    assert len(compared) >= 7
    estimated = dr.loc[compared, "value"].to_numpy()
    true = truth.loc[compared].to_numpy()
    # rank agreement (Spearman) between per-decision estimates and whole-run true values
    ranks = np.argsort(np.argsort(estimated)), np.argsort(np.argsort(true))
    rho = np.corrcoef(*ranks)[0, 1]
    assert rho >= 0.7, (rho, dict(zip(compared, estimated, strict=True)), truth.to_dict())
    # the best and the worst policy are the same in both
    assert compared[int(np.argmax(estimated))] == compared[int(np.argmax(true))]
    assert compared[int(np.argmin(estimated))] == compared[int(np.argmin(true))]


def test_the_oracle_beats_every_policy(evaluation: PolicyEvaluation) -> None:
    assert evaluation.true_values is not None
    tv = evaluation.true_values.set_index("policy")
    oracle = tv.loc["oracle (true effects)", "net_value"]
    assert (tv.drop(index="oracle (true effects)")["net_value"] < oracle).all()
    assert tv.loc["oracle (true effects)", "captured_share"] == pytest.approx(1.0)
    assert "learned policy" in tv.index  # learned from the log, valued on another seed
    assert tv.loc["no action", "incremental"] == 0.0


def test_on_policy_value_and_intervals(evaluation: PolicyEvaluation) -> None:
    est = evaluation.estimates
    for row in est[est["estimator"].isin(["ips", "snips", "dr"])].itertuples():
        assert row.low <= row.value <= row.high
        assert 0 < row.effective_sample_size <= evaluation.facts["decisions"]
    assert set(evaluation.action_mix.columns) >= {"none", "discount_offer"}
    assert np.allclose(evaluation.action_mix.sum(axis=1), 1.0)


def test_report_cli_and_errors(
    workspace: Path, evaluation: PolicyEvaluation, tmp_path: Path
) -> None:
    report = Report("Policy report")
    add_policy_sections(report, evaluation)
    page = report.render()
    assert report.figures >= 3 and "oracle" in page
    assert "learned policy" in page and "of the oracle&#x27;s gain (target: 80 %)" in page
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["evaluate-policy", "--data-dir", str(workspace), "--out", str(tmp_path), "--no-simulate"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "estimates.csv").exists() and not (tmp_path / "true_values.csv").exists()
    missing = runner.invoke(app, ["evaluate-policy", "--data-dir", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "decision log" in missing.output
    with pytest.raises(NotSimulatedError):
        evaluate_policies(
            tmp_path,
            load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"),
            simulate_values=False,
        )
