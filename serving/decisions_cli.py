"""``journeyml decisions export``: the service's decision log, with feedback, as Parquet."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]{option}: {value!r} is not an ISO date or time[/red]")
        raise typer.Exit(2) from None
    if t.tzinfo is None:
        err.print(f"[red]{option}: give a time zone (e.g. {value}+00:00 or {value}Z)[/red]")
        raise typer.Exit(2)
    return t


@app.command("export")
def export(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path | None = typer.Option(
        None, "--config", help="Serving settings (default: serving.yaml of --config-dir)."
    ),
    state_url: str | None = typer.Option(
        None, "--state-url", help="State store URL (default: the serving settings' state store)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Parquet file (default: <data-dir>/serving/decisions.parquet)."
    ),
    since: str | None = typer.Option(None, "--since", help="First decision time (ISO, with zone)."),
    until: str | None = typer.Option(None, "--until", help="End of the window (ISO, with zone)."),
) -> None:
    """Decisions with propensities, holdout and exploration flags, features and feedback."""
    from journeyml.config import ConfigError
    from serving.config import load_serving_settings
    from serving.decision_log import export_decisions
    from serving.state import StateStore

    start, end = _when(since, "--since"), _when(until, "--until")
    try:
        url = state_url or load_serving_settings(config, data_dir).resolved_state_url()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        err.print(f"[red]no decision log at {url}: the service has not decided anything yet[/red]")
        raise typer.Exit(2)
    target = out or data_dir / "serving" / "decisions.parquet"
    store = StateStore(url)
    try:
        rows = export_decisions(store, target, start, end)
    finally:
        store.close()
    console.print(f"{rows:,} decisions written to {target}")
