"""Fixtures of the serving tests: a simulated workspace with trained, promoted models and
loaded online features, and serving settings pointing at it (isolated state and registry)."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from features.catalog import build_catalog
from features.online import load_latest_snapshot
from features.store import Workspace, open_store
from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap, load_journey_map
from serving.auth import generate_key, hash_key
from serving.config import AuthSettings, ModelSettings, ServingSettings, load_serving_settings
from tests.training.conftest import SimWorkspace, build_sim_workspace, small_config
from training.config import TrainingConfig
from training.tracking import CHAMPION, resolve_tracking, use_tracking


@dataclass(frozen=True)
class ServingWorkspace:
    sim: SimWorkspace
    config: TrainingConfig
    tracking_uri: str
    customers: list[str]


@pytest.fixture(scope="session")
def serving_ws(tmp_path_factory: pytest.TempPathFactory) -> ServingWorkspace:
    """400 simulated customers, all four models trained and promoted, features online."""
    from training.pipeline import train_models

    journey_map: JourneyMap = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    root = tmp_path_factory.mktemp("serving_ws")
    sim = build_sim_workspace(root, journey_map, 400, 203, seed=9)
    config = small_config(tmp_path_factory.mktemp("serving_mlflow"))
    target = resolve_tracking(config.tracking, sim.root)
    results = train_models(
        sim.root,
        ["churn", "conversion", "next_step", "uplift"],
        journey_map,
        sim.settings,
        config,
        target,
        sim.truth,
        sim.decisions,
    )
    client = use_tracking(target)
    for r in results:
        client.set_registered_model_alias(r.registered_name, CHAMPION, r.version)
    ws = Workspace(sim.root)
    catalog = build_catalog(journey_map, sim.settings)
    load_latest_snapshot(open_store(sim.settings.store, ws), catalog, ws.snapshots)
    import pandas as pd

    snaps = pd.read_parquet(ws.snapshots, columns=["customer_id"])
    return ServingWorkspace(
        sim, config, target.tracking_uri, sorted(snaps["customer_id"].unique().tolist())
    )


def serving_settings(sw: ServingWorkspace, tmp: Path, **update: object) -> ServingSettings:
    """The project's serving settings on the test workspace, with their own state store."""
    base = load_serving_settings()
    values: dict[str, object] = {
        "data_dir": str(sw.sim.root),
        # a simulated workspace: the simulator's actions (the uplift model's action ids)
        "actions": str(SIMULATOR_CONFIG_DIR / "actions.yaml"),
        "state_url": f"sqlite:///{tmp / 'state.db'}",
        "event_store_url": f"sqlite:///{tmp / 'events.db'}",
        "models": ModelSettings(
            prefix=sw.config.registry.prefix, tracking_uri=sw.tracking_uri, refresh_seconds=3600
        ),
        "auth": AuthSettings(enabled=False),
        # generous: the tests share two cores with other work; a read slower than this is
        # a fallback, which some tests assert does not happen
        "deadline_ms": 250.0,
        **update,
    }
    data = base.model_dump()
    for key, value in values.items():
        data[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return ServingSettings.model_validate(data)


KEY = generate_key()
"""An API key with every scope (id ``all``)."""
READ_ONLY = generate_key()
"""An API key with the ``score`` scope only (id ``reader``)."""
DECIDE_ONLY = generate_key()
"""A second caller with the ``decide`` scope (id ``batch-tool``)."""
API_KEYS = json.dumps(
    [
        {
            "id": "all",
            "sha256": hash_key(KEY),
            "scopes": ["decide", "score", "write-events", "feedback"],
        },
        {"id": "reader", "sha256": hash_key(READ_ONLY), "scopes": ["score"]},
        {"id": "batch-tool", "sha256": hash_key(DECIDE_ONLY), "scopes": ["decide"]},
    ]
)
KEYS_ENV = "JML_TEST_KEYS"


def write_settings(settings: ServingSettings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
    return path


@dataclass(frozen=True)
class ServiceClient:
    client: TestClient
    settings: ServingSettings


@pytest.fixture(scope="session")
def service(
    serving_ws: ServingWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceClient]:
    """The service's ASGI app (BentoML's own) on the test workspace, with API keys
    (:data:`API_KEYS`) and no holdout. One per test process: BentoML registers its metrics
    process-wide, and a second app in one process fails on the duplicate."""
    tmp = tmp_path_factory.mktemp("service")
    settings = serving_settings(
        serving_ws,
        tmp,
        auth=AuthSettings(enabled=True, keys_env=KEYS_ENV),
        holdout={"share": 0.0, "salt": "x"},
    )
    os.environ["JOURNEYML_SERVING_CONFIG"] = str(write_settings(settings, tmp / "serving.yaml"))
    os.environ[KEYS_ENV] = API_KEYS
    import serving.service as module

    module = importlib.reload(module)
    try:
        with TestClient(module.JourneyML.to_asgi(), raise_server_exceptions=False) as client:
            yield ServiceClient(client, settings)
    finally:
        os.environ.pop("JOURNEYML_SERVING_CONFIG", None)
