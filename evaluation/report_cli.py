"""``journeyml report``: the model, journey and policy reports as self-contained HTML files.

The reports present what the stage commands recorded; they never re-run a stage:

- model report: the registered models and their training runs in MLflow (``journeyml train``,
  ``journeyml promote``);
- journey report: what ``journeyml monitor`` wrote to ``<data-dir>/evaluation/monitoring``,
  plus the journey analytics of ``journeyml analyze`` (``<data-dir>/evaluation/journey``) when
  that stage is installed and has run (see :func:`add_journey_analytics`);
- policy report: what ``journeyml evaluate-policy`` wrote to ``<data-dir>/evaluation/policy``.

Why read rather than re-run: ``evaluate-policy`` re-simulates every policy (minutes on a
year-long log) and a report that silently recomputed a stage would hide which settings
produced what it shows. A missing output is an error that names the command to run; an
output older than the event lake gets a warning at the top of its report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from evaluation.html import Report
    from evaluation.monitor import MonitorResult
    from evaluation.policy import PolicyEvaluation

logger = logging.getLogger(__name__)
console = Console()
err = Console(stderr=True)

KINDS = ("model", "journey", "policy")


class ReportInputError(RuntimeError):
    """A report's input is missing or unreadable; the message says which and what to run."""


# -- reading what the stages wrote ---------------------------------------------------------------


def _need(folder: Path, names: tuple[str, ...], command: str) -> None:
    if not folder.is_dir():
        raise ReportInputError(f"no output at {folder}: run `{command}` first")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ReportInputError(
            f"{folder} lacks {', '.join(missing)}: run `{command}` again (it writes them)"
        )


def read_monitor_result(folder: Path, command: str = "journeyml monitor") -> MonitorResult:
    """A monitoring run as :meth:`MonitorResult.write` left it in ``folder``.

    Raises:
        ReportInputError: the folder or one of its files is missing or unreadable.
    """
    from evaluation.monitor import MonitorResult, read_incidents_jsonl

    _need(folder, ("kpis.parquet", "alerts.csv", "summary.json"), command)
    try:
        kpis = pd.read_parquet(folder / "kpis.parquet")
        alerts = pd.read_csv(folder / "alerts.csv")
        drift = pd.read_csv(folder / "drift.csv") if (folder / "drift.csv").is_file() else None
        scores = (
            pd.read_csv(folder / "score_drift.csv")
            if (folder / "score_drift.csv").is_file()
            else None
        )
        performance = (
            pd.read_csv(folder / "performance.csv")
            if (folder / "performance.csv").is_file()
            else None
        )
        facts = json.loads((folder / "summary.json").read_text())
        incidents = read_incidents_jsonl(folder / "incidents.jsonl")
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"cannot read the monitoring output in {folder}: {exc}") from None
    expected = {"period", "kpi", "step", "value"}
    if not expected <= set(kpis.columns):
        raise ReportInputError(
            f"{folder / 'kpis.parquet'} lacks columns "
            f"{', '.join(sorted(expected - set(kpis.columns)))}: run `{command}` again"
        )
    alerts["end"] = alerts["end"].astype(object).where(alerts["end"].notna(), None)
    return MonitorResult(kpis, alerts, drift, facts, scores, incidents, performance)


