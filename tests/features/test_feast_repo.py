"""Feast's own CLI works on the repository in features/repo (embedded and production)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from feast import FeatureStore

from features.catalog import FeatureCatalog
from features.pipeline import build_snapshots
from features.store import Workspace
from journeyml.config import REPO_ROOT, JourneyMap
from tests.features.helpers import (
    day,
    events_table,
    postgres_available,
    redis_available,
    write_lake,
)
from tests.services import skip_or_fail

REPO = REPO_ROOT / "features" / "repo"
FEAST = str(Path(sys.executable).parent / "feast")
LOG = [
    {"customer_id": "a", "timestamp": day(1), "event_type": "page_view"},
    {"customer_id": "a", "timestamp": day(3), "event_type": "purchase", "value": 9.5},
    {"customer_id": "b", "timestamp": day(2), "event_type": "signup"},
]


def feast(args: list[str], yaml_file: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [FEAST, "-c", str(REPO), "-f", str(yaml_file), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def snapshots(tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog):  # type: ignore[no-untyped-def]
    ws = Workspace(tmp_path)
    write_lake(ws.lake, events_table(LOG))
    return build_snapshots(ws.lake, ws.snapshots, journey_map, catalog)


def test_feast_plan_apply_materialize_embedded(tmp_path: Path, snapshots) -> None:  # type: ignore[no-untyped-def]
    config = yaml.safe_load((REPO / "feature_store.yaml").read_text())
    config["registry"] = str(tmp_path / "registry.db")
    config["online_store"]["path"] = str(tmp_path / "online.db")
    fs_yaml = tmp_path / "feature_store.yaml"
    fs_yaml.write_text(yaml.safe_dump(config))
    env = {"JOURNEYML_FEATURES_PATH": str(snapshots.path)}
    plan = feast(["plan"], fs_yaml, env)
    assert "Created feature service churn_v1" in plan
    feast(["apply"], fs_yaml, env)
    start = (snapshots.as_of - timedelta(days=30)).isoformat()
    end = (snapshots.as_of + timedelta(seconds=1)).isoformat()
    feast(["materialize", start, end], fs_yaml, env)
    store = FeatureStore(repo_path=str(REPO), fs_yaml_file=fs_yaml)
    online = store.get_online_features(
        features=store.get_feature_service("churn_v1"), entity_rows=[{"customer_id": "a"}]
    ).to_dict()
    assert online["conversions_total"] == [1]
    assert online["stage"] == ["purchase"]
    assert_ui_serves(fs_yaml, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_ui_serves(fs_yaml: Path, env: dict[str, str]) -> None:
    """`feast ui` starts on loopback and serves the project (polls for at most 90 s)."""
    port = free_port()
    ui = subprocess.Popen(
        [
            FEAST,
            "-c",
            str(REPO),
            "-f",
            str(fs_yaml),
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/projects-list.json", timeout=2
                ) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                assert ui.poll() is None, "feast ui exited"
                assert time.monotonic() < deadline, "feast ui did not answer within 90 s"
                time.sleep(1)
        assert [p["id"] for p in body["projects"]] == ["journeyml"]
    finally:
        ui.terminate()
        ui.wait(timeout=30)


@pytest.mark.redis
@pytest.mark.postgres
def test_feast_apply_with_the_production_config(tmp_path: Path, snapshots) -> None:  # type: ignore[no-untyped-def]
    if not (redis_available() and postgres_available()):
        skip_or_fail("needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432")
    text = (REPO / "feature_store.production.yaml").read_text()
    project = f"jml_{uuid.uuid4().hex[:8]}"
    fs_yaml = tmp_path / "feature_store.yaml"
    fs_yaml.write_text(text.replace("project: journeyml", f"project: {project}"))
    env = {
        "JOURNEYML_FEATURES_PATH": str(snapshots.path),
        "JOURNEYML_REDIS": "127.0.0.1:6379",
        "JOURNEYML_REGISTRY_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    }
    os.environ.update(env)
    try:
        feast(["apply"], fs_yaml, env)
        store = FeatureStore(repo_path=str(REPO), fs_yaml_file=fs_yaml)
        assert {s.name for s in store.list_feature_services()} == {
            "churn_v1",
            "conversion_v1",
            "next_step_v1",
        }
        store.materialize(
            snapshots.as_of - timedelta(days=30), snapshots.as_of + timedelta(seconds=1)
        )
        online = store.get_online_features(
            features=["journey_state:stage"], entity_rows=[{"customer_id": "b"}]
        ).to_dict()
        assert online["stage"] == ["consideration"]
        store.teardown()
    finally:
        for key in env:
            os.environ.pop(key, None)
