"""``journeyml serve`` (the BentoML service on the embedded defaults) and ``serve-keygen``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from journeyml.config import REPO_ROOT, config_path

console = Console()
err = Console(stderr=True)


def _pid_file(data_dir: Path) -> Path:
    return data_dir / "serving" / "server.pid"


def serve(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    config: Path | None = typer.Option(
        None, "--config", help="Serving settings (default: serving.yaml of --config-dir)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(3000, "--port", help="Port."),
    workers: int = typer.Option(1, "--workers", help="Server worker processes."),
    detach: bool = typer.Option(
        False, "--detach", help="Start in the background, wait until ready, and return."
    ),
    stop: bool = typer.Option(False, "--stop", help="Stop a server started with --detach."),
) -> None:
    """Serve next-best-action, scores, events and feedback over HTTP (BentoML)."""
    from journeyml.config import ConfigError
    from serving.config import load_serving_settings

    pid_file = _pid_file(data_dir)
    if stop:
        _stop(pid_file)
        return
    config = config or config_path("serving.yaml")
    try:
        load_serving_settings(config, data_dir)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    env = {
        **os.environ,
        "JOURNEYML_SERVING_CONFIG": str(config.resolve()),
        "JOURNEYML_DATA_DIR": str(data_dir.resolve()),
        "JOURNEYML_WORKERS": str(workers),
        "BENTOML_DO_NOT_TRACK": "true",
        # BentoML keeps its Prometheus multiprocess files under $BENTOML_HOME and empties that
        # folder at start: shared per user, a second BentoML service wiped this one's counts.
        # Each instance (workspace and port) gets its own, emptied at its own start.
        "BENTOML_HOME": str((data_dir / "serving" / f"bentoml-{port}").resolve()),
    }
    cmd = [
        str(Path(sys.executable).parent / "bentoml"),
        "serve",
        "serving.service:JourneyML",
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(REPO_ROOT),
    ]
    url = f"http://{host}:{port}"
    if not detach:
        console.print(f"serving on {url} (docs at /, health at /livez and /readyz)")
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)  # the server replaces this process: signals reach it
    _stop(pid_file, quiet=True)
    log = data_dir / "serving" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.write_text(str(proc.pid), encoding="utf-8")
    if not _wait_ready(url, proc, timeout=180):
        err.print(f"[red]the server did not become ready; see {log}[/red]")
        raise typer.Exit(1)
    console.print(
        f"serving on {url} (pid {proc.pid}, log {log}); stop with "
        f"`journeyml serve --stop --data-dir {data_dir}`"
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def _stop(pid_file: Path, quiet: bool = False) -> None:
    if not pid_file.is_file():
        if not quiet:
            console.print("no server started with --detach is running")
        return
    pid = int(pid_file.read_text(encoding="utf-8").strip())
    try:
        os.killpg(pid, signal.SIGTERM)
        if not quiet:
            console.print(f"stopped the server (pid {pid})")
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def sample(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    port: int = typer.Option(3000, "--port", help="Port of the running server."),
) -> None:
    """Create a demo API key, send one next-best-action request, print request and answer."""
    import httpx
    import pandas as pd

    from serving.auth import generate_key, hash_key

    path = data_dir / "serving" / "api_keys.json"
    entries = [e for e in _read_keys(path) if e.get("id") != "demo"]
    key = generate_key()
    scopes = ["decide", "score", "write-events", "feedback"]
    _write_keys(path, [*entries, {"id": "demo", "sha256": hash_key(key), "scopes": scopes}])
    customer = str(
        pd.read_parquet(data_dir / "features" / "journey_features", columns=["customer_id"])[
            "customer_id"
        ].iloc[0]
    )
    body = {"customer_id": customer, "context": {"channel": "web", "page": "/pricing"}}
    url = f"http://127.0.0.1:{port}/v1/next-best-action"
    console.print("[bold]request[/bold] (a demo key was created; it is stored hashed):")
    console.print(
        f"curl -s -X POST {url} -H 'content-type: application/json' "
        f"-H 'x-api-key: {key}' -d '{json.dumps(body)}'",
        markup=False,
        soft_wrap=True,
    )
    reply = httpx.post(url, json=body, headers={"x-api-key": key}, timeout=10)
    console.print(f"[bold]answer[/bold] (HTTP {reply.status_code}):")
    console.print_json(data=reply.json(), indent=1)
    if reply.status_code != 200:
        raise typer.Exit(1)


def _read_keys(path: Path) -> list[dict[str, object]]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def _write_keys(path: Path, entries: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)


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
    entries = _read_keys(path)
    key = generate_key()
    entry: dict[str, object] = {"id": key_id, "sha256": hash_key(key), "scopes": scopes.split(",")}
    try:
        parse_keys(json.dumps([*entries, entry]), str(path))
    except KeyConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if any(e.get("id") == key_id for e in entries):
        err.print(f"[red]a key with id {key_id!r} exists in {path}; pick another id[/red]")
        raise typer.Exit(2)
    _write_keys(path, [*entries, entry])
    console.print(f"API key for {key_id} ({scopes}); shown once, store it safely:")
    console.print(key, markup=False, soft_wrap=True)