def read_policy_evaluation(
    folder: Path, command: str = "journeyml evaluate-policy"
) -> PolicyEvaluation:
    """A policy evaluation as :meth:`PolicyEvaluation.write` left it in ``folder``.

    Raises:
        ReportInputError: the folder or one of its files is missing or unreadable.
    """
    from evaluation.policy import PolicyEvaluation

    _need(folder, ("estimates.csv", "action_mix.csv", "summary.json"), command)
    try:
        estimates = pd.read_csv(folder / "estimates.csv")
        true_path = folder / "true_values.csv"
        true_values = pd.read_csv(true_path) if true_path.is_file() else None
        mix = pd.read_csv(folder / "action_mix.csv", index_col=0)
        facts = json.loads((folder / "summary.json").read_text())
        fair_path, gaps_path = folder / "fairness.csv", folder / "fairness_gaps.csv"
        fairness = pd.read_csv(fair_path) if fair_path.is_file() else None
        gaps = pd.read_csv(gaps_path) if gaps_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"cannot read the policy output in {folder}: {exc}") from None
    if "dr" not in set(estimates.get("estimator", pd.Series(dtype=str))):
        raise ReportInputError(
            f"{folder / 'estimates.csv'} has no doubly robust estimates: run `{command}` again"
        )
    choices = facts.pop("oracle_choices", {}) or {}
    return PolicyEvaluation(
        estimates, true_values, mix, facts, dict(choices), fairness=fairness, fairness_gaps=gaps
    )


def _stale_note(report: Report, written: Path, lake: Path, command: str) -> None:
    """Warns when the event lake changed after a stage wrote its output."""
    manifest = lake / "manifest.json"
    if (
        manifest.is_file()
        and written.is_file()
        and manifest.stat().st_mtime > written.stat().st_mtime
    ):
        report.note(
            f"The event lake changed after this output was written: run `{command}` again "
            "to include the latest events.",
            "warning",
        )


# -- the three reports ---------------------------------------------------------------------------


def build_model_report(data_dir: Path, config: Path | None) -> Report:
    """The model report from the MLflow store the training settings point to.

    Raises:
        ReportInputError: the settings are invalid, there is no MLflow store or no model.
    """
    from evaluation.html import Report
    from evaluation.model_report import NoTrainedModelError, add_model_sections, read_model_records
    from journeyml.config import ConfigError
    from training.config import load_training_config
    from training.tracking import resolve_tracking, use_tracking

    try:
        settings = load_training_config(config)
    except ConfigError as exc:
        raise ReportInputError(str(exc)) from None
    target = resolve_tracking(settings.tracking, data_dir)
    command = f"journeyml train --data-dir {data_dir}"
    if target.tracking_uri.startswith("sqlite:///"):
        store = Path(target.tracking_uri.removeprefix("sqlite:///"))
        if not store.is_file():
            raise ReportInputError(f"no MLflow store at {store}: run `{command}` first")
    client = use_tracking(target)
    try:
        records = read_model_records(client, settings)
    except NoTrainedModelError as exc:
        raise ReportInputError(f"{exc} (`{command}`)") from None
    report = Report(
        "Model report",
        subtitle=f"MLflow {target.tracking_uri}, experiment {target.experiment}",
    )
    add_model_sections(report, records)
    return report


def build_journey_report(data_dir: Path) -> Report:
    """Journey health from the monitoring output, then the journey analytics if available.

    Raises:
        ReportInputError: there is no monitoring output.
    """
    from evaluation.html import Report
    from evaluation.monitor_report import add_monitoring_sections

    folder = data_dir / "evaluation" / "monitoring"
    command = f"journeyml monitor --data-dir {data_dir}"
    result = read_monitor_result(folder, command)
    facts = result.facts
    report = Report(
        "Journey report",
        subtitle=f"{data_dir / 'lake'}, events from {str(facts.get('first_event', ''))[:10]} "
        f"to {str(facts.get('last_event', ''))[:10]}",
    )
    report.section("About this report")
    report.text(
        "How customers move through their journeys and where the journey breaks: the step "
        "KPIs with the changes `journeyml monitor` detected, feature drift, and the journey "
        "analytics (funnel, transitions, moments that matter) of `journeyml analyze`."
    )
    _stale_note(report, folder / "summary.json", data_dir / "lake", command)
    add_journey_analytics(report, data_dir / "evaluation" / "journey", data_dir)
    add_monitoring_sections(report, result)
    return report


