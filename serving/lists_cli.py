"""``journeyml lists churn-risk``: the marketer's churn-risk list (CSV and Parquet)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from serving.capacity import Capacity
    from serving.config import ServingSettings
    from serving.engine import DecisionEngine
    from serving.lists import ListFilters, ListSummary

console = Console()
err = Console(stderr=True)

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"[red]{option}: {text!r} is not an ISO date or time (e.g. 2026-01-31)[/red]")
        raise typer.Exit(2) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@app.command("churn-risk")
def churn_risk(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path | None = typer.Option(
        None, "--config", help="Serving settings (default: serving.yaml of --config-dir)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <data-dir>/lists)."
    ),
    segment: list[str] = typer.Option(
        [], "--segment", help="Only customers of this segment (repeat for several)."
    ),
    min_risk: float = typer.Option(0.0, "--min-risk", help="Only churn risk at least this."),
    top: int | None = typer.Option(None, "--top", help="Only the N riskiest customers."),
    population: str = typer.Option(
        "active",
        "--population",
        help="active (default: customers who can still be saved, by the journey map's churn "
        "definition), lapsed (a win-back list) or all (with a status column).",
    ),
    alias: str | None = typer.Option(
        None, "--alias", help="Model alias to use (default: the serving settings', champion)."
    ),
    features_as_of: str | None = typer.Option(
        None, "--features-as-of", help="Use feature snapshots at or before this time."
    ),
    now: str | None = typer.Option(
        None,
        "--now",
        help="Decision time: recencies are aged to it, the contact policy counts up to it "
        "(default: now; the log's last event when the log ends more than a day ago).",
    ),
    suppression_list: Path | None = typer.Option(
        None, "--suppression-list", help="CSV or Parquet of customer ids never to list."
    ),
    rank_by: str = typer.Option(
        "incremental_value",
        "--rank-by",
        help="incremental_value (default: the best eligible action's expected incremental "
        "value, uplift x value - cost) or risk (churn risk).",
    ),
    split_by: str | None = typer.Option(
        None,
        "--split-by",
        help="action or channel: also one CSV per recommended action or per channel.",
    ),
    previous: Path | None = typer.Option(
        None,
        "--previous",
        help="The list to compare with (default: the list already in the output folder).",
    ),
    capacity: list[str] = typer.Option(
        [],
        "--capacity",
        help="NAME=N: at most N customers for this action or channel (repeat for several; "
        "over the catalog's capacity section); assigned to maximise the total incremental "
        "value.",
    ),
    chunk_rows: int = typer.Option(100_000, "--chunk-rows", min=1, help="Customers per chunk."),
    engine_name: str = typer.Option(
        "duckdb",
        "--engine",
        help="duckdb (one machine) or spark (the spark: section of the feature settings).",
    ),
) -> None:
    """Customers ranked by what an action would gain (or by churn risk), with reasons, target
    group, next step and the recommended action."""
    from features.store import Workspace
    from journeyml.clock import data_clock
    from journeyml.config import ConfigError
    from serving.capacity import CapacityError, parse_capacity
    from serving.config import load_serving_settings
    from serving.lists import (
        ListError,
        ListFilters,
        batch_engine,
        churn_risk_list,
        read_suppression_list,
    )

    features_time = _when(features_as_of, "--features-as-of")
    clock = data_clock(data_dir / "lake", _when(now, "--now"))
    if clock.source != "wall":
        console.print(clock.describe())
    try:
        settings = load_serving_settings(config, data_dir)
        if alias:
            settings = settings.model_copy(
                update={"models": settings.models.model_copy(update={"alias": alias})}
            )
        filters = ListFilters(tuple(segment), min_risk, top, population, rank_by)
        suppression = read_suppression_list(suppression_list) if suppression_list else None
        if engine_name not in ("duckdb", "spark"):
            raise ListError(f"--engine must be duckdb or spark, not {engine_name!r}")
        engine = batch_engine(settings)
        try:
            limits = parse_capacity(capacity, engine.actions)
            if engine_name == "spark":
                summary = _spark_list(
                    settings, engine, data_dir, out, filters, features_time, clock.now,
                    suppression, split_by, previous, limits,
                )  # fmt: skip
            else:
                summary = churn_risk_list(
                    engine,
                    Workspace(data_dir).snapshots,
                    out or data_dir / "lists",
                    filters=filters,
                    as_of=features_time,
                    now=clock.now,
                    suppression=suppression,
                    chunk_rows=chunk_rows,
                    split_by=split_by,
                    previous=previous,
                    capacity=limits,
                )
        finally:
            engine.state.close()
    except (ConfigError, ListError, CapacityError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table = Table(title=f"Churn-risk list: {summary.listed:,} customers")
    table.add_column("")
    table.add_column("customers", justify="right")
    rows = [
        ("read from the feature snapshots", summary.customers_read),
        ("  active at the list's time", summary.active),
        ("  lapsed (inactive past the churn window, or cancelled)", summary.lapsed),
        (f"left out: not in --population {filters.population}", summary.other_population),
        ("left out: refused marketing", summary.opted_out),
        ("left out: on the suppression list", summary.suppressed_list),
        ("left out: suppressed on every channel", summary.suppressed_contact_policy),
        ("left out: other segments", summary.other_segment),
        ("left out: risk below --min-risk", summary.below_min_risk),
        ("left out: beyond --top", summary.beyond_top),
        ("listed", summary.listed),
        ("  in the holdout (no action)", summary.holdout),
        ("  with a recommended action", summary.with_action),
        ("  consent unknown (counted above)", summary.consent_unknown),
    ]
    for label, count in rows:
        table.add_row(label, f"{count:,}")
    console.print(table)
    bands = ", ".join(f"{band} {count:,}" for band, count in summary.by_band.items())
    console.print(f"Risk bands: {bands or 'none'}")
    groups = ", ".join(f"{g} {c:,}" for g, c in summary.by_target_group.items())
    console.print(f"Target groups: {groups or 'none'}")
    actions = ", ".join(f"{a} {c:,}" for a, c in summary.by_action.items())
    console.print(
        f"Actions: {actions or 'none'}; expected incremental value of the list: "
        f"{summary.incremental_value:,.2f} (ranked by {summary.rank_by.replace('_', ' ')})"
    )
    cap = summary.capacity
    if cap:
        used = "; ".join(
            f"{name} {n:,} of {limit:,}"
            for kind in ("actions", "channels")
            for name, (n, limit) in cap["used"][kind].items()
        )
        console.print(
            f"Capacity: {used}; value within the limits {cap['value_within_limits']:,.2f}, "
            f"given up by them {cap['value_given_up']:,.2f} ({cap['customers_moved']:,} "
            f"customers moved to another action, {cap['customers_dropped']:,} to none)"
        )
    diff = summary.diff
    if diff.get("previous"):
        console.print(
            f"Against the previous list ({diff['previous']}): {diff['new']:,} new, "
            f"{diff['still_listed']:,} still listed ({diff['action_changed']:,} with another "
            f"action), {diff['gone']:,} gone"
        )
    served = ", ".join(f"{ref}" for ref in summary.model_versions.values())
    used = settings.models.alias
    note = "" if used == "champion" else ", not the promoted champion"
    console.print(f"Models (alias {used}{note}): {served or 'none'}")
    for line in summary.fallbacks.values():
        console.print(f"[yellow]Fallback: {line}[/yellow]")
    console.print(f"Consent: {summary.consent_rule}")
    console.print(f"Written in {summary.seconds:.1f} s: " + ", ".join(summary.outputs))


def _spark_list(
    settings: ServingSettings,
    engine: DecisionEngine,
    data_dir: Path,
    out: Path | None,
    filters: ListFilters,
    features_time: datetime | None,
    decision_time: datetime | None,
    suppression: set[str] | None,
    split_by: str | None = None,
    previous: Path | None = None,
    capacity: Capacity | None = None,
) -> ListSummary:
    """The list decided on Spark (the session the feature settings' ``spark:`` describe)."""
    from features.settings import load_feature_settings
    from features.spark import JavaMissingError, spark_session
    from features.store import Workspace
    from serving.lists import ListError
    from serving.spark_lists import churn_risk_list_spark

    spark_settings = load_feature_settings(settings.features).spark
    try:
        spark = spark_session(spark_settings)
    except JavaMissingError as exc:
        raise ListError(f"--engine spark: {exc}") from None
    return churn_risk_list_spark(
        spark,
        engine,
        spark_settings.output or Workspace(data_dir).snapshots,
        out or data_dir / "lists",
        filters=filters,
        as_of=features_time,
        now=decision_time,
        suppression=suppression,
        output_files=spark_settings.output_files,
        split_by=split_by,
        previous=previous,
        capacity=capacity,
    )
