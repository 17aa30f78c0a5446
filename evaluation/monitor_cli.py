"""``journeyml monitor``: journey health KPIs, alerts when a step breaks, feature drift."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from journeyml.config import CONFIG_DIR

console = Console()
err = Console(stderr=True)


def monitor(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path = typer.Option(
        CONFIG_DIR / "monitoring.yaml", "--config", help="Monitoring settings."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <data-dir>/evaluation/monitoring)."
    ),
    fail_on_alert: bool = typer.Option(
        False, "--fail-on-alert", help="Exit with status 3 when there is an alert (schedulers)."
    ),
) -> None:
    """Daily KPIs per journey step with change detection, and feature drift."""
    from evaluation.monitor import LogTooShortError, load_monitor_settings, run_monitor
    from features.store import Workspace
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
    try:
        result = run_monitor(ws.lake, settings, ws.snapshots if ws.snapshots.exists() else None)
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
    console.print(f"Written to {target}")
    if fail_on_alert and not result.alerts.empty:
        raise typer.Exit(3)
