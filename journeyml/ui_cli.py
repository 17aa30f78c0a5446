"""``journeyml ui mlflow|feast``: the tracking and feature-store web UIs on a workspace.

Both read what the workspace's configuration points at (the embedded SQLite tracking database
and artifact folder under ``<data>/mlflow`` unless ``models.yaml`` names a tracking server; the
Feast registry and online store of ``features.yaml``), listen on loopback by default and print
their address. They run in the foreground until interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from journeyml.config import ConfigError

console = Console()
err = Console(stderr=True)

app = typer.Typer(no_args_is_help=True, add_completion=False)

DataDir = typer.Option(Path("data"), "--data-dir", help="Workspace folder (lake, features, feast).")
Host = typer.Option(
    "127.0.0.1", "--host", help="Address to listen on (loopback by default: no authentication)."
)


def mlflow_ui_command(tracking_uri: str, artifact_location: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` invocation for a workspace's tracking store and artifacts."""
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--default-artifact-root",
        artifact_location,
        "--host",
        host,
        "--port",
        str(port),
    ]


@app.command("mlflow")
def mlflow_ui(
    data_dir: Path = DataDir,
    config: Path | None = typer.Option(
        None, "--config", help="Training settings (default: models.yaml of --config-dir)."
    ),
    host: str = Host,
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port to listen on."),
) -> None:
    """The MLflow UI on the workspace's runs and registered models."""
    from training.config import load_training_config
    from training.tracking import resolve_tracking

    try:
        cfg = load_training_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    target = resolve_tracking(cfg.tracking, data_dir)
    if target.tracking_uri.startswith("sqlite:///"):
        db = Path(target.tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            err.print(f"[red]no MLflow database at {db}: run journeyml train first[/red]")
            raise typer.Exit(2)
    command = mlflow_ui_command(target.tracking_uri, target.artifact_location, host, port)
    console.print(
        f"MLflow UI: http://{host}:{port}  (tracking {target.tracking_uri}; Ctrl-C stops)"
    )
    sys.stdout.flush()
    os.execv(command[0], command)


@app.command("feast")
def feast_ui(
    data_dir: Path = DataDir,
    features_config: Path | None = typer.Option(
        None, "--config", help="Feature settings (default: features.yaml of --config-dir)."
    ),
    host: str = Host,
    port: int = typer.Option(8888, "--port", min=1, max=65535, help="Port to listen on."),
) -> None:
    """The Feast UI on the workspace's feature store (entities, views, feature services)."""
    from features.settings import load_feature_settings
    from features.store import Workspace, open_store

    try:
        settings = load_feature_settings(None if features_config is None else str(features_config))
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    workspace = Workspace(data_dir)
    if settings.store.registry.type != "sql" and not (workspace.feast / "registry.db").is_file():
        err.print(
            f"[red]no Feast registry in {workspace.feast}: run journeyml features build first[/red]"
        )
        raise typer.Exit(2)
    store = open_store(settings.store, workspace)
    console.print(
        f"Feast UI: http://{host}:{port}  (project {settings.store.project}; Ctrl-C stops)"
    )
    sys.stdout.flush()
    store.serve_ui(host=host, port=port)
