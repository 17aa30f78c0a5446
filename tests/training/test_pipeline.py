"""Smoke run of the real pipeline on a few hundred simulated customers, with MLflow (SQLite) and
Feast under tmp_path: what each run logs and what each registered version holds
(reproducibility is tested with the registry flow in test_registry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap
from tests.features.helpers import by_customer_and_time
from tests.training.conftest import Trained
from training.bundle import MANIFEST_TAG, load_model_bundle
from training.pipeline import TrainedModel
from training.tracking import CHALLENGER, resolve_tracking, use_tracking

BINARY_METRICS = ("auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift")
MULTICLASS_METRICS = ("top1_accuracy", "top3_accuracy", "log_loss", "macro_f1")


def client_for(trained: Trained) -> MlflowClient:
    return use_tracking(resolve_tracking(trained.config.tracking, trained.ws.root))


def result(trained: Trained, model: str) -> TrainedModel:
    r = trained.results[model]
    assert isinstance(r, TrainedModel)
    return r


@pytest.mark.parametrize("model", ["churn", "conversion"])
def test_binary_runs_log_the_model_and_every_baseline(trained: Trained, model: str) -> None:
    client = client_for(trained)
    r = result(trained, model)
    run = client.get_run(r.run_id)
    metrics = run.data.metrics
    for m in BINARY_METRICS:
        assert m in metrics
        bases = ["logreg", "random_forest", "recency_frequency"]
        bases += ["bgnbd"] if model == "conversion" else []  # churn here is not no-purchase
        for base in bases:
            assert f"baseline_{base}_{m}" in metrics
    for m in ("auc_truth", "auc_gap_to_truth", "truth_rows", "train_rows", "test_rows"):
        assert m in metrics
    params = run.data.params
    for p in ("train_from", "test_to", "validation_cutoffs", "feature_service", "seed"):
        assert p in params
    assert params["feature_service"] == f"{model}_v1"
    assert run.data.tags["feature_service_version"] == "v1"
    assert len(run.data.tags["git_commit"]) in (40, len("unknown"))
    artifacts = {a.path for a in client.list_artifacts(r.run_id, "plots")}
    assert {
        "plots/roc.png",
        "plots/calibration.png",
        "plots/gains.png",
        "plots/feature_importance.png",
    } <= artifacts
    assert 0.5 < metrics["auc"] <= 1.0


def test_next_step_and_uplift_runs(trained: Trained) -> None:
    client = client_for(trained)
    ns = client.get_run(result(trained, "next_step").run_id).data.metrics
    for m in MULTICLASS_METRICS:
        assert m in ns and f"baseline_markov_{m}" in ns
    assert "plots/confusion.png" in {
        a.path for a in client.list_artifacts(result(trained, "next_step").run_id, "plots")
    }
    up = client.get_run(result(trained, "uplift").run_id)
    for m in ("qini_convert", "qini_churn", "auuc_convert", "effect_corr_convert"):
        assert m in up.data.metrics
    assert up.data.params["meta_learner"] == "dr_learner"
    assert up.data.params["units"] == "decision log"


@pytest.mark.parametrize("model", ["churn", "conversion", "next_step", "uplift"])
def test_the_registered_challenger_is_a_complete_bundle(
    trained: Trained, model: str, tmp_path: Path
) -> None:
    client = client_for(trained)
    name = trained.config.registered_name(model)
    version = client.get_model_version_by_alias(name, CHALLENGER)
    assert str(version.version) == result(trained, model).version
    local = Path(
        __import__("mlflow").artifacts.download_artifacts(
            f"models:/{name}@{CHALLENGER}", dst_path=str(tmp_path)
        )
    )
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"MLmodel", "model.lgb", "input_example.json", "extra_files/manifest.json"} <= files
    assert {"extra_files/encoders.json", "extra_files/calibrator.json"} <= files
    assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)
    mlmodel = (local / "MLmodel").read_text()
    assert "signature:" in mlmodel and "lightgbm.basic.Booster" in mlmodel
    # MLflow's model.lgb is LightGBM's text format
    assert (local / "model.lgb").read_text().startswith("tree")
    manifest = json.loads((local / "extra_files" / "manifest.json").read_text())
    assert (
        manifest["feature_service"] == client.get_run(version.run_id).data.params["feature_service"]
    )
    bundle = load_model_bundle(local, expected_manifest_sha256=version.tags[MANIFEST_TAG])
    assert bundle.model == model


def snapshot_rows(trained: Trained, n: int = 300) -> pd.DataFrame:
    snaps = pd.read_parquet(trained.ws.root / "features" / "journey_features")
    snaps = by_customer_and_time(snaps)  # the file keeps no order: the same sample each run
    return snaps.sample(n=min(n, len(snaps)), random_state=0).reset_index(drop=True)


def test_bundle_predictions_match_the_run_and_are_probabilities(
    trained: Trained, journey_map: JourneyMap
) -> None:
    """The registered bundle, scored on the run's test period, gives the run's own test
    metrics: the predictions serving makes are the predictions training evaluated."""
    from training.metrics import binary_metrics
    from training.pipeline import prepare_data, read_model_features, with_calendar

    rows = snapshot_rows(trained)
    data = prepare_data(trained.ws.root, journey_map, trained.ws.settings, trained.config)
    test = (data.rows["split"] == "test").to_numpy()
    for model in ("churn", "conversion"):
        name = trained.config.registered_name(model)
        client_for(trained)
        bundle = load_model_bundle(f"models:/{name}@{CHALLENGER}")
        p = bundle.predict_proba(rows)
        assert p.shape == (len(rows),)
        assert np.all((p >= 0) & (p <= 1))
        settings = getattr(trained.config.models, model)
        spec, x = read_model_features(data, settings.feature_service, trained.config, {})
        spec, x = with_calendar(spec, x, data.rows, trained.config.features.calendar)
        y = data.rows.loc[test, model].to_numpy(dtype=int)
        got = binary_metrics(y, bundle.predict_proba(x[test]))
        logged = trained.results[model].metrics  # type: ignore[attr-defined]
        for metric in ("auc", "log_loss", "brier", "mean_prediction"):
            assert got[metric] == pytest.approx(logged[metric], abs=1e-9), (model, metric)
    ns = load_model_bundle(f"models:/{trained.config.registered_name('next_step')}@{CHALLENGER}")
    proba = ns.predict_proba(rows)
    assert proba.shape == (len(rows), len(ns.classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    up = load_model_bundle(f"models:/{trained.config.registered_name('uplift')}@{CHALLENGER}")
    effects = up.predict_effects(rows)
    assert set(effects) == {"convert", "churn"}
    assert list(effects["convert"].columns) == up.actions
    assert np.all(np.abs(effects["convert"].to_numpy()) <= 1.5)


def test_training_registers_its_feature_services_without_features_apply(
    trained: Trained, tmp_path: Path
) -> None:
    """A workspace whose snapshots were built but never applied to Feast trains as it is;
    preparing twice (a second run on the same registry) changes nothing."""
    from features.store import Workspace, open_store
    from journeyml.config import load_journey_map
    from training.pipeline import prepare_data, read_model_features

    (tmp_path / "lake").symlink_to(trained.ws.root / "lake")
    (tmp_path / "features").symlink_to(trained.ws.root / "features")
    assert not (tmp_path / "feast").exists()
    journey_map = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    for _ in range(2):
        data = prepare_data(tmp_path, journey_map, trained.ws.settings, trained.config)
        spec, x = read_model_features(data, "churn_v1", trained.config, {})
        assert len(x) == len(data.rows) and spec.features
    store = open_store(trained.ws.settings.store, Workspace(tmp_path))
    services = [s.name for s in store.list_feature_services()]
    assert sorted(services) == sorted(set(services)) and "churn_v1" in services
