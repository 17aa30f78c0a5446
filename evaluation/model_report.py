"""The model report: per model, who is champion and challenger, how they compare with their
baselines on the test period, what the promotion gate says, and the evaluation figures.

Everything comes from MLflow, the single record of what was trained: the registered models
and their ``champion`` / ``challenger`` aliases (MLflow 3 has no stages), and for each version
the metrics, parameters, tags and artifacts its training run logged (see
``training/pipeline.py``). Reading (:func:`read_model_records`, MLflow in, plain dataclasses
out) is kept apart from presenting (:func:`add_model_sections`, pure), so the presentation is
tested on literal records and the reading on a real training run.

Figures are redrawn as SVG from logged numbers where the runs log numbers (metrics of the model,
its baselines and the champion; ``feature_importance.json``; the version history). A training
run logs its ROC, calibration, gains, confusion and Qini curves only as PNG files, not the
test-period scores behind them, so those are shown as logged (inlined, no external file)
rather than recomputed: recomputing them here would mean re-labelling the lake and re-reading
features, i.e. re-implementing training inside evaluation.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from evaluation.html import Report, Tone, legend, pyplot
from training.config import LOWER_IS_BETTER, MODEL_NAMES, GateSettings, TrainingConfig
from training.registry import Decision, baseline_values, decide_promotion
from training.tracking import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

KIND_OF = {
    "churn": "binary",
    "conversion": "binary",
    "next_step": "multiclass",
    "next_event": "multiclass",
    "uplift": "uplift",
}

METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "binary": (
        ("auc", "AUC"),
        ("pr_auc", "PR-AUC"),
        ("log_loss", "log loss"),
        ("brier", "Brier score"),
        ("ece", "ECE"),
        ("top_decile_lift", "top-decile lift"),
    ),
    "multiclass": (
        ("top1_accuracy", "top-1 accuracy"),
        ("top3_accuracy", "top-3 accuracy"),
        ("log_loss", "log loss"),
        ("macro_f1", "macro-F1"),
    ),
    "uplift": (
        ("qini_convert", "Qini, conversion"),
        ("qini_churn", "Qini, churn"),
        ("auuc_convert", "AUUC, conversion"),
        ("auuc_churn", "AUUC, churn"),
    ),
}
"""The metrics each kind of model logs for its test period, in the order they are shown."""

LOGGED_PLOTS = {
    "roc": "ROC curves of the model and its baselines on the test period",
    "calibration": "Calibration: observed rate per bin of predicted probability (test period)",
    "gains": "Cumulative gains: share of positives found by targeting the top-scored customers",
    "confusion": "Confusion matrix of the next step (rows: observed, columns: predicted)",
    "qini_convert": "Qini curves of conversion uplift per action (dotted: random targeting)",
}
"""PNG plots a training run logs under ``plots/`` that are shown as logged."""

_WORDS = {
    "churn": ("churner", "non-churner", "churn"),
    "conversion": ("converter", "non-converter", "convert"),
}
_MODEL_COLOR, _BASE_COLOR, _CHAMP_COLOR = "#2a5bd7", "#8a93a6", "#2e9d5b"
ECE_WARNING = 0.05
"""Mean calibration error (probability points) above which the report warns."""


class NoTrainedModelError(RuntimeError):
    """MLflow holds no registered model of journeyml; the message says what to run."""


@dataclass(frozen=True)
class VersionRun:
    """A registered model version with what its training run logged."""

    version: str
    run_id: str
    created: datetime
    aliases: tuple[str, ...] = ()
    version_tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)
    run_found: bool = True


@dataclass
class ModelRecord:
    """One journey model in the registry: its versions and the artifacts of the current one.

    ``current`` is the version the report is about: the champion (what serving uses), else
    the challenger, else the newest version.
    """

    model: str
    registered_name: str
    gate: GateSettings
    versions: list[VersionRun] = field(default_factory=list)  # newest first
    importance: pd.Series | None = None  # total gain per feature of the current version
    plots: dict[str, bytes] = field(default_factory=dict)  # logged PNG plots, by file stem

    @property
    def kind(self) -> str:
        return KIND_OF[self.model]

    def _aliased(self, alias: str) -> VersionRun | None:
        return next((v for v in self.versions if alias in v.aliases), None)

    @property
    def champion(self) -> VersionRun | None:
        return self._aliased(CHAMPION)

    @property
    def challenger(self) -> VersionRun | None:
        return self._aliased(CHALLENGER)

    @property
    def current(self) -> VersionRun | None:
        return self.champion or self.challenger or (self.versions[0] if self.versions else None)


# -- reading MLflow ------------------------------------------------------------------------------


def read_model_records(
    client: MlflowClient,
    config: TrainingConfig,
    models: Sequence[str] = MODEL_NAMES,
    max_versions: int = 20,
) -> list[ModelRecord]:
    """The registered versions of each model, with run data and the current one's artifacts.

    A model that was never registered gets a record without versions (the report says to
    train it). Only the ``max_versions`` newest versions, plus any aliased one, are read.

    Raises:
        NoTrainedModelError: none of ``models`` is registered.
    """
    from mlflow.exceptions import MlflowException

    records = []
    for model in models:
        name = config.registered_name(model)
        record = ModelRecord(model, name, config.gate(model))
        records.append(record)
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            continue
        alias_of: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            alias_of.setdefault(str(version), []).append(str(alias))
        found = sorted(
            client.search_model_versions(f"name = '{name}'"),
            key=lambda v: int(v.version),
            reverse=True,
        )
        kept = [v for i, v in enumerate(found) if i < max_versions or str(v.version) in alias_of]
        record.versions = [_version_run(client, v, alias_of) for v in kept]
        current = record.current
        if current is not None and current.run_found:
            record.importance, record.plots = _read_artifacts(client, current.run_id)
    if not any(r.versions for r in records):
        names = ", ".join(config.registered_name(m) for m in models)
        raise NoTrainedModelError(
            f"MLflow has no registered model ({names}): run `journeyml train` first"
        )
    return records


def _version_run(client: MlflowClient, version: Any, alias_of: dict[str, list[str]]) -> VersionRun:
    from mlflow.exceptions import MlflowException

    created = datetime.fromtimestamp((version.creation_timestamp or 0) / 1000, UTC)
    base = VersionRun(
        version=str(version.version),
        run_id=str(version.run_id or ""),
        created=created,
        aliases=tuple(sorted(alias_of.get(str(version.version), []))),
        version_tags=dict(version.tags or {}),
    )
    try:
        run = client.get_run(str(version.run_id))
    except MlflowException:
        logger.warning("%s v%s: its run %s is gone", version.name, version.version, version.run_id)
        return replace(base, run_found=False)
    return replace(
        base,
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        params=dict(run.data.params),
        run_tags=dict(run.data.tags),
    )


def _read_artifacts(client: MlflowClient, run_id: str) -> tuple[pd.Series | None, dict[str, bytes]]:
    """feature_importance.json and the PNG plots of a run (missing ones are skipped)."""
    from mlflow.exceptions import MlflowException

    importance: pd.Series | None = None
    plots: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="model-report-") as tmp:
        try:
            path = Path(client.download_artifacts(run_id, "feature_importance.json", tmp))
            values = json.loads(path.read_text())
            importance = pd.Series(values, dtype="float64").sort_values(ascending=False)
        except (MlflowException, OSError, ValueError) as exc:
            logger.warning("run %s: no readable feature_importance.json (%s)", run_id, exc)
        try:
            listed = client.list_artifacts(run_id, "plots")
        except (MlflowException, OSError) as exc:
            logger.warning("run %s: cannot list plots (%s)", run_id, exc)
            listed = []
        for info in listed:
            stem = Path(info.path).stem
            if info.is_dir or not info.path.endswith(".png") or stem not in LOGGED_PLOTS:
                continue
            try:
                plots[stem] = Path(client.download_artifacts(run_id, info.path, tmp)).read_bytes()
            except (MlflowException, OSError) as exc:
                logger.warning("run %s: cannot read %s (%s)", run_id, info.path, exc)
    return importance, plots


# -- what the numbers say ------------------------------------------------------------------------


def metric_value(metrics: dict[str, float], key: str) -> float | None:
    """A logged metric, None when absent or not finite."""
    value = metrics.get(key)
    return value if value is not None and math.isfinite(value) else None


def baselines(metrics: dict[str, float], kind: str) -> dict[str, dict[str, float]]:
    """The baselines a run logged, ``{baseline: {metric: value}}`` for the kind's metrics
    (keys ``baseline_<name>_<metric>``, matched by the known baseline names)."""
    out: dict[str, dict[str, float]] = {}
    for metric, _ in METRICS[kind]:
        for name, value in baseline_values(metrics, metric).items():
            if math.isfinite(value):
                out.setdefault(name, {})[metric] = float(value)
    return out


def best_baseline(metrics: dict[str, float], kind: str, metric: str) -> tuple[str, float] | None:
    """The baseline that does best on ``metric`` (lowest for lower-is-better metrics)."""
    scored = {n: m[metric] for n, m in baselines(metrics, kind).items() if metric in m}
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    name = pick(scored, key=lambda n: scored[n])
    return name, scored[name]


def metrics_table(run: VersionRun, kind: str) -> pd.DataFrame:
    """Test-period metrics of the model, each baseline and the champion, one row per metric."""
    bases = baselines(run.metrics, kind)
    rows = []
    for metric, label in METRICS[kind]:
        row: dict[str, Any] = {
            "metric": label,
            "better": "lower" if metric in LOWER_IS_BETTER else "higher",
            f"LightGBM v{run.version}": _nan(metric_value(run.metrics, metric)),
        }
        for name, values in sorted(bases.items()):
            row[f"baseline: {name}"] = values.get(metric, np.nan)
        compared = run.run_tags.get("champion_version_compared")
        if any(k.startswith("champion_") for k in run.metrics):
            row[f"champion v{compared} (same test period)"] = _nan(
                metric_value(run.metrics, f"champion_{metric}")
            )
        if any(f"validation_{m}" in run.metrics for m, _ in METRICS[kind]):
            row[f"LightGBM v{run.version}, validation"] = _nan(
                metric_value(run.metrics, f"validation_{metric}")
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def summary_lines(record: ModelRecord) -> list[str]:
    """Plain-language sentences on how good the current version is, from its logged metrics."""
    run = record.current
    if run is None or not run.metrics:
        return []
    m = run.metrics
    if record.kind == "binary":
        return _binary_lines(record.model, m)
    if record.kind == "multiclass":
        return _multiclass_lines(m)
    return _uplift_lines(m)


def _binary_lines(model: str, m: dict[str, float]) -> list[str]:
    positive, negative, verb = _WORDS.get(model, ("positive", "negative", "be positive"))
    lines = []
    auc = metric_value(m, "auc")
    if auc is not None:
        text = (
            f"The {model} model ranks a {positive} above a {negative} {auc:.0%} of the time "
            f"(AUC {auc:.3f})"
        )
        base = best_baseline(m, "binary", "auc")
        if base is not None:
            text += f"; the best baseline, {base[0]}, {base[1]:.0%} ({base[1]:.3f})"
        lines.append(text + ".")
    lift, rate = metric_value(m, "top_decile_lift"), metric_value(m, "positive_rate")
    if lift is not None:
        share = f" (on average {rate:.1%} do)" if rate is not None else ""
        lines.append(
            f"The 10 % of customers it scores highest are {lift:.1f} times as likely to {verb} "
            f"as the average customer{share}."
        )
    ece, mean_p = metric_value(m, "ece"), metric_value(m, "mean_prediction")
    if ece is not None:
        text = f"Its probabilities are off by {ece * 100:.1f} points on average (ECE)"
        if mean_p is not None and rate is not None:
            text += f"; it predicts {mean_p:.1%} on average against {rate:.1%} observed"
        lines.append(text + ".")
    truth, gap = metric_value(m, "auc_truth"), metric_value(m, "auc_gap_to_truth")
    if truth is not None and gap is not None:
        lines.append(
            f"In the simulator, ranking by the true probabilities would reach an AUC of "
            f"{truth:.3f} on the same customers: the model is {gap:.3f} below what is achievable."
        )
    return lines


def _multiclass_lines(m: dict[str, float]) -> list[str]:
    top1, top3 = metric_value(m, "top1_accuracy"), metric_value(m, "top3_accuracy")
    if top1 is None:
        return []
    text = f"The next-step model names the customer's next step right {top1:.0%} of the time"
    if top3 is not None:
        text += f", and the right one is among its first three guesses {top3:.0%} of the time"
    base = best_baseline(m, "multiclass", "top1_accuracy")
    if base is not None:
        text += f"; the best baseline, {base[0]}, is right {base[1]:.0%} of the time"
    return [text + "."]


def _uplift_lines(m: dict[str, float]) -> list[str]:
    lines = []
    qini, auuc = metric_value(m, "qini_convert"), metric_value(m, "auuc_convert")
    if qini is not None:
        verdict = (
            "better than random targeting"
            if qini > 0
            else "no better than random targeting (Qini 0)"
        )
        text = (
            f"Ranking customers by predicted conversion uplift gains {qini * 1000:+.1f} "
            "conversions per 1,000 customers over random targeting (Qini coefficient: averaged "
            f"over targeting depths and actions): {verdict}"
        )
        if auuc is not None:
            text += f" (AUUC {auuc * 1000:.1f} per 1,000)"
        lines.append(text + ".")
    gains = {p: metric_value(m, f"policy_gain_convert_{p}") for p in _POLICIES}
    if gains["model"] is not None and gains["oracle"] is not None:
        text = (
            f"Acting on the model (each customer gets the action with the best predicted effect, "
            f"or none) adds {gains['model'] * 1000:.0f} conversions per 1,000 customers by the "
            f"simulator's true effects; the oracle adds {gains['oracle'] * 1000:.0f}"
        )
        best = gains["best_single_action"]
        if best is not None:
            text += f", the best single action for everyone {best * 1000:.0f}"
        random_gain = gains["random"]
        if random_gain is not None:
            text += f", a random action {random_gain * 1000:.0f}"
        ratio = metric_value(m, "policy_value_ratio_convert")
        if ratio is not None:
            # not "the oracle's gain": that share (net value over a whole run) is the policy
            # report's, evaluation.policy_sim.share_of_oracle_gain
            text += (
                f": the model finds {ratio:.0%} of the conversions the best true action per "
                "customer adds at one decision, before action costs (the share of the oracle's "
                "net gain over a whole run is the policy report's)"
            )
        lines.append(text + ".")
    return lines


_POLICIES = ("random", "best_single_action", "model", "oracle")


@dataclass(frozen=True)
class Verdict:
    """What the promotion gate says about one version, in words for the report."""

    title: str
    short: str  # a few words for the overview table
    tone: Tone
    decision: Decision


def gate_verdicts(record: ModelRecord) -> list[Verdict]:
    """The gate on the challenger (as ``journeyml promote`` would run it) and on the champion.

    The champion is checked against the floors and its own run's baselines (the champion
    comparison does not apply to itself), and the report says how it got the alias: by the
    gate, or by hand (``promote --to``), which skips the gate.
    """
    out = []
    champion, challenger = record.champion, record.challenger
    if champion is not None:
        decision = decide_promotion(record.model, champion.metrics, record.gate, None, None)
        # checked on its own, the champion is compared with no champion: not worth a line
        decision.checks = [c for c in decision.checks if c != "no champion yet"]
        how = champion.version_tags.get("promoted_by", "")
        when = champion.version_tags.get("promoted_at", "")[:16].replace("T", " ")
        if how == "manual":
            origin = f"promoted by hand on {when} (promote --to: no gate)"
        elif how == "gate":
            origin = f"promoted by the gate on {when}"
        else:
            origin = "aliased champion outside `journeyml promote`"
        state = "meets" if decision.promote else "does not meet"
        tone: Tone = "good" if decision.promote else "warning"
        title = f"Champion v{champion.version}, {origin}: {state} the floors and baselines today"
        short = f"champion v{champion.version} {'passes' if decision.promote else 'fails'}"
        if how == "manual":
            short += " (promoted by hand)"
        out.append(Verdict(title, short, tone, decision))
    if challenger is not None and (champion is None or challenger.version != champion.version):
        compared = challenger.run_tags.get("champion_version_compared") or None
        decision = decide_promotion(
            record.model,
            challenger.metrics,
            record.gate,
            champion.version if champion else None,
            compared,
        )
        word = "would promote" if decision.promote else "would refuse"
        tone = "good" if decision.promote else "warning"
        out.append(
            Verdict(
                f"Challenger v{challenger.version}: the gate {word} it",
                f"challenger v{challenger.version}: {word}",
                tone,
                decision,
            )
        )
    return out


# -- the report ----------------------------------------------------------------------------------


def add_model_sections(report: Report, records: Sequence[ModelRecord]) -> None:
    """An overview of every model, then one section per registered model."""
    report.section("Models")
    report.text(
        "Each model is trained on a time-based split and evaluated on the last period it "
        "never saw, next to simple baselines trained on the same data. `journeyml promote` "
        "moves the champion alias (what the decision service uses) to a challenger only when "
        "it passes the gate of configs/models.yaml."
    )
    report.table(overview_table(records), caption="Registered models")
    for record in records:
        if not record.versions:
            report.note(
                f"{record.registered_name}: not trained yet (run `journeyml train --model "
                f"{record.model}`).",
                "warning",
            )
    for record in records:
        if record.versions:
            _add_model(report, record)


def overview_table(records: Sequence[ModelRecord]) -> pd.DataFrame:
    """One row per model: aliases, primary metric of the current version, best baseline."""
    rows = []
    for r in records:
        current, metric = r.current, r.gate.metric
        base = best_baseline(current.metrics, r.kind, metric) if current else None
        verdicts = gate_verdicts(r)
        rows.append(
            {
                "model": r.registered_name,
                "versions": len(r.versions),
                "champion": f"v{r.champion.version}" if r.champion else "none",
                "challenger": f"v{r.challenger.version}" if r.challenger else "none",
                "primary metric": metric,
                "current": _nan(metric_value(current.metrics, metric)) if current else np.nan,
                "best baseline": f"{base[1]:.3f} ({base[0]})" if base else "–",
                "gate": "; ".join(v.short for v in verdicts) or "–",
            }
        )
    return pd.DataFrame(rows)


def _add_model(report: Report, record: ModelRecord) -> None:
    run = record.current
    if run is None:  # never registered: the overview's note says what to run
        return
    role = (
        "champion"
        if run is record.champion
        else ("challenger" if run is record.challenger else "newest")
    )
    report.section(f"{record.model} model")
    periods = ""
    if run.params.get("test_from"):
        periods = (
            f"; test period {_period(run.params, 'test')}, trained on "
            f"{_period(run.params, 'train')}"
        )
    report.text(
        f"{record.registered_name} v{run.version} ({role}), registered {_day(run.created)} "
        f"from run {run.run_id[:12]}{periods}. Git commit "
        f"{run.run_tags.get('git_commit', 'unknown')[:10]}"
        + (" (uncommitted changes)" if run.run_tags.get("git_dirty") == "true" else "")
        + "."
    )
    if not run.run_found:
        report.note(f"The training run of v{run.version} is gone from MLflow.", "alert")
        return
    lines = summary_lines(record)
    if lines:
        report.bullets(lines)
    _calibration_note(report, run)
    kpis = [
        (f"{label} (v{run.version})", _fmt(run.metrics, m)) for m, label in METRICS[record.kind]
    ]
    report.kpis(kpis[:4])
    report.heading("Against the baselines")
    report.table(metrics_table(run, record.kind), caption="Test-period metrics")
    compared = any(k.startswith("champion_") for k in run.metrics)
    report.figure(
        _comparison_figure(run, record.kind),
        caption=f"v{run.version} (blue) against its baselines (grey)"
        + (" and the champion it was compared with (green)" if compared else "")
        + ", on the same test period",
    )
    if record.kind == "uplift":
        _add_uplift_figures(report, run)
    report.heading("Promotion gate")
    gate = record.gate
    report.text(
        f"Primary metric {gate.metric}; floors "
        + (", ".join(f"{k} {v:g}" for k, v in sorted(gate.floors.items())) or "none")
        + f"; margin over baselines {gate.baseline_margin:g}, over the champion "
        f"{gate.champion_margin:g}."
    )
    for verdict in gate_verdicts(record):
        report.note(verdict.title, verdict.tone)
        items = [f"✗ {r}" for r in verdict.decision.reasons]
        items += [f"✓ {c}" for c in verdict.decision.checks]
        if items:
            report.bullets(items)
    if len(record.versions) > 1:
        report.heading("Versions")
        report.table(_versions_table(record), caption="Registered versions, newest first")
        figure = _history_figure(record)
        if figure is not None:
            report.figure(figure, caption=f"{gate.metric} of each version on its own test period")
    report.heading("Figures of the training run")
    if record.importance is not None and not record.importance.empty:
        report.figure(
            _importance_figure(record.importance.head(15)),
            caption=f"The 15 most important features of v{run.version} (total split gain)",
        )
    logged = [stem for stem in LOGGED_PLOTS if stem in record.plots]
    if logged:
        captions = "; ".join(f"({i + 1}) {LOGGED_PLOTS[s]}" for i, s in enumerate(logged))
        report.figure(
            _logged_png_figure([record.plots[s] for s in logged]),
            caption=f"{captions}. As logged (PNG) by run {run.run_id[:12]}.",
        )
    if not record.plots:
        report.note(f"Run {run.run_id[:12]} logged no evaluation plots.", "warning")


def _calibration_note(report: Report, run: VersionRun) -> None:
    ece, validation = metric_value(run.metrics, "ece"), metric_value(run.metrics, "validation_ece")
    if ece is None or ece <= ECE_WARNING:
        return
    text = (
        f"Calibration: predicted probabilities are off by {ece * 100:.1f} points on the test period"
    )
    if validation is not None:
        text += f" against {validation * 100:.1f} on the validation period it was calibrated on"
    report.note(
        text + ": treat the probabilities as scores, or recalibrate on more recent data.",
        "warning",
    )


def _versions_table(record: ModelRecord) -> pd.DataFrame:
    metric = record.gate.metric
    rows = []
    for v in record.versions:
        base = best_baseline(v.metrics, record.kind, metric)
        rows.append(
            {
                "version": f"v{v.version}",
                "aliases": ", ".join(v.aliases) or "–",
                "created": v.created.strftime("%Y-%m-%d %H:%M"),
                "test period": _period(v.params, "test"),
                metric: _nan(metric_value(v.metrics, metric)),
                "best baseline": np.nan if base is None else base[1],
                "promoted by": v.version_tags.get("promoted_by", "–"),
            }
        )
    return pd.DataFrame(rows)


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _period(params: dict[str, str], split: str) -> str:
    start, end = params.get(f"{split}_from", ""), params.get(f"{split}_to", "")
    if not start:
        return "not logged"
    return f"{start[:10]} to {end[:10]}"


def _fmt(metrics: dict[str, float], metric: str) -> str:
    value = metric_value(metrics, metric)
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 0.1 else f"{value:.3f}"


# -- figures -------------------------------------------------------------------------------------


def _comparison_figure(run: VersionRun, kind: str) -> Any:
    """One small panel per metric: the model, each baseline and the compared champion."""
    plt = pyplot()
    bases = baselines(run.metrics, kind)
    specs = [
        (metric, label)
        for metric, label in METRICS[kind]
        if metric_value(run.metrics, metric) is not None or any(metric in b for b in bases.values())
    ] or list(METRICS[kind][:1])
    columns = 3 if len(specs) > 4 else 2
    rows = math.ceil(len(specs) / columns)
    entries = max(2 + len(bases), 2)
    fig, axes = plt.subplots(
        rows, columns, figsize=(9, rows * (0.32 * entries + 1.0)), squeeze=False
    )
    for ax, (metric, label) in zip(axes.ravel(), specs, strict=False):
        names, values, colors = [], [], []
        model = metric_value(run.metrics, metric)
        if model is not None:
            names.append(f"v{run.version}")
            values.append(model)
            colors.append(_MODEL_COLOR)
        for name, scores in sorted(bases.items()):
            if metric in scores:
                names.append(name)
                values.append(scores[metric])
                colors.append(_BASE_COLOR)
        champ = metric_value(run.metrics, f"champion_{metric}")
        if champ is not None:
            names.append(f"champion v{run.run_tags.get('champion_version_compared', '?')}")
            values.append(champ)
            colors.append(_CHAMP_COLOR)
        y = np.arange(len(values))[::-1]
        ax.barh(y, values, color=colors, height=0.6)
        ax.set_yticks(y, names, fontsize=8)
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        ax.set_title(f"{label} ({better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.axvline(0, color="k", lw=0.6)
        for yi, v in zip(y, values, strict=True):
            ax.annotate(
                f"{v:.3f}", (v, yi), xytext=(3, 0), textcoords="offset points",
                va="center", fontsize=7,
            )  # fmt: skip
        if values:
            lo, hi = min(0.0, *values), max(0.0, *values)
            ax.set_xlim(lo - 0.05 * (hi - lo or 1), hi + 0.25 * (hi - lo or 1))
    for ax in axes.ravel()[len(specs) :]:
        ax.set_visible(False)
    keys = [(f"this version (v{run.version})", _MODEL_COLOR, "bar"),
            ("baselines", _BASE_COLOR, "bar")]  # fmt: skip
    if metric_value(run.metrics, f"champion_{specs[0][0]}") is not None:
        keys.append(("champion compared", _CHAMP_COLOR, "bar"))
    legend(axes.ravel()[0], keys, loc="lower right")
    fig.tight_layout()
    return fig


def _add_uplift_figures(report: Report, run: VersionRun) -> None:
    actions = sorted(
        {
            k.removeprefix("qini_convert_")
            for k in run.metrics
            if k.startswith("qini_convert_") and metric_value(run.metrics, k) is not None
        }
    )
    if actions:
        table = pd.DataFrame(
            {
                "action": actions,
                "Qini, conversion": [run.metrics.get(f"qini_convert_{a}", np.nan) for a in actions],
                "Qini, churn": [run.metrics.get(f"qini_churn_{a}", np.nan) for a in actions],
            }
        )
        report.figure(
            _qini_figure(table),
            caption="Qini coefficient per action (extra good outcomes per 1,000 customers above "
            "random targeting; churn: churns avoided)",
        )
    gains = {
        outcome: {p: metric_value(run.metrics, f"policy_gain_{outcome}_{p}") for p in _POLICIES}
        for outcome in ("convert", "churn")
    }
    if any(v is not None for g in gains.values() for v in g.values()):
        report.figure(
            _policy_gain_figure(gains),
            caption="Gain per 1,000 customers of acting on the model, by the simulator's true "
            "effects, next to random, the best single action and the oracle",
        )


def _qini_figure(table: pd.DataFrame) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.35 * len(table) + 1.4), sharey=True)
    y = np.arange(len(table))[::-1]
    for ax, column in zip(axes, ("Qini, conversion", "Qini, churn"), strict=True):
        values = table[column].to_numpy(dtype=float) * 1000
        colors = ["#2e9d5b" if v > 0 else "#d2423b" for v in np.nan_to_num(values)]
        ax.barh(y, np.nan_to_num(values), color=colors, height=0.6)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(column + " (per 1,000)", fontsize=9)
        ax.tick_params(labelsize=8)
    legend(
        axes[0],
        [("better than random targeting", "#2e9d5b", "bar"), ("worse", "#d2423b", "bar")],
        loc="lower right",
    )
    axes[0].set_yticks(y, table["action"].tolist())
    fig.tight_layout()
    return fig


def _policy_gain_figure(gains: dict[str, dict[str, float | None]]) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.6), sharey=True)
    labels = {"random": "random action", "best_single_action": "best single action",
              "model": "model", "oracle": "oracle"}  # fmt: skip
    y = np.arange(len(_POLICIES))[::-1]
    for ax, outcome in zip(axes, ("convert", "churn"), strict=True):
        values = [gains[outcome][p] for p in _POLICIES]
        shown = [0.0 if v is None else v * 1000 for v in values]
        colors = [_MODEL_COLOR if p == "model" else _BASE_COLOR for p in _POLICIES]
        ax.barh(y, shown, color=colors, height=0.6)
        ax.axvline(0, color="k", lw=0.8)
        word = "conversions added" if outcome == "convert" else "churns avoided"
        ax.set_title(f"{word} per 1,000 customers", fontsize=9)
        ax.tick_params(labelsize=8)
    legend(
        axes[0],
        [
            ("targeting by the model", _MODEL_COLOR, "bar"),
            ("reference policies", _BASE_COLOR, "bar"),
        ],
        loc="lower right",
    )
    axes[0].set_yticks(y, [labels[p] for p in _POLICIES])
    fig.tight_layout()
    return fig


def _history_figure(record: ModelRecord) -> Any | None:
    metric = record.gate.metric
    points = [
        (
            int(v.version),
            metric_value(v.metrics, metric),
            best_baseline(v.metrics, record.kind, metric),
        )
        for v in reversed(record.versions)
    ]
    points = [(n, m, b) for n, m, b in points if m is not None]
    if len(points) < 2:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    xs = [n for n, _, _ in points]
    ax.plot(xs, [m for _, m, _ in points], "o-", color=_MODEL_COLOR, label="model")
    based = [(n, b[1]) for n, _, b in points if b is not None]
    if based:
        ax.plot(*zip(*based, strict=True), "s:", color=_BASE_COLOR, label="best baseline")
    for v in record.versions:
        value = metric_value(v.metrics, metric)
        if CHAMPION in v.aliases and value is not None:
            ax.plot([int(v.version)], [value], "*", ms=16, color=_CHAMP_COLOR, label="champion")
    ax.set_xticks(xs, [f"v{n}" for n in xs])
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _importance_figure(importance: pd.Series) -> Any:
    plt = pyplot()
    head = importance[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(head) + 1))
    ax.barh([str(i) for i in head.index], head.to_numpy(), color=_MODEL_COLOR)
    ax.set_xlabel("total gain")
    legend(ax, [("total split gain of the feature", _MODEL_COLOR, "bar")], loc="lower right")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def _logged_png_figure(pngs: Sequence[bytes]) -> Any:
    """Logged PNG plots side by side, pixel for pixel (``interpolation='none'`` keeps them)."""
    import matplotlib.image as mpimg

    plt = pyplot()
    images = [mpimg.imread(io.BytesIO(png), format="png") for png in pngs]
    height = max(i.shape[0] for i in images)
    width = sum(i.shape[1] for i in images)
    fig = plt.figure(figsize=(width / 80, height / 80))
    left = 0.0
    for image in images:
        share = image.shape[1] / width
        ax = fig.add_axes((left, 0.0, share, image.shape[0] / height))
        ax.imshow(image, interpolation="none")
        ax.set_axis_off()
        ax.set_gid("legend_in_image")  # the logged plots draw their own legend or colour scale
        left += share
    return fig
