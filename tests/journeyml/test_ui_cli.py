"""``journeyml ui mlflow|feast``: the invocation built from the workspace, and each UI
answering on loopback with the workspace's own experiment or project."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from journeyml.cli import app
from journeyml.config import CONFIG_DIR

START_SECONDS = 240  # a cold MLflow or Feast start on the shared 2-core machine is slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tracking_workspace(root: Path) -> str:
    """A workspace whose embedded MLflow store holds one experiment; returns its name."""
    from training.tracking import TrackingTarget, use_tracking

    (root / "mlflow").mkdir(parents=True)
    name = "ui-test-experiment"
    target = TrackingTarget(
        f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", (root / "mlflow" / "artifacts").as_uri(), name
    )
    use_tracking(target).create_experiment(name, artifact_location=target.artifact_location)
    return name


def feast_workspace(root: Path) -> tuple[Path, str]:
    """A workspace whose Feast registry holds one entity; returns the settings file, project."""
    from feast import Entity

    from features.settings import load_feature_settings
    from features.store import Workspace, open_store

    settings = load_feature_settings(str(CONFIG_DIR / "features.yaml"))
    project = "ui_test_project"
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"project": project})}
    )
    path = root / "features.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
    store = open_store(settings.store, Workspace(root))
    store.apply([Entity(name="customer", join_keys=["customer_id"])])
    return path, project


def test_mlflow_ui_is_started_on_the_workspace_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    class StartedError(Exception):
        pass

    def execv(path: str, args: list[str]) -> None:
        calls.append(args)
        raise StartedError

    missing = CliRunner().invoke(app, ["ui", "mlflow", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "journeyml train" in missing.output
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "mlflow.db").touch()
    monkeypatch.setattr(os, "execv", execv)
    result = CliRunner().invoke(
        app, ["ui", "mlflow", "--data-dir", str(tmp_path), "--port", "5123"]
    )
    assert isinstance(result.exception, StartedError)
    assert "http://127.0.0.1:5123" in result.output
    args = calls[0]
    assert Path(args[0]).name == "mlflow" and args[1] == "ui"
    opts = dict(zip(args[2::2], args[3::2], strict=True))
    root = tmp_path.resolve() / "mlflow"
    assert opts == {
        "--backend-store-uri": f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root": (root / "artifacts").as_uri(),
        "--host": "127.0.0.1",
        "--port": "5123",
    }


def test_feast_ui_is_started_on_the_workspace_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import FeatureStore

    missing = CliRunner().invoke(app, ["ui", "feast", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "journeyml features build" in missing.output
    config, project = feast_workspace(tmp_path)
    served: list[tuple[str, str, int]] = []

    def serve_ui(self: FeatureStore, host: str, port: int, **kwargs: object) -> None:
        served.append((self.project, host, port))

    monkeypatch.setattr(FeatureStore, "serve_ui", serve_ui)
    result = CliRunner().invoke(
        app,
        ["ui", "feast", "--data-dir", str(tmp_path), "--config", str(config), "--port", "8123"],
    )
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8123" in result.output
    assert served == [(project, "127.0.0.1", 8123)]


def serve(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "journeyml"), "ui", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def answer(proc: subprocess.Popen[bytes], url: str, log: Path) -> httpx.Response:
    """The first 200 from ``url`` while the server starts."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {START_SECONDS} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_both_uis_answer_on_loopback_with_the_workspace_contents(tmp_path: Path) -> None:
    experiment = tracking_workspace(tmp_path)
    config, project = feast_workspace(tmp_path)
    mlflow_port, feast_port = free_port(), free_port()
    data = ["--data-dir", str(tmp_path)]
    mlflow = serve(["mlflow", *data, "--port", str(mlflow_port)], tmp_path / "mlflow.log")
    feast = serve(
        ["feast", *data, "--config", str(config), "--port", str(feast_port)],
        tmp_path / "feast.log",
    )
    try:
        base = f"http://127.0.0.1:{mlflow_port}"
        answer(mlflow, f"{base}/health", tmp_path / "mlflow.log")
        found = httpx.post(
            f"{base}/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 10}, timeout=30
        ).json()
        assert experiment in [e["name"] for e in found["experiments"]]
        listed = answer(
            feast, f"http://127.0.0.1:{feast_port}/projects-list.json", tmp_path / "feast.log"
        ).json()
        assert project in str(listed)
    finally:
        stop(mlflow)
        stop(feast)
