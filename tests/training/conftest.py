"""Fixtures of the training tests: a small simulated workspace and a training config for it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from features.catalog import build_catalog
from features.pipeline import build_snapshots
from features.settings import FeatureSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap, load_journey_map
from training.config import (
    GateSettings,
    ModelsSettings,
    RegistrySettings,
    SplitSettings,
    TrackingSettings,
    TrainingConfig,
    load_training_config,
)

NOW = datetime.fromisoformat("2026-06-01T00:00:00+00:00")


@pytest.fixture(scope="session")
def journey_map() -> JourneyMap:
    return load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")


@dataclass(frozen=True)
class SimWorkspace:
    """A simulated, ingested, featurised workspace (lake, snapshots, Feast registry)."""

    root: Path
    truth: Path
    decisions: Path
    settings: FeatureSettings


def build_sim_workspace(
    root: Path, journey_map: JourneyMap, customers: int, days: int, seed: int
) -> SimWorkspace:
    """simulate → ingest → build features → apply Feast definitions, all under ``root``."""
    from journeyml.events.ingest import ingest_events
    from journeyml.simulate.run import TruthOptions, simulate
    from journeyml.simulate.world import World

    sim = root / "sim"
    simulate(
        World(),
        journey_map,
        customers,
        days,
        seed=seed,
        out=sim,
        truth=TruthOptions(last_cutoffs=2, sample=300, rollouts=24),
    )
    ws = Workspace(root)
    ingest_events(sim / "events", ws.lake, customers=sim / "customers.parquet", now=NOW)
    settings = FeatureSettings()
    catalog = build_catalog(journey_map, settings)
    build_snapshots(ws.lake, ws.snapshots, journey_map, catalog)
    apply_definitions(open_store(settings.store, ws), catalog, ws)
    return SimWorkspace(root, sim / "truth", sim / "truth" / "decisions.parquet", settings)


@pytest.fixture(scope="session")
def sim_ws(tmp_path_factory: pytest.TempPathFactory, journey_map: JourneyMap) -> SimWorkspace:
    """400 simulated customers over 203 days (labelled cutoffs from day 28 to day 168)."""
    return build_sim_workspace(tmp_path_factory.mktemp("sim_ws"), journey_map, 400, 203, seed=5)


def small_config(tmp: Path, **gates: GateSettings) -> TrainingConfig:
    """The project's training config, shrunk for seconds-long runs, isolated under ``tmp``."""
    base = load_training_config()
    name = f"t{uuid.uuid4().hex[:8]}_"
    models = base.models.model_dump()
    for m in ("churn", "conversion", "next_step", "uplift"):
        models[m]["num_boost_round"] = 60
        models[m]["early_stopping_rounds"] = 10
        models[m]["lightgbm"] = {**models[m]["lightgbm"], "learning_rate": 0.1}
    models["next_event"].update(
        num_boost_round=40, early_stopping_rounds=10, max_anchors=6000,
        lightgbm={**models["next_event"]["lightgbm"], "learning_rate": 0.1, "num_leaves": 7},
    )  # fmt: skip
    return base.model_copy(
        update={
            "split": SplitSettings(test_days=35, validation_days=28, purge=True),
            "tracking": TrackingSettings(
                tracking_uri=f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}",
                artifact_location=(tmp / "mlflow" / "artifacts").as_uri(),
                experiment=f"{name}exp",
            ),
            "registry": RegistrySettings(prefix=name),
            "models": ModelsSettings.model_validate(models),
            "gates": {**base.gates, **gates},
        }
    )


@dataclass(frozen=True)
class Trained:
    """One training run of all four models on the simulated workspace."""

    config: TrainingConfig
    results: dict[str, object]
    ws: SimWorkspace


@pytest.fixture(scope="session")
def trained(
    sim_ws: SimWorkspace, tmp_path_factory: pytest.TempPathFactory, journey_map: JourneyMap
) -> Trained:
    from training.pipeline import train_models
    from training.tracking import resolve_tracking

    config = small_config(tmp_path_factory.mktemp("mlflow_main"))
    results = train_models(
        sim_ws.root,
        ["churn", "conversion", "next_step", "uplift"],
        journey_map,
        sim_ws.settings,
        config,
        resolve_tracking(config.tracking, sim_ws.root),
        sim_ws.truth,
        sim_ws.decisions,
    )
    return Trained(config, {r.model: r for r in results}, sim_ws)
