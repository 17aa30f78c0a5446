"""The model, journey and policy reports: what they say is what the stages recorded.

Code tests run the presentation on literal MLflow records; the integration tests train the four
models on a small simulated log (twice for churn, so there is a champion and a challenger),
monitor it, evaluate the policies, and check the reports ``journeyml report`` writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from evaluation.html import Report
from evaluation.model_report import (
    METRICS,
    ModelRecord,
    VersionRun,
    add_model_sections,
    baselines,
    best_baseline,
    gate_verdicts,
    metrics_table,
    read_model_records,
    summary_lines,
)
from evaluation.monitor import MonitorResult
from evaluation.report_cli import (
    ReportInputError,
    build_journey_report,
    read_monitor_result,
    read_policy_evaluation,
)
from journeyml.cli import app
from training.config import GateSettings, TrainingConfig

CHURN_GATE = GateSettings(metric="auc", floors={"auc": 0.65, "ece": 0.05}, champion_margin=0.002)


def run(
    version: str,
    metrics: dict[str, float],
    aliases: tuple[str, ...] = (),
    version_tags: dict[str, str] | None = None,
    run_tags: dict[str, str] | None = None,
) -> VersionRun:
    """A version with the given run metrics, created on day ``version`` of January 2026."""
    return VersionRun(
        version,
        f"run{version}",
        datetime(2026, 1, int(version), tzinfo=UTC),
        aliases=aliases,
        version_tags=version_tags or {},
        metrics=metrics,
        run_tags=run_tags or {},
    )


CHURN_METRICS = {
    "auc": 0.81, "pr_auc": 0.40, "log_loss": 0.19, "brier": 0.05, "ece": 0.012,
    "top_decile_lift": 4.2, "positive_rate": 0.07, "mean_prediction": 0.075,
    "baseline_logreg_auc": 0.74, "baseline_logreg_pr_auc": 0.30, "baseline_logreg_ece": 0.02,
    "baseline_recency_frequency_auc": 0.70, "baseline_recency_frequency_pr_auc": 0.25,
    "baseline_recency_frequency_ece": 0.008, "baseline_logreg_mean_prediction": 0.08,
}  # fmt: skip


def literal_records(folder: Path) -> list[ModelRecord]:
    """Next-step and uplift records as training would log them, without training.

    Metrics come from training's own metric functions on random scores, plots from its own
    plotting functions, so the keys and files are those of a real run.
    """
    from training.metrics import multiclass_metrics, qini_coefficient, uplift_curve
    from training.plots import plot_confusion, plot_qini

    rng = np.random.default_rng(3)
    classes = ["page_view", "purchase", "support", "none"]
    codes = rng.integers(0, 4, 400)
    proba = rng.dirichlet(np.ones(4), 400)
    proba[np.arange(400), codes] += 0.4
    proba /= proba.sum(axis=1, keepdims=True)
    step = multiclass_metrics(codes, proba)
    step.update(
        {f"baseline_markov_{k}": v for k, v in multiclass_metrics(codes, proba[::-1]).items()}
    )
    step.update({f"validation_{k}": v for k, v in step.items() if not k.startswith("baseline")})
    plot_confusion(codes, proba.argmax(axis=1), classes, folder / "confusion.png", "next_step")
    uplift: dict[str, float] = {
        "baseline_random_qini_convert": 0.0,
        "baseline_random_qini_churn": 0.0,
    }
    curves = {}
    for action in ("discount_offer", "content_email"):
        score, treated = rng.normal(size=500), rng.random(500) < 0.4
        y = (rng.random(500) < 0.2 + 0.2 * treated * (score > 0)).astype(float)
        q, auuc = qini_coefficient(score, treated, y, np.full(500, 2.0))
        uplift |= {f"qini_convert_{action}": q, f"auuc_convert_{action}": auuc}
        uplift |= {f"qini_churn_{action}": -q / 2, f"auuc_churn_{action}": auuc / 2}
        curves[action] = uplift_curve(score, treated, y, np.full(500, 2.0))
    for outcome in ("convert", "churn"):
        uplift[f"auuc_{outcome}"] = uplift[f"auuc_{outcome}_discount_offer"]
        uplift[f"qini_{outcome}"] = float(
            np.mean(
                [uplift[f"qini_{outcome}_discount_offer"], uplift[f"qini_{outcome}_content_email"]]
            )
        )
        uplift |= {
            f"policy_gain_{outcome}_random": 0.01,
            f"policy_gain_{outcome}_model": 0.05,
            f"policy_gain_{outcome}_best_single_action": 0.04,
            f"policy_gain_{outcome}_oracle": 0.08,
        }
    plot_qini(curves, folder / "qini_convert.png", "uplift")
    importance = pd.Series({"days_since_last_event": 30.0, "sessions_30d": 12.0, "tenure": 3.0})
    return [
        ModelRecord(
            "next_step", "next_step", GateSettings(metric="top1_accuracy"),
            [run("1", step, aliases=("champion", "challenger"),
                 version_tags={"promoted_by": "gate", "promoted_at": "2026-01-01T09:00"})],
            importance, {"confusion": (folder / "confusion.png").read_bytes()},
        ),
        ModelRecord(
            "uplift", "uplift", GateSettings(metric="qini_convert", floors={"qini_convert": 0.0}),
            [run("1", uplift, aliases=("challenger",))],
            importance, {"qini_convert": (folder / "qini_convert.png").read_bytes()},
        ),
    ]  # fmt: skip


# -- code tests on literal records ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind", "expected"),
    [
        ("baseline_logreg_auc", "binary", ("logreg", "auc")),
        ("baseline_logreg_pr_auc", "binary", ("logreg", "pr_auc")),
        ("baseline_recency_frequency_pr_auc", "binary", ("recency_frequency", "pr_auc")),
        ("baseline_recency_frequency_log_loss", "binary", ("recency_frequency", "log_loss")),
        ("baseline_markov_top1_accuracy", "multiclass", ("markov", "top1_accuracy")),
        ("baseline_random_qini_convert", "uplift", ("random", "qini_convert")),
        ("baseline_logreg_mean_prediction", "binary", None),
        ("baseline_auc", "binary", None),
        ("champion_auc", "binary", None),
    ],
)
def test_baseline_keys_are_parsed_by_the_longest_metric_suffix(
    key: str, kind: str, expected: tuple[str, str] | None
) -> None:
    parsed = baselines({key: 0.5}, kind)
    if expected is None:
        assert parsed == {}
    else:
        assert parsed == {expected[0]: {expected[1]: 0.5}}


def test_the_best_baseline_respects_the_metric_direction() -> None:
    assert best_baseline(CHURN_METRICS, "binary", "auc") == ("logreg", 0.74)
    assert best_baseline(CHURN_METRICS, "binary", "ece") == ("recency_frequency", 0.008)
    assert best_baseline(CHURN_METRICS, "binary", "brier") is None


def test_plain_language_summary_states_the_logged_numbers() -> None:
    record = ModelRecord("churn", "churn", CHURN_GATE, [run("1", CHURN_METRICS)])
    text = " ".join(summary_lines(record))
    assert "ranks a churner above a non-churner 81% of the time" in text
    assert "logreg, 74%" in text
    assert "4.2 times as likely to churn" in text
    assert "off by 1.2 points" in text
    step_metrics = {
        "top1_accuracy": 0.49,
        "top3_accuracy": 0.8,
        "baseline_markov_top1_accuracy": 0.47,
    }
    next_step = ModelRecord(
        "next_step", "next_step", GateSettings(metric="top1_accuracy"), [run("1", step_metrics)]
    )
    assert "right 49% of the time" in summary_lines(next_step)[0]
    assert "markov, is right 47%" in summary_lines(next_step)[0]
    uplift_metrics = {
        "qini_convert": -0.0008,
        "policy_gain_convert_model": 0.074,
        "policy_gain_convert_oracle": 0.089,
        "policy_value_ratio_convert": 0.84,
    }
    uplift = ModelRecord(
        "uplift", "uplift", GateSettings(metric="qini_convert"), [run("1", uplift_metrics)]
    )
    lines = summary_lines(uplift)
    assert "-0.8 conversions per 1,000" in lines[0] and "no better than random" in lines[0]
    assert "adds 74 conversions" in lines[1] and "finds 84% of the conversions" in lines[1]
    # the share of the oracle's gain is the policy report's alone (one definition)
    assert "of the oracle's gain" not in lines[1] and "policy report" in lines[1]


def test_metrics_table_puts_model_baselines_champion_and_validation_side_by_side() -> None:
    metrics = {**CHURN_METRICS, "champion_auc": 0.80, "validation_auc": 0.83}
    table = metrics_table(run("2", metrics, run_tags={"champion_version_compared": "1"}), "binary")
    auc = table.set_index("metric").loc["AUC"]
    assert auc["LightGBM v2"] == 0.81
    assert auc["baseline: logreg"] == 0.74 and auc["baseline: recency_frequency"] == 0.70
    assert auc["champion v1 (same test period)"] == 0.80
    assert auc["LightGBM v2, validation"] == 0.83
    brier = table.set_index("metric").loc["Brier score"]
    assert np.isnan(brier["baseline: logreg"]) and brier["better"] == "lower"
    # no champion compared, no validation metric of the kind: no such columns
    uplift = metrics_table(run("1", {"qini_convert": 0.01, "validation_rows": 9.0}), "uplift")
    assert list(uplift.columns) == ["metric", "better", "LightGBM v1"]


def test_gate_verdicts_flag_a_hand_promoted_champion_and_a_stale_challenger() -> None:
    champion = run(
        "1",
        {**CHURN_METRICS, "ece": 0.09},
        aliases=("champion",),
        version_tags={"promoted_by": "manual", "promoted_at": "2026-01-02T10:00:00+00:00"},
    )
    challenger = run(
        "2", CHURN_METRICS, aliases=("challenger",), run_tags={"champion_version_compared": ""}
    )
    record = ModelRecord("churn", "churn", CHURN_GATE, [challenger, champion])
    first, second = gate_verdicts(record)
    assert first.tone == "warning" and "promoted by hand" in first.title
    assert any("floor ece ≤ 0.05 not met" in r for r in first.decision.reasons)
    assert "no champion yet" not in first.decision.checks
    # trained before the champion existed: the gate refuses until it is retrained
    assert second.tone == "warning" and "would refuse" in second.title
    assert any("retrain" in r for r in second.decision.reasons)
    report = Report("Model report")
    add_model_sections(report, [record])
    html = report.render()
    assert "points on the test period" in html  # the calibration warning (ECE 0.09 > 0.05)
    assert "promoted by hand" in html and "would refuse" in html


def test_a_model_without_versions_says_what_to_run() -> None:
    record = ModelRecord(
        "churn", "churn", CHURN_GATE, [run("1", CHURN_METRICS, aliases=("champion",))]
    )
    missing = ModelRecord("uplift", "uplift", GateSettings(metric="qini_convert"))
    report = Report("Model report")
    add_model_sections(report, [record, missing])
    html = report.render()
    assert "uplift: not trained yet (run `journeyml train --model uplift`)" in html
    assert "uplift model</h2>" not in html and "churn model</h2>" in html


def test_the_shown_metrics_are_those_training_computes() -> None:
    from training.metrics import binary_metrics, multiclass_metrics

    y, p = np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.7, 0.4, 0.6, 0.9])
    assert {m for m, _ in METRICS["binary"]} <= set(binary_metrics(y, p))
    proba = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert {m for m, _ in METRICS["multiclass"]} <= set(
        multiclass_metrics(np.array([0, 1, 1]), proba)
    )


def test_next_step_and_uplift_sections(tmp_path: Path) -> None:
    records = literal_records(tmp_path)
    report = Report("Model report")
    add_model_sections(report, records)
    text = re.sub(
        r"\s+",
        " ",
        re.sub(r"<[^>]+>", " ", re.sub(r"<svg.*?</svg>", "", report.render(), flags=re.S)),
    )
    step = records[0].versions[0].metrics
    assert f"right {step['top1_accuracy']:.0%} of the time" in text and "baseline: markov" in text
    assert "Champion v1, promoted by the gate on 2026-01-01 09:00" in text
    assert "Qini coefficient per action" in text and "oracle" in text
    assert "Challenger v1: the gate would" in text
    # comparison + importance + confusion for next_step; comparison + Qini bars + policy
    # gains + importance + Qini curves for uplift
    assert report.figures == 3 + 5
    assert report.render().count("data:image/png;base64,") == 2


def test_monitoring_output_reads_back_as_written(tmp_path: Path) -> None:
    kpis = pd.DataFrame(
        {"period": [date(2025, 1, 1), date(2025, 1, 2)], "kpi": ["step_conversion"] * 2,
         "step": ["payment"] * 2, "numerator": [9.0, 4.0], "denominator": [10.0, 10.0],
         "value": [0.9, 0.4]}
    )  # fmt: skip
    alerts = pd.DataFrame(
        [{"kpi": "step_conversion", "step": "payment", "direction": "down",
          "start": date(2025, 1, 2), "detected": date(2025, 1, 2), "end": None,
          "baseline": 0.9, "current": 0.4, "change_absolute": -0.5, "change_relative": -0.55,
          "affected_customers": 6, "message": "The payment step broke on 2025-01-02."}]
    )  # fmt: skip
    written = MonitorResult(kpis, alerts, None, {"kpis": 1, "periods": 2, "period_days": 1})
    written.write(tmp_path)
    read = read_monitor_result(tmp_path)
    assert read.facts == written.facts and read.drift is None
    assert read.kpis["value"].tolist() == [0.9, 0.4]
    assert read.alerts.loc[0, "end"] is None and read.alerts.loc[0, "affected_customers"] == 6
    (tmp_path / "kpis.parquet").unlink()
    with pytest.raises(ReportInputError, match=r"lacks kpis.parquet: run `journeyml monitor`"):
        read_monitor_result(tmp_path)
    with pytest.raises(ReportInputError, match=r"no output at .*: run `journeyml evaluate-policy"):
        read_policy_evaluation(tmp_path / "none")


# -- the reports of a trained, monitored and evaluated workspace ---------------------------------


@dataclass(frozen=True)
class ReportWorkspace:
    """A simulated workspace with trained models, monitoring and policy outputs."""

    root: Path
    config: Path  # the training settings (MLflow under the workspace, model name prefix)


def build_report_workspace(base: Path) -> ReportWorkspace:
    """Builds the workspace once per test session (``base`` is the session's temp folder).

    The browser test reuses it: the same session finds it built (the marker file), a
    parallel worker has its own ``base`` and builds its own.
    """
    from evaluation.monitor import load_monitor_settings, run_monitor
    from evaluation.policy import evaluate_policies
    from features.store import Workspace
    from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
    from tests.training.conftest import build_sim_workspace, small_config
    from training.config import GateSettings
    from training.pipeline import train_models
    from training.registry import promote_challenger
    from training.tracking import CHALLENGER, resolve_tracking, use_tracking

    root = base / "report_workspace"
    done = ReportWorkspace(root, root / "models.yaml")
    if (root / ".built").is_file():
        return done
    journey = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    sim = build_sim_workspace(root, journey, 300, 203, seed=5)
    # The report renders whatever the gate decided; this 300-customer world is too small for
    # the shipped gate (its random-forest and BG/NBD baselines come within noise of the model),
    # so the fixture's gate lets a model within 0.05 AUC of its baselines through.
    config = small_config(root / "mlflow_settings")
    config = config.model_copy(
        update={
            "gates": {
                **config.gates,
                "churn": GateSettings(
                    metric="auc",
                    champion_margin=0.002,
                    baseline_margin=-0.05,
                    floors={"auc": 0.6, "ece": 0.1},
                ),
            }
        }
    )
    target = resolve_tracking(config.tracking, root)
    # one model trains in seconds; the other kinds' sections are tested on literal records
    # (literal_records), and the untrained models show the "not trained yet" note
    names = ["churn"]
    train_models(root, names, journey, sim.settings, config, target, sim.truth, sim.decisions)
    client = use_tracking(target)
    for name in names:
        promote_challenger(client, name, config.registered_name(name), config.gate(name))
    # a second churn version, registered from the same run (retraining would cost a minute):
    # it is the challenger, and the gate refuses it (not compared with the champion v1)
    churn = client.get_model_version(config.registered_name("churn"), "1")
    second = client.create_model_version(churn.name, str(churn.source), churn.run_id, churn.tags)
    client.set_registered_model_alias(churn.name, CHALLENGER, second.version)
    done.config.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    ws = Workspace(root)
    run_monitor(
        ws.lake, load_monitor_settings(SIMULATOR_CONFIG_DIR / "monitoring.yaml"), ws.snapshots
    ).write(root / "evaluation" / "monitoring")
    evaluate_policies(root, journey, sim_customers=50, sim_days=30).write(
        root / "evaluation" / "policy"
    )
    (root / ".built").touch()
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> ReportWorkspace:
    return build_report_workspace(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def written(workspace: ReportWorkspace) -> dict[str, str]:
    args = ["report", "--data-dir", str(workspace.root), "--config", str(workspace.config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = workspace.root / "reports"
    return {kind: (folder / f"{kind}.html").read_text() for kind in ("model", "journey", "policy")}


def _settings(workspace: ReportWorkspace) -> TrainingConfig:
    from training.config import load_training_config

    return load_training_config(workspace.config)


def test_records_mirror_the_registry(workspace: ReportWorkspace) -> None:
    from training.tracking import resolve_tracking, use_tracking

    settings = _settings(workspace)
    client = use_tracking(resolve_tracking(settings.tracking, workspace.root))
    records = {r.model: r for r in read_model_records(client, settings)}
    assert list(records) == ["churn", "conversion", "next_step", "next_event", "uplift"]
    for model in ("conversion", "next_step", "next_event", "uplift"):
        assert records[model].versions == [] and records[model].current is None
    churn = records["churn"]
    assert [v.version for v in churn.versions] == ["2", "1"]
    assert churn.champion is not None and churn.champion.version == "1"
    assert churn.challenger is not None and churn.challenger.version == "2"
    assert churn.current is churn.champion
    assert churn.champion.version_tags["promoted_by"] == "gate"
    current = churn.champion
    assert current.run_found and current.run_id == churn.challenger.run_id
    assert current.metrics == pytest.approx(client.get_run(current.run_id).data.metrics)
    assert current.params["feature_service"] and current.run_tags["model"] == "churn"
    assert churn.importance is not None and len(churn.importance) > 5
    assert (np.diff(churn.importance.to_numpy()) <= 0).all()
    assert set(churn.plots) == {"roc", "calibration", "gains"}
    assert all(png.startswith(b"\x89PNG") for png in churn.plots.values())


def _text(html: str) -> str:
    """The visible text, without markup and SVG figures (whose text is glyph paths)."""
    html = re.sub(r"<svg.*?</svg>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_model_report_content(workspace: ReportWorkspace, written: dict[str, str]) -> None:
    from training.tracking import resolve_tracking, use_tracking

    html = written["model"]
    text = _text(html)
    settings = _settings(workspace)
    prefix = settings.registry.prefix
    client = use_tracking(resolve_tracking(settings.tracking, workspace.root))
    metrics = client.get_run(
        str(client.get_model_version(f"{prefix}churn", "1").run_id)
    ).data.metrics
    assert "churn model</h2>" in html and f"{prefix}churn v1 (champion)" in text
    for model in ("conversion", "next_step", "uplift"):
        assert f"{prefix}{model}: not trained yet (run `journeyml train --model {model}`)" in text
    auc, base = metrics["auc"], metrics["baseline_logreg_auc"]
    assert f"ranks a churner above a non-churner {auc:.0%} of the time (AUC {auc:.3f})" in text
    assert f"<td>{base:.3f}</td>" in html  # the logreg baseline's AUC in the metrics table
    assert "Champion v1, promoted by the gate" in text
    assert "Challenger v2: the gate would refuse it" in text and "retrain" in text
    assert "Registered versions, newest first" in text
    # the logged ROC, calibration and gains PNGs are inlined in one figure
    assert html.count("data:image/png;base64,") == 3
    # comparison with the baselines, version history, feature importance, logged plots
    assert html.count("<figure>") == 4


@pytest.mark.parametrize("kind", ["model", "journey", "policy"])
def test_reports_are_self_contained(written: dict[str, str], kind: str) -> None:
    html = written[kind]
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html.lower()  # the figures need no JavaScript
    # nothing is fetched: no src/href/url() to another file or host
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
    refs += re.findall(r"url\(([^)]*)\)", html)
    outside = [r for r in refs if not r.startswith(("#", "data:"))]
    assert outside == [], outside[:5]
    assert html.count("<figure>") >= 3 and html.count("<svg") >= 3


def test_journey_and_policy_reports_content(written: dict[str, str]) -> None:
    journey = _text(written["journey"])
    assert "Journey health" in journey and "Monitored" in journey and "KPIs over" in journey
    assert "Feature drift" in journey
    # the workspace has no analytics output: the report says which command adds it
    assert "No journey analytics yet: run `journeyml analyze --data-dir" in journey
    policy = _text(written["policy"])
    assert "Policy value from the decision log" in policy and "doubly robust" in policy
    assert "True values in the simulator" in policy and "oracle" in policy
    assert "Action mix by segment" in policy


def test_a_stale_output_is_flagged(workspace: ReportWorkspace, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(workspace.root / "evaluation", tmp_path / "evaluation")  # keeps mtimes
    (tmp_path / "lake").mkdir()
    (tmp_path / "lake" / "manifest.json").write_text("{}")  # the lake changed afterwards
    text = _text(build_journey_report(tmp_path).render())
    assert "The event lake changed after this output was written" in text
    assert f"journeyml monitor --data-dir {tmp_path}" in text


def test_missing_prerequisites_name_the_command(workspace: ReportWorkspace, tmp_path: Path) -> None:
    import shutil

    runner = CliRunner()
    result = runner.invoke(app, ["report", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    out = re.sub(r"\s+", " ", result.output)
    assert "model report: no MLflow store at" in out
    assert f"run `journeyml train --data-dir {tmp_path}` first" in out
    assert "journey report: no output at" in out and "run `journeyml monitor --data-dir" in out
    assert "policy report: no output at" in out and "journeyml evaluate-policy --data-dir" in out
    assert not (tmp_path / "reports").exists()
    # one report can be written while another cannot: it is, and the exit status says failure
    args = ["report", "--data-dir", str(workspace.root), "--config", str(workspace.config)]
    only = runner.invoke(app, [*args, "--kind", "journey", "--out", str(tmp_path / "out")])
    assert only.exit_code == 0, only.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["journey.html"]
    # --kind all writes what it can and names what it skipped (no policy evaluation here)
    partial = tmp_path / "partial"
    shutil.copytree(workspace.root, partial, ignore=shutil.ignore_patterns("policy", "reports"))
    some = runner.invoke(
        app, ["report", "--data-dir", str(partial), "--config", str(workspace.config)]
    )
    assert some.exit_code == 0, some.output
    assert "policy report: no output at" in re.sub(r"\s+", " ", some.output)
    assert sorted(p.name for p in (partial / "reports").iterdir()) == [
        "journey.html",
        "model.html",
    ]
    named = runner.invoke(app, ["report", "--data-dir", str(partial), "--kind", "policy"])
    assert named.exit_code == 2
    bad = runner.invoke(app, [*args, "--kind", "models"])
    assert bad.exit_code == 2 and "--kind must be one of" in bad.output
    none = runner.invoke(app, ["report", "--data-dir", str(tmp_path / "absent")])
    assert none.exit_code == 2 and "no workspace at" in none.output


def literal_engine_decisions() -> pd.DataFrame:
    """Segment and chosen action per customer, as the churn-risk list holds them."""
    return pd.DataFrame(
        {
            "segment": ["mainstream"] * 4 + ["premium"] * 2 + [None],
            "action": ["content_email", "content_email", "discount_offer", "none",
                       "retention_call", "retention_call", "none"],
        }
    )  # fmt: skip


def test_engine_mix_section_shows_journeyml_s_own_decisions(tmp_path: Path) -> None:
    from evaluation.policy_report import add_engine_mix_section
    from evaluation.report_cli import read_engine_decisions

    report = Report("Policy report")
    add_engine_mix_section(report, literal_engine_decisions(), "journeyml lists churn-risk")
    text = unescape(_text(report.render()))
    assert "journeyml's decisions by segment" in text
    assert "of the 7 customers" in text and "“content_email” for 29% of customers" in text
    # premium: every customer gets the call; mainstream: half content_email
    assert re.search(r"premium 0\.000 0\.000 0\.000 1\.000", text), text
    assert re.search(r"mainstream 0\.500 0\.250 0\.250 0\.000", text), text
    assert report.figures == 1
    empty = Report("Policy report")
    add_engine_mix_section(empty, None, "journeyml lists churn-risk --data-dir d")
    assert "No churn-risk list in this workspace: `journeyml lists churn-risk --data-dir d`" in (
        unescape(_text(empty.render()))
    )
    assert empty.figures == 0
    # the list's own file: segment and action read, other columns ignored; no list, None
    path = tmp_path / "churn_risk.parquet"
    literal_engine_decisions().assign(churn_risk=0.5).to_parquet(path)
    read = read_engine_decisions(path)
    assert read is not None and list(read.columns) == ["segment", "action"] and len(read) == 7
    assert read_engine_decisions(tmp_path / "missing.parquet") is None
