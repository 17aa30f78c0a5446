"""``journeyml analyze``: funnel, transitions, time to convert, retention, moments that matter
and personas of the event lake, written to ``<data-dir>/evaluation/journey``."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)


def analyze(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <data-dir>/evaluation/journey)."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Journey map (stages, conversions, churn); default: journeys.yaml of --config-dir.",
    ),
    cutoff: str | None = typer.Option(
        None,
        "--cutoff",
        help="Moments-that-matter cutoff, ISO date or time, UTC unless given (default: the "
        "last event minus the longest label horizon).",
    ),
    window_days: int = typer.Option(
        90, "--window-days", help="Days before the cutoff in which touchpoints count."
    ),
    min_support: int = typer.Option(
        20, "--min-support", help="Fewest exposed customers for a moment to be scored."
    ),
    personas_max: int = typer.Option(7, "--personas-max", help="Most personas tried."),
    seed: int = typer.Option(0, "--seed", help="Seeds the persona clustering."),
) -> None:
    """Journey analytics: funnel, paths, time to convert, retention, moments, personas."""
    from pydantic import ValidationError

    from evaluation.journey import AnalyzeOptions, JourneyDataError, analyze_journeys
    from journeyml.config import ConfigError, format_validation_error, load_journey_map

    try:
        journey = load_journey_map(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    try:
        when = None
        if cutoff is not None:
            when = datetime.fromisoformat(cutoff)
            if when.tzinfo is None:  # a bare date or time is UTC, as the lake's timestamps
                when = when.replace(tzinfo=UTC)
        options = AnalyzeOptions(
            cutoff=when,
            window_days=window_days,
            min_support=min_support,
            persona_k_max=personas_max,
            persona_k_min=min(3, personas_max),
            random_state=seed,
        )
    except ValueError as exc:
        problems = format_validation_error(exc) if isinstance(exc, ValidationError) else [str(exc)]
        err.print(f"[red]invalid options: {'; '.join(problems)}[/red]")
        raise typer.Exit(2) from None
    # the workspace layout of features.store.Workspace, without importing it (it loads Feast,
    # 15 s on a small machine, for two path names)
    lake = data_dir / "lake"
    truth = data_dir / "sim" / "truth" / "personas.parquet"
    try:
        result = analyze_journeys(lake, journey, options, truth if truth.is_file() else None)
    except JourneyDataError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    target = out or data_dir / "evaluation" / "journey"
    result.write(target)
    _print_summary(result)
    console.print(f"Written to {target}")


def _print_summary(result: object) -> None:
    from evaluation.journey import ALL, JourneyAnalytics

    assert isinstance(result, JourneyAnalytics)
    facts = result.facts
    funnel = result.funnel[result.funnel["group_kind"] == ALL]
    table = Table(title=f"Funnel of {facts['customers']:,} customers", title_justify="left")
    for column in ("stage", "customers", "reached", "to next stage"):
        table.add_column(column)
    for row in funnel.to_dict(orient="records"):
        conversion = float(row["step_conversion"])
        step = f"{conversion:.0%}" if math.isfinite(conversion) else ""
        table.add_row(
            str(row["stage"]), f"{row['customers']:,}", f"{row['share_of_first']:.0%}", step
        )
    console.print(table)
    moments = result.moments[
        (result.moments["group_kind"] == ALL) & result.moments["significant"].astype(bool)
    ].head(5)
    table = Table(title="Top moments that matter (by value at stake)", title_justify="left")
    for column in ("touchpoint", "effect", "customers", "value at stake"):
        table.add_column(column)
    for row in moments.to_dict(orient="records"):
        table.add_row(
            str(row["touchpoint"]),
            f"{row['direction']} by {abs(row['adjusted_difference']) * 100:.1f} points",
            f"{row['exposed']:,}",
            f"{row['value_at_stake']:,.0f}",
        )
    console.print(table if len(moments) else "No moment that matters stood out.")
    table = Table(title=f"{len(result.personas)} personas", title_justify="left")
    for column in ("persona", "customers", "description"):
        table.add_column(column)
    for row in result.personas.to_dict(orient="records"):
        table.add_row(
            str(row["persona"]), f"{row['customers']:,} ({row['share']:.0%})", row["description"]
        )
    console.print(table)
