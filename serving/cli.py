"""``journeyml serve`` (the BentoML service on the embedded defaults) and ``serve-keygen``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console

from journeyml.config import CONFIG_DIR, REPO_ROOT

console = Console()
err = Console(stderr=True)


def serve(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path = typer.Option(CONFIG_DIR / "serving.yaml", "--config", help="Serving settings."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(3000, "--port", help="Port."),
    workers: int = typer.Option(1, "--workers", help="Server worker processes."),
) -> None:
    """Serve next-best-action, scores, events and feedback over HTTP (BentoML)."""
    from journeyml.config import ConfigError
    from serving.config import load_serving_settings

    try:
        load_serving_settings(config, data_dir)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    env = {
        **os.environ,
        "JOURNEYML_SERVING_CONFIG": str(config.resolve()),
        "JOURNEYML_DATA_DIR": str(data_dir.resolve()),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    bentoml = Path(sys.executable).parent / "bentoml"
    cmd = [
        str(bentoml),
        "serve",
        "serving.service:JourneyML",
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(REPO_ROOT),
    ]
    if workers > 1:
        env["JOURNEYML_WORKERS"] = str(workers)
    console.print(f"serving on http://{host}:{port} (docs at /, health at /livez and /readyz)")
    raise typer.Exit(subprocess.call(cmd, env=env))


def keygen(
    key_id: str = typer.Option(..., "--id", help="Name of the caller, e.g. orchestrator."),
    scopes: str = typer.Option(
        "decide,score", "--scopes", help="Comma-separated: decide, score, write-events, feedback."
    ),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
) -> None:
    """Create an API key: prints it once, stores only its sha256 in <data>/serving/api_keys.json."""
    from serving.auth import KeyConfigError, generate_key, hash_key, parse_keys

    path = data_dir / "serving" / "api_keys.json"
    entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    key = generate_key()
    entry = {"id": key_id, "sha256": hash_key(key), "scopes": scopes.split(",")}
    try:
        parse_keys(json.dumps([*entries, entry]), str(path))
    except KeyConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if any(e.get("id") == key_id for e in entries):
        err.print(f"[red]a key with id {key_id!r} exists in {path}; pick another id[/red]")
        raise typer.Exit(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*entries, entry], indent=1), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    console.print(f"API key for {key_id} ({scopes}); shown once, store it safely:")
