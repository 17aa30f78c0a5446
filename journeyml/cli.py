"""The ``journeyml`` command. Each stage package owns its sub-commands; this file mounts them.

Stage CLI modules import their heavy dependencies (Feast, MLflow, BentoML) inside the commands,
so ``journeyml --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from evaluation.journey_cli import analyze
from evaluation.monitor_cli import app as monitor_app
from evaluation.policy_cli import evaluate_policy
from evaluation.report_cli import report
from features.cli import app as features_app
from journeyml.config import CONFIG_DIR_ENV
from journeyml.events.cli import app as events_app
from journeyml.init_cli import init
from journeyml.logs import configure_logging
from journeyml.simulate.cli import simulate
from journeyml.ui_cli import app as ui_app
from serving.cli import keygen, sample, serve
from serving.decisions_cli import app as decisions_app
from serving.lists_cli import app as lists_app
from training.cli import promote, train, training_set

app = typer.Typer(
    name="journeyml",
    help="Predictive next-best-action for customer journeys: events in, decisions out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging."),
    config_dir: Path | None = typer.Option(
        None,
        "--config-dir",
        envvar=CONFIG_DIR_ENV,
        help="Folder of the configuration set (journeys.yaml, features.yaml, actions.yaml, "
        "models.yaml, monitoring.yaml, serving.yaml, events.yaml): one folder per event log. "
        "A file it does not hold is read from the shipped configs/; a command's own --config "
        "or --journeys option overrides both.",
    ),
) -> None:
    """Predictive next-best-action for customer journeys."""
    configure_logging(verbose)
    if config_dir is not None:
        use_config_dir(ctx, config_dir)


def use_config_dir(ctx: typer.Context, folder: Path) -> None:
    """Makes ``folder`` the config folder of this run (and of the processes it starts, such as
    the detached server), restoring the previous setting when the command ends."""
    if not folder.is_dir():
        typer.echo(f"--config-dir: {folder} is not a folder", err=True)
        raise typer.Exit(2)
    before = os.environ.get(CONFIG_DIR_ENV)
    os.environ[CONFIG_DIR_ENV] = str(folder.resolve())

    def restore() -> None:
        if before is None:
            os.environ.pop(CONFIG_DIR_ENV, None)
        else:
            os.environ[CONFIG_DIR_ENV] = before

    ctx.call_on_close(restore)


app.command("init")(init)
app.command("simulate")(simulate)
app.add_typer(events_app, name="events", help="Validate and ingest journey event logs.")
app.add_typer(
    features_app, name="features", help="Build journey features, load and read the feature store."
)
app.command("train")(train)
app.command("training-set")(training_set)
app.command("promote")(promote)
app.command("serve")(serve)
app.command("serve-keygen")(keygen)
app.command("serve-sample")(sample)
app.add_typer(
    monitor_app,
    name="monitor",
    help="Journey health KPIs per step and segment, incidents, drift; and their backtest.",
)
app.command("analyze")(analyze)
app.command("evaluate-policy")(evaluate_policy)
app.add_typer(
    decisions_app,
    name="decisions",
    help="The service's decision log: export it (with feedback) for policy evaluation.",
)
app.add_typer(lists_app, name="lists", help="Batch lists for marketers (churn risk).")
app.command("report")(report)
app.add_typer(ui_app, name="ui", help="Open the MLflow (runs, models) or Feast (features) web UI.")
