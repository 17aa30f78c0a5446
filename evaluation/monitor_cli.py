"""``journeyml monitor``: journey health KPIs, alerts when a step breaks, feature drift."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from evaluation.monitor import Scorer

console = Console()
err = Console(stderr=True)


def monitor(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path | None = typer.Option(
        None, "--config", help="Monitoring settings (default: monitoring.yaml of --config-dir)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <data-dir>/evaluation/monitoring)."
    ),
    serving_config: Path | None = typer.Option(
        None,
        "--serving-config",
        help="Serving settings: where the champion models whose score drift is measured live "
        "(default: serving.yaml of --config-dir).",
    ),
    fail_on_alert: bool = typer.Option(
        False, "--fail-on-alert", help="Exit with status 3 when there is an alert (schedulers)."
    ),
) -> None:
    """Daily KPIs per journey step with change detection, and feature drift."""
    from evaluation.monitor import LogTooShortError, load_monitor_settings, run_monitor
    from features.store import Workspace
    from journeyml.clock import data_clock
    from journeyml.config import ConfigError
    from journeyml.events.lake import is_lake

    try:
        settings = load_monitor_settings(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ws = Workspace(data_dir)
    if not is_lake(ws.lake):
        err.print(f"[red]no event lake at {ws.lake}: run `journeyml events ingest` first[/red]")
        raise typer.Exit(2)
    clock = data_clock(ws.lake)
    if clock.on_data_time:  # KPIs run to the log's end, not to today
        console.print(clock.describe())
    try:
        snapshots = ws.snapshots if ws.snapshots.exists() else None
        scorers = champion_scorers(data_dir, serving_config) if snapshots is not None else {}
        result = run_monitor(ws.lake, settings, snapshots, scorers)
    except (LogTooShortError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    target = out or data_dir / "evaluation" / "monitoring"
    result.write(target)
    if result.alerts.empty:
        console.print(f"[green]No alert[/green] on {result.facts['kpis']} KPIs.")
    else:
        table = Table(title=f"{len(result.alerts)} alert(s)")
        for column in ("KPI", "step", "start", "end", "customers"):
            table.add_column(column)
        for row in result.alerts.itertuples():
            table.add_row(
                str(row.kpi),
                str(row.step),
                str(row.start),
                str(row.end) if row.end is not None else "ongoing",
                f"{row.affected_customers:,}",
            )
        console.print(table)
        for message in result.alerts["message"]:
            console.print(f"- {message}")
    if result.drift is not None:
        moved = result.drift[result.drift["level"] != "ok"]
        console.print(
            f"Feature drift: {len(moved)} of {len(result.drift)} features with PSI ≥ 0.1."
        )
    if result.score_drift is not None:
        for row in result.score_drift.itertuples():
            console.print(
                f"Score drift of {row.score}: PSI {row.psi:.3f} ({row.level}), mean "
                f"{row.reference_mean:.3f} → {row.current_mean:.3f}"
            )
    console.print(f"Written to {target}")
    if fail_on_alert and not result.alerts.empty:
        raise typer.Exit(3)


def champion_scorers(data_dir: Path, serving_config: Path | None) -> dict[str, Scorer]:
    """The champion churn and conversion models as scorers of snapshot rows, or none (with a
    note) when no model is registered yet: monitoring works on a log before any training."""
    from journeyml.config import ConfigError
    from serving.config import load_serving_settings
    from serving.models import ModelSet

    try:
        settings = load_serving_settings(serving_config, data_dir)
        uri = settings.resolved_tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            console.print("No score drift: no model has been trained in this workspace yet.")
            return {}
        models = ModelSet(settings)
        models.refresh()
    except (ConfigError, OSError, RuntimeError) as exc:
        console.print(f"No score drift: the models could not be loaded ({exc}).")
        return {}
    scorers: dict[str, Scorer] = {}
    for name in ("churn", "conversion"):
        loaded = models.models.get(name)
        if loaded is not None:
            bundle = loaded.bundle
            scorers[f"{name} v{loaded.version}"] = bundle.predict_proba
    if not scorers:
        console.print("No score drift: no champion churn or conversion model is registered.")
    return scorers
