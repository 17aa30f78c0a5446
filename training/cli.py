"""``journeyml train`` and ``journeyml promote``.

The root CLI mounts the plain functions :func:`train` and :func:`promote` as top-level commands
(``app.command("train")(train)``); :data:`app` also offers them as a sub-app. Heavy libraries
(LightGBM, MLflow, Feast) are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from journeyml.config import ConfigError

if TYPE_CHECKING:
    from features.settings import FeatureSettings
    from journeyml.config import JourneyMap
    from training.config import TrainingConfig

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

MODEL_CHOICES = ("all", "churn", "conversion", "next_step", "next_event", "uplift")
SHOWN = {
    "binary": ("auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift"),
    "next_step": ("top1_accuracy", "top3_accuracy", "log_loss", "macro_f1"),
    "next_event": (
        "top3_accuracy",
        "log_loss",
        "baseline_markov2_top3_accuracy",
        "baseline_markov2_log_loss",
        "abandon_auc",
        "abandon_ece",
    ),
    "uplift": ("qini_convert", "qini_churn", "auuc_convert"),
}

DataDir = typer.Option(Path("data"), "--data-dir", help="Workspace folder (lake, features, feast).")
ModelsConfig = typer.Option(
    None, "--config", help="Training settings (default: models.yaml of --config-dir)."
)


def _models(model: str) -> list[str]:
    if model not in MODEL_CHOICES:
        err.print(f"[red]--model must be one of {', '.join(MODEL_CHOICES)}[/red]")
        raise typer.Exit(2)
    return list(MODEL_CHOICES[1:]) if model == "all" else [model]


def _load(
    config: Path | None, features_config: Path | None, journeys: Path | None
) -> tuple[TrainingConfig, FeatureSettings, JourneyMap]:
    from features.settings import load_feature_settings
    from journeyml.config import load_journey_map
    from training.config import load_training_config

    try:
        return (
            load_training_config(config),
            load_feature_settings(str(features_config) if features_config else None),
            load_journey_map(journeys),
        )
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def train(
    model: str = typer.Option(
        "all", "--model", help="all, churn, conversion, next_step, next_event, uplift."
    ),
    data_dir: Path = DataDir,
    config: Path | None = ModelsConfig,
    features_config: Path | None = typer.Option(
        None, "--features-config", help="Feature settings (default: features.yaml of --config-dir)."
    ),
    journeys: Path | None = typer.Option(
        None, "--journeys", help="Journey map (default: journeys.yaml of --config-dir)."
    ),
    truth: Path | None = typer.Option(
        None,
        "--truth",
        help="Simulator ground truth to score against (default: <data-dir>/sim/truth if any).",
    ),
    decisions: Path | None = typer.Option(
        None,
        "--decisions",
        help="Decision log (every decision incl. 'none', with propensities) for the uplift "
        "model (default: decisions.parquet of the truth folder if any; else the event log).",
    ),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        help="Train from this training set (`journeyml training-set`, e.g. built by Spark) "
        "instead of labelling the lake; sampled by customer over the dataset: budget of "
        "models.yaml.",
    ),
    register_baseline: bool | None = typer.Option(
        None,
        "--register-baseline/--no-register-baseline",
        help="When a baseline with a bundle form (logistic, BG/NBD) beats the churn or "
        "conversion LightGBM model, register it as the challenger in its place (default: "
        "register_baseline of each model in models.yaml).",
    ),
) -> None:
    """Train models with baselines, log them to MLflow and register each as challenger."""
    from training.config import LOWER_IS_BETTER
    from training.labels import LabelError
    from training.pipeline import TrainingError, train_models
    from training.registry import baseline_values
    from training.tracking import resolve_tracking

    names = _models(model)
    cfg, feature_settings, journey_map = _load(config, features_config, journeys)
    if truth is None and (data_dir / "sim" / "truth").is_dir():
        truth = data_dir / "sim" / "truth"
    if decisions is None and truth is not None and (truth / "decisions.parquet").is_file():
        decisions = truth / "decisions.parquet"
    target = resolve_tracking(cfg.tracking, data_dir)
    if truth is not None:
        console.print(f"scoring against simulator truth in {truth}")
    if decisions is not None and "uplift" in names:
        console.print(f"uplift units from the decision log {decisions}")
    try:
        results = train_models(
            data_dir,
            names,
            journey_map,
            feature_settings,
            cfg,
            target,
            truth,
            decisions,
            skip_without_actions=model == "all",
            dataset=dataset,
            register_baseline=register_baseline,
        )
    except (TrainingError, LabelError) as exc:
        err.print(f"[red]train: {exc}[/red]")
        raise typer.Exit(2) from None
    table = Table(title=f"trained (MLflow: {target.tracking_uri})", title_justify="left")
    for col in ("model", "version", "metric", "model value", "best baseline", "champion", "fit s"):
        table.add_column(col)
    for r in results:
        kind = "binary" if r.model in ("churn", "conversion") else r.model
        label = f"{r.registered_name} ({r.baseline} baseline)" if r.baseline else r.registered_name
        for i, metric in enumerate(SHOWN[kind]):
            value = r.metrics.get(metric)
            bases = baseline_values(r.metrics, metric)
            best = ""
            if bases:
                pick = min if metric in LOWER_IS_BETTER else max
                name, v = pick(bases.items(), key=lambda kv: kv[1])
                best = f"{v:.4f} ({name})"
            champ = r.metrics.get(f"champion_{metric}")
            table.add_row(
                label if i == 0 else "",
                f"v{r.version} challenger" if i == 0 else "",
                metric,
                "" if value is None else f"{value:.4f}",
                best,
                "" if champ is None else f"{champ:.4f} (v{r.champion_version})",
                f"{r.fit_seconds:.1f}" if i == 0 else "",
            )
        for metric in ("auc_truth", "auc_gap_to_truth", "policy_value_ratio_convert"):
            if metric in r.metrics:
                table.add_row("", "", metric, f"{r.metrics[metric]:.4f}", "", "", "")
    console.print(table)
    registered = {r.registered_name: r for r in results if r.baseline}
    for r in results:
        if r.verdict is None:
            continue
        console.print(f"[yellow]{r.verdict}[/yellow]")
        by = registered.get(r.registered_name)
        if by is not None:
            console.print(
                f"  registered the {by.baseline} baseline as {by.registered_name} v{by.version}, "
                f"the challenger in place of the LightGBM model v{r.version}"
            )
        elif "no bundle form" not in r.verdict:
            console.print(
                "  the LightGBM model stays the challenger; train with --register-baseline "
                "(or register_baseline: true in models.yaml) to register the baseline instead"
            )
    console.print("promote with [bold]journeyml promote[/bold] (gates in configs/models.yaml)")


def training_set(
    data_dir: Path = DataDir,
    out: str | None = typer.Option(
        None,
        "--out",
        help="Where the set goes (a path, or a Hadoop-compatible URI with --engine spark; "
        "default: training_set beside the feature snapshots).",
    ),
    engine: str = typer.Option(
        "duckdb", "--engine", help="duckdb (one machine) or spark (the spark: section)."
    ),
    features_config: Path | None = typer.Option(
        None, "--features-config", help="Feature settings (default: features.yaml of --config-dir)."
    ),
    journeys: Path | None = typer.Option(
        None, "--journeys", help="Journey map (default: journeys.yaml of --config-dir)."
    ),
) -> None:
    """Write the labelled training set (labels + features at every labelled cutoff) as Parquet,
    for `journeyml train --dataset`."""
    from features.settings import load_feature_settings
    from features.store import Workspace
    from journeyml.config import load_journey_map
    from training.labels import LabelError
    from training.training_set import TrainingSetReport, build_training_set

    if engine not in ("duckdb", "spark"):
        err.print(f"[red]--engine must be duckdb or spark, not {engine!r}[/red]")
        raise typer.Exit(2)
    try:
        settings = load_feature_settings(str(features_config) if features_config else None)
        journey_map = load_journey_map(journeys)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ws = Workspace(data_dir)
    report: TrainingSetReport
    try:
        if engine == "spark":
            from features.spark import JavaMissingError, spark_session
            from training.spark_labels import build_training_set_spark

            snapshots = settings.spark.output or str(ws.snapshots)
            target = out or f"{snapshots.rstrip('/').rpartition('/')[0]}/training_set"
            try:
                spark = spark_session(settings.spark)
            except JavaMissingError as exc:
                err.print(f"[red]training-set --engine spark: {exc}[/red]")
                raise typer.Exit(2) from None
            report = build_training_set_spark(
                spark,
                settings.spark.lake or str(ws.lake),
                snapshots,
                target,
                journey_map,
                settings,
                settings.spark.output_files,
            )
        else:
            target = out or str(ws.snapshots.parent / "training_set")
            report = build_training_set(ws.lake, ws.snapshots, target, journey_map, settings)
    except LabelError as exc:
        err.print(f"[red]training-set: {exc}[/red]")
        raise typer.Exit(2) from None
    table = Table(title="training set", show_header=False)
    table.add_row("rows", f"{report.rows:,} ({report.active_rows:,} active)")
    table.add_row("customers", f"{report.customers:,}")
    table.add_row("cutoffs", str(report.cutoffs))
    table.add_row("features", str(report.features))
    table.add_row("log end", report.log_end.isoformat())
    table.add_row("engine", engine)
    table.add_row("written to", report.path)
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)


def promote(
    model: str = typer.Option(
        "all", "--model", help="all, churn, conversion, next_step, next_event, uplift."
    ),
    to: str | None = typer.Option(
        None,
        "--to",
        help="Move champion to this version, or to 'challenger' (no gate; needs one --model "
        "unless --only-unset).",
    ),
    only_unset: bool = typer.Option(
        False,
        "--only-unset",
        help="With --to challenger: only for models that have no champion yet (a demo's first "
        "start when a gate refused a model).",
    ),
    data_dir: Path = DataDir,
    config: Path | None = ModelsConfig,
) -> None:
    """Move the champion alias to the challenger if it passes the gates (or to --to VERSION)."""
    from training.config import load_training_config
    from training.registry import move_champion, promote_challenger
    from training.tracking import (
        CHALLENGER,
        CHAMPION,
        current_version,
        resolve_tracking,
        use_tracking,
    )

    names = _models(model)
    if to is not None and len(names) != 1 and not (only_unset and to == "challenger"):
        err.print("[red]--to needs a single --model (e.g. --model churn --to 3)[/red]")
        raise typer.Exit(2)
    try:
        cfg = load_training_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    client = use_tracking(resolve_tracking(cfg.tracking, data_dir))
    refused = False
    for name in names:
        registered = cfg.registered_name(name)
        if to is not None:
            if only_unset and current_version(client, registered, CHAMPION) is not None:
                continue
            target = to.removeprefix("v")
            if to == "challenger":
                challenger = current_version(client, registered, CHALLENGER)
                if challenger is None:
                    err.print(f"[yellow]{registered}: no challenger to promote[/yellow]")
                    continue
                target = str(challenger.version)
                console.print(
                    f"[yellow]{registered}: promoting challenger v{target} without the gates "
                    "(by request)[/yellow]"
                )
            decision = move_champion(client, name, registered, target)
        else:
            if (
                model == "all"
                and current_version(client, registered, CHALLENGER) is None
                and current_version(client, registered, CHAMPION) is None
            ):
                # e.g. no uplift model on a log without marketing actions: nothing was trained,
                # so nothing was refused.
                console.print(f"{registered}: not trained on this workspace, nothing to promote")
                continue
            decision = promote_challenger(client, name, registered, cfg.gate(name))
        before = f"v{decision.champion_before}" if decision.champion_before else "none"
        after = f"v{decision.champion_after}" if decision.champion_after else "none"
        if decision.promote:
            console.print(f"[green]{registered}: champion {before} → {after}[/green]")
        else:
            refused = True
            console.print(f"[yellow]{registered}: champion stays {before}[/yellow]")
        for line in decision.reasons:
            console.print(f"  [red]✗[/red] {line}")
        for line in decision.checks:
            console.print(f"  [green]✓[/green] {line}")
    if refused:
        raise typer.Exit(1)


app.command("train")(train)
app.command("promote")(promote)