def add_journey_analytics(report: Report, folder: Path, data_dir: Path) -> bool:
    """Adds the journey analytics sections (funnel, transitions, moments that matter) of
    ``journeyml analyze``, or a note saying how to get them.

    Returns:
        Whether the analytics sections were added.
    """
    from evaluation.journey import read_journey_result
    from evaluation.journey_report import add_journey_sections

    if not folder.is_dir():
        report.note(
            f"No journey analytics yet: run `journeyml analyze --data-dir {data_dir}` to add the "
            "funnel, transitions and moments that matter.",
            "warning",
        )
        return False
    add_journey_sections(report, read_journey_result(folder))
    return True


def build_policy_report(data_dir: Path) -> Report:
    """The policy report from the output of ``journeyml evaluate-policy``.

    Raises:
        ReportInputError: there is no policy evaluation output.
    """
    from evaluation.html import Report
    from evaluation.policy_report import add_engine_mix_section, add_policy_sections

    folder = data_dir / "evaluation" / "policy"
    command = f"journeyml evaluate-policy --data-dir {data_dir}"
    result = read_policy_evaluation(folder, command)
    facts = result.facts
    report = Report(
        "Policy report",
        subtitle=f"{data_dir}, decisions from {str(facts.get('first_decision', ''))[:10]} to "
        f"{str(facts.get('last_decision', ''))[:10]}",
    )
    report.section("About this report")
    report.text(
        "Is the next-best-action policy worth running? Off-policy estimates of each policy's "
        "value from the decision log, the policies' true values in the simulator when the log "
        "is simulated, and which actions each customer segment received."
    )
    _stale_note(report, folder / "summary.json", data_dir / "lake", command)
    add_policy_sections(report, result)
    add_engine_mix_section(
        report,
        read_engine_decisions(data_dir / "lists" / "churn_risk.parquet"),
        f"journeyml lists churn-risk --data-dir {data_dir}",
    )
    return report


def read_engine_decisions(path: Path) -> pd.DataFrame | None:
    """The segment and chosen action of each customer in the engine's latest churn-risk list
    (the batch path of the decision engine that serves requests), or None without a list."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    columns = set(pq.read_schema(path).names)
    if not {"segment", "action"} <= columns:
        return None
    return pq.read_table(path, columns=["segment", "action"]).to_pandas()


# -- the command ---------------------------------------------------------------------------------


def report(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    kind: str = typer.Option(
        "all",
        "--kind",
        help="model, journey, policy or all (every report whose inputs exist; the others are "
        "named with the command that makes them, and the run fails only when none can be "
        "written).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <data-dir>/reports)."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Training settings (MLflow, model names); default: models.yaml of --config-dir.",
    ),
) -> None:
    """Write the model, journey and policy reports (self-contained HTML) from stage outputs."""
    if kind not in (*KINDS, "all"):
        err.print(f"[red]--kind must be one of {', '.join(KINDS)} or all, not {kind!r}[/red]")
        raise typer.Exit(2)
    if not data_dir.is_dir():
        err.print(f"[red]no workspace at {data_dir} (--data-dir)[/red]")
        raise typer.Exit(2)
    target = out or data_dir / "reports"
    builders: dict[str, Callable[[], Report]] = {
        "model": lambda: build_model_report(data_dir, config),
        "journey": lambda: build_journey_report(data_dir),
        "policy": lambda: build_policy_report(data_dir),
    }
    table = Table(title="reports", title_justify="left")
    for column in ("report", "file", "figures"):
        table.add_column(column)
    failed = False
    for name in KINDS if kind == "all" else (kind,):
        try:
            built = builders[name]()
        except ReportInputError as exc:
            # with --kind all, a report whose stage has not run (evaluate-policy on a log
            # without marketing actions) is skipped and named; a report asked for by name fails
            colour = "yellow" if kind == "all" else "red"
            err.print(f"[{colour}]{name} report: {exc}[/{colour}]")
            failed = True
            continue
        path = built.write(target / f"{name}.html")
        table.add_row(name, str(path), str(built.figures))
    if table.row_count:
        console.print(table)
    if failed and not (kind == "all" and table.row_count):
        raise typer.Exit(2)
