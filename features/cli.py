"""``journeyml features``: build snapshots, register them in Feast, load the online store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from journeyml.config import ConfigError

if TYPE_CHECKING:
    from features.catalog import FeatureCatalog
    from features.settings import FeatureSettings
    from journeyml.config import JourneyMap

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

DataDir = typer.Option(Path("data"), "--data-dir", help="Workspace folder (lake, features, feast).")
FeaturesConfig = typer.Option(
    None, "--config", help="Feature settings (default: features.yaml of --config-dir)."
)
JourneysConfig = typer.Option(
    None, "--journeys", help="Journey map (default: journeys.yaml of --config-dir)."
)
AsOf = typer.Option(
    None, "--as-of", help="Snapshot time, ISO-8601 (naive = UTC). Default: end of the log."
)


def _parse_as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]--as-of: {value!r} is not an ISO-8601 date or time[/red]")
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _load(
    config: Path | None, journeys: Path | None
) -> tuple[JourneyMap, FeatureSettings, FeatureCatalog]:
    from features.catalog import build_catalog
    from features.settings import load_feature_settings
    from journeyml.config import load_journey_map

    try:
        journey_map = load_journey_map(journeys)
        settings = load_feature_settings(str(config) if config else None)
        return journey_map, settings, build_catalog(journey_map, settings)
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command("build")
def build(
    data_dir: Path = DataDir,
    config: Path | None = FeaturesConfig,
    journeys: Path | None = JourneysConfig,
    as_of: str | None = AsOf,
    engine: str = typer.Option(
        "duckdb",
        "--engine",
        help="duckdb (one machine, out-of-core) or spark (the spark: section of the config).",
    ),
) -> None:
    """Compute point-in-time journey features at every snapshot from the ingested lake."""
    from features.pipeline import BuildReport, FeatureBuildError, build_snapshots
    from features.store import Workspace

    if engine not in ("duckdb", "spark"):
        err.print(f"[red]--engine must be duckdb or spark, not {engine!r}[/red]")
        raise typer.Exit(2)
    journey_map, settings, catalog = _load(config, journeys)
    ws = Workspace(data_dir)
    report: BuildReport
    try:
        if engine == "spark":
            from features.spark import JavaMissingError, build_snapshots_spark, spark_session

            spark_settings = settings.spark
            try:
                spark = spark_session(spark_settings)
            except JavaMissingError as exc:
                err.print(f"[red]features build --engine spark: {exc}[/red]")
                raise typer.Exit(2) from None
            report = build_snapshots_spark(
                spark,
                spark_settings.lake or str(ws.lake),
                spark_settings.output or str(ws.snapshots),
                journey_map,
                catalog,
                _parse_as_of(as_of),
                output_files=spark_settings.output_files,
            )
        else:
            report = build_snapshots(
                ws.lake, ws.snapshots, journey_map, catalog, _parse_as_of(as_of)
            )
    except FeatureBuildError as exc:
        err.print(f"[red]features build: {exc}[/red]")
        raise typer.Exit(2) from None
    table = Table(title="journey features", show_header=False)
    table.add_row("snapshot rows", f"{report.rows:,}")
    table.add_row("customers", f"{report.customers:,}")
    table.add_row(
        "snapshots",
        f"{report.snapshots} (weekly from {report.first_snapshot:%Y-%m-%d})"
        if report.first_snapshot
        else str(report.snapshots),
    )
    table.add_row("as of", report.as_of.isoformat())
    table.add_row("features", str(report.features))
    table.add_row("engine", engine)
    table.add_row("written to", str(report.path))
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)


@app.command("apply")
def apply(
    data_dir: Path = DataDir,
    config: Path | None = FeaturesConfig,
    journeys: Path | None = JourneysConfig,
) -> None:
    """Register the entity, source, feature views and feature services in Feast."""
    from features.store import Workspace, apply_definitions, open_store

    _, settings, catalog = _load(config, journeys)
    ws = Workspace(data_dir)
    store = open_store(settings.store, ws)
    objects = apply_definitions(store, catalog, ws)
    console.print(
        f"registered views {', '.join(objects.views)} and services "
        f"{', '.join(objects.services)} in project [bold]{store.project}[/bold]"
    )


@app.command("materialize")
def materialize(
    data_dir: Path = DataDir,
    config: Path | None = FeaturesConfig,
    journeys: Path | None = JourneysConfig,
    as_of: str | None = AsOf,
) -> None:
    """Load each customer's latest snapshot into the online store (fast bulk path)."""
    from features.online import load_latest_snapshot
    from features.store import Workspace, apply_definitions, open_store

    _, settings, catalog = _load(config, journeys)
    ws = Workspace(data_dir)
    if not ws.snapshots.exists():
        err.print(f"[red]no snapshots at {ws.snapshots}: run `journeyml features build`[/red]")
        raise typer.Exit(2)
    store = open_store(settings.store, ws)
    apply_definitions(store, catalog, ws)
    report = load_latest_snapshot(store, catalog, ws.snapshots, as_of=_parse_as_of(as_of))
    table = Table(title="online store", show_header=False, title_justify="left")
    table.add_row("store", f"{report.store} (project {store.project})")
    table.add_row("customers", f"{report.customers:,}")
    table.add_row("feature values", f"{report.rows:,}")
    if report.skipped_newer:
        table.add_row("kept newer rows", f"{report.skipped_newer:,} (real-time updates)")
    table.add_row("seconds", f"{report.seconds:.1f} ({report.rows_per_second:,.0f} values/s)")
    console.print(table)


@app.command("show")
def show(
    customer_id: str = typer.Argument(..., help="The customer to read."),
    data_dir: Path = DataDir,
    config: Path | None = FeaturesConfig,
    journeys: Path | None = JourneysConfig,
) -> None:
    """Read one customer's online features with their age and stale flags."""
    from features.realtime import read_online
    from features.store import Workspace, open_store
    from journeyml.clock import data_clock

    _, settings, catalog = _load(config, journeys)
    ws = Workspace(data_dir)
    clock = data_clock(ws.lake)  # ages and stale flags from the log's end when it is past
    if clock.on_data_time:
        console.print(clock.describe())
    store = open_store(settings.store, ws)
    row = read_online(store, catalog, [customer_id], now=clock.now)[0]
    if not row.found:
        err.print("[yellow]no online features for that customer[/yellow]")
        raise typer.Exit(1)
    table = Table("feature", "value", "meaning")
    for spec in catalog.features:
        table.add_row(spec.name, str(row.values.get(spec.name)), spec.description)
    console.print(table)
    for view, age in row.age_seconds.items():
        flag = "[red]stale[/red]" if row.stale[view] else "fresh"
        console.print(f"{view}: {flag}, age {age / 3600:.1f} h" if age is not None else view)


@app.command("sql")
def sql(
    dialect: str = typer.Option("duckdb", help="duckdb or spark"),
    config: Path | None = FeaturesConfig,
    journeys: Path | None = JourneysConfig,
) -> None:
    """Print the feature query (DuckDB, or transpiled to Spark SQL for a cluster)."""
    from features.pipeline import feature_query, to_spark_sql

    journey_map, _, catalog = _load(config, journeys)
    query = feature_query(catalog, journey_map.experience.score_property)
    if dialect == "spark":
        query = to_spark_sql(query)
    elif dialect != "duckdb":
        err.print("[red]--dialect must be duckdb or spark[/red]")
        raise typer.Exit(2)
    console.print(query, markup=False, highlight=False)
