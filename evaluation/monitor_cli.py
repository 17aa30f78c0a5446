"""``journeyml monitor``: journey health KPIs per segment, incidents, drift; and its backtest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from evaluation.monitor import LabelledModel, MonitorSettings, Scorer
    from journeyml.config import JourneyMap

console = Console()
err = Console(stderr=True)

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Journey health KPIs per step and segment, incidents, feature drift; `backtest`.",
)


def _settings(
    config: Path | None, journeys: Path | None
) -> tuple[MonitorSettings, JourneyMap | None]:
    from evaluation.monitor import load_monitor_settings
    from journeyml.config import ConfigError, config_path, load_journey_map

    try:
        settings = load_monitor_settings(config)
        journeys = journeys or config_path("journeys.yaml")
        journey = load_journey_map(journeys) if journeys.is_file() else None
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return settings, journey


@app.callback()
def monitor(
    ctx: typer.Context,
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path | None = typer.Option(
        None, "--config", help="Monitoring settings (default: monitoring.yaml of --config-dir)."
    ),
    journeys: Path | None = typer.Option(
        None,
        "--journeys",
        help="Journey map: steps, support, complaint and NPS events are read from it "
        "(default: journeys.yaml of --config-dir).",
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
        False,
        "--fail-on-alert",
        help="Exit with status 3 when there is an incident (schedulers).",
    ),
) -> None:
    """Daily KPIs per journey step and segment, incidents (JSON lines, webhook), drift."""
    if ctx.invoked_subcommand is not None:
        return
    from evaluation.monitor import LogTooShortError, run_monitor
    from evaluation.monitor_webhook import post_incidents
    from features.store import Workspace
    from journeyml.clock import data_clock
    from journeyml.events.lake import is_lake

    settings, journey = _settings(config, journeys)
    ws = Workspace(data_dir)
    if not is_lake(ws.lake):
        err.print(f"[red]no event lake at {ws.lake}: run `journeyml events ingest` first[/red]")
        raise typer.Exit(2)
    clock = data_clock(ws.lake)
    if clock.on_data_time:  # KPIs run to the log's end, not to today
        console.print(clock.describe())
    try:
        snapshots = ws.snapshots if ws.snapshots.exists() else None
        scorers, features, labelled = (
            champion_scorers(data_dir, serving_config) if snapshots is not None else ({}, {}, {})
        )
        result = run_monitor(
            ws.lake,
            settings,
            snapshots,
            scorers,
            journey=journey,
            model_features=features,
            labelled=labelled,
        )
    except (LogTooShortError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    target = out or data_dir / "evaluation" / "monitoring"
    target.mkdir(parents=True, exist_ok=True)
    from evaluation.monitor import incident_records

    delivery = post_incidents(
        incident_records(result.incidents),
        settings.alerts.webhook,
        state_file=target / "webhook_state.json",
    )
    if delivery is not None:
        result.facts["webhook"] = delivery.as_dict()
    result.write(target)
    incidents = result.incidents
    if incidents.empty:
        console.print(f"[green]No incident[/green] on {result.facts['kpis']} KPI series.")
    else:
        table = Table(title=f"{len(incidents)} incident(s), most severe first")
        for column in ("#", "start", "end", "segments", "customers", "value at stake", "KPIs"):
            table.add_column(column)
        for inc in incidents.to_dict(orient="records"):
            value = inc["value_at_stake"]
            table.add_row(
                str(inc["rank"]),
                str(inc["start"]),
                str(inc["end"]) if inc["end"] is not None else "ongoing",
                ", ".join(inc["segments"]),
                f"{inc['affected_customers']:,}",
                f"{value:,.0f}" if value is not None and value == value else "no values",
                str(len(inc["kpis"])),
            )
        console.print(table)
        for inc in incidents.to_dict(orient="records"):
            console.print(f"- #{inc['rank']} {inc['headline']}")
            for detail in inc["details"][1:4]:
                console.print(f"    {detail}")
    if delivery is not None:
        if delivery.delivered:
            console.print(
                f"Webhook {delivery.target}: {delivery.posted} incident(s) posted, "
                f"{delivery.skipped} already delivered."
            )
        else:
            err.print(
                f"[yellow]Webhook {delivery.target} not delivered after {delivery.attempts} "
                f"attempt(s): {delivery.error}[/yellow]"
            )
    if result.drift is not None:
        drift = result.drift
        moved = drift[drift["level"].isin(["warn", "alert"])]
        calendar = int((drift["level"] == "calendar").sum())
        console.print(
            f"Feature drift: {len(moved)} of {len(drift)} features with PSI ≥ "
            f"{settings.drift.psi_warn} ({calendar} calendar features not judged)."
        )
        for feat in drift[drift["level"] == "alert"].head(10).to_dict(orient="records"):
            models = f" — read by {feat['models']}" if feat["models"] else ""
            console.print(f"  {feat['feature']}: PSI {feat['psi']:.2f}{models}")
    if result.score_drift is not None:
        for row in result.score_drift.itertuples():
            console.print(
                f"Score drift of {row.score}: PSI {row.psi:.3f} ({row.level}), mean "
                f"{row.reference_mean:.3f} → {row.current_mean:.3f}"
            )
    if result.performance is not None:
        for perf in result.performance.to_dict(orient="records"):
            if perf["level"] in ("ok", "warn", "alert"):
                console.print(
                    f"Performance of {perf['score']} on matured {perf['label']} labels: AUC "
                    f"{perf['reference_auc']:.3f} on its test period → {perf['recent_auc']:.3f} "
                    f"on {perf['recent_rows']:,} rows up to {str(perf['recent_to'])[:10]} "
                    f"({perf['level']}); {perf['label']} rate {perf['recent_rate']:.3f}, mean "
                    f"score {perf['recent_mean_score']:.3f}"
                )
            else:
                console.print(f"Performance of {perf['score']}: {perf['level']}")
    console.print(f"Written to {target}")
    if fail_on_alert and not incidents.empty:
        raise typer.Exit(3)


@app.command("backtest")
def backtest_command(
    incidents: Path = typer.Option(
        ...,
        "--incidents",
        help="Known incidents: a JSON list with start and end (ISO dates or day numbers from "
        "the log's first day), optionally name, segment, affected_customers.",
    ),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    lake: Path | None = typer.Option(None, "--lake", help="Event lake (default: the workspace's)."),
    config: Path | None = typer.Option(
        None, "--config", help="Monitoring settings (default: monitoring.yaml of --config-dir)."
    ),
    journeys: Path | None = typer.Option(
        None, "--journeys", help="Journey map (default: journeys.yaml of --config-dir)."
    ),
    target_days: int = typer.Option(3, "--target-days", help="Detection within this many days."),
    out: Path | None = typer.Option(None, "--out", help="Write backtest.json here."),
) -> None:
    """Replay the log day by day as a daily run would, and score its alerts against known
    incidents: detection delay per incident, false alerts per month."""
    from evaluation.monitor import LogTooShortError
    from evaluation.monitor_backtest import IncidentFileError, backtest, load_known_incidents
    from features.store import Workspace
    from journeyml.events.lake import is_lake

    settings, journey = _settings(config, journeys)
    lake_path = lake or Workspace(data_dir).lake
    if not is_lake(lake_path):
        err.print(f"[red]no event lake at {lake_path}: run `journeyml events ingest` first[/red]")
        raise typer.Exit(2)
    try:
        import duckdb

        from journeyml.events.lake import read_events_sql

        con = duckdb.connect()
        try:
            first = con.execute(
                f"SELECT MIN(timestamp) FROM ({read_events_sql(lake_path)})"
            ).fetchone()
        finally:
            con.close()
        origin = first[0].date() if first and first[0] is not None else None
        if origin is None:
            raise LogTooShortError(f"the lake {lake_path} holds no events")
        known = load_known_incidents(incidents, origin)
        result = backtest(lake_path, settings, known, journey, within_days=target_days)
    except (IncidentFileError, LogTooShortError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table = Table(title="Known incidents")
    for column in ("incident", "start", "end", "detected", "delay (days)", "alerts"):
        table.add_column(column)
    for known_row in result.incidents.to_dict(orient="records"):
        detected = known_row["detected"]
        delay = known_row["delay_days"]
        table.add_row(
            str(known_row["name"]),
            str(known_row["start"]),
            str(known_row["end"]),
            str(detected) if detected is not None and detected == detected else "[red]missed[/red]",
            str(int(delay)) if delay is not None and delay == delay else "-",
            str(len(known_row["alerts"])),
        )
    console.print(table)
    s = result.summary
    console.print(
        f"Detected {s['detected']} of {s['known_incidents']} known incidents, "
        f"{s['detected_within_target']} within {target_days} days; "
        f"{s['false_alerts']} false alert(s) = {s['false_alerts_per_month']} per month "
        f"over {s['monitored_months']} monitored months."
    )
    for false in result.false_alerts.to_dict(orient="records"):
        console.print(
            f"  false alert from {false['start']}: {', '.join(false['kpis'])} "
            f"@ {', '.join(false['segments'])}"
        )
    if out is not None:
        import json

        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "summary": s,
            "incidents": result.incidents.astype(object)
            .where(result.incidents.notna(), None)
            .to_dict(orient="records"),
            "false_alerts": result.false_alerts.to_dict(orient="records"),
        }
        (out / "backtest.json").write_text(json.dumps(payload, indent=1, default=str))
        console.print(f"Written to {out / 'backtest.json'}")


def champion_scorers(
    data_dir: Path, serving_config: Path | None
) -> tuple[dict[str, Scorer], dict[str, list[str]], dict[str, LabelledModel]]:
    """The champion churn and conversion models as scorers of snapshot rows, the features each
    reads and the label and test period each was judged on, or none (with a note) when no
    model is registered yet: monitoring works on a log before any training."""
    import pandas as pd

    from evaluation.monitor import LabelledModel
    from journeyml.config import ConfigError
    from serving.config import load_serving_settings
    from serving.models import ModelSet

    try:
        settings = load_serving_settings(serving_config, data_dir)
        uri = settings.resolved_tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            console.print("No score drift: no model has been trained in this workspace yet.")
            return {}, {}, {}
        models = ModelSet(settings)
        models.refresh()
    except (ConfigError, OSError, RuntimeError) as exc:
        console.print(f"No score drift: the models could not be loaded ({exc}).")
        return {}, {}, {}
    scorers: dict[str, Scorer] = {}
    features: dict[str, list[str]] = {}
    labelled: dict[str, LabelledModel] = {}
    for name in ("churn", "conversion"):
        loaded = models.models.get(name)
        if loaded is not None:
            bundle = loaded.bundle
            key = f"{name} v{loaded.version}"
            scorers[key] = bundle.predict_proba
            features[name] = bundle.features
            period = bundle.manifest.get("test_period") or []
            if len(period) == 2 and bundle.manifest.get("label"):
                start, end = (pd.Timestamp(t) for t in period)
                labelled[key] = LabelledModel(
                    str(bundle.manifest["label"]),
                    (start if start.tzinfo else start.tz_localize("UTC")).to_pydatetime(),
                    (end if end.tzinfo else end.tz_localize("UTC")).to_pydatetime(),
                )
    if not scorers:
        console.print("No score drift: no champion churn or conversion model is registered.")
    return scorers, features, labelled
