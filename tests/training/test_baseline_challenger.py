"""A baseline that beats the LightGBM model is said so and can be registered in its place:
a JSON bundle (no LightGBM model, no pickle) that serving loads by alias, verifies and scores
as any model, with the scores the training run measured."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from features.catalog import build_catalog
from features.pipeline import build_snapshots
from features.settings import FeatureSettings
from features.store import Workspace, apply_definitions, open_store
from serving.config import ModelSettings
from serving.models import ModelSet
from tests.features.helpers import write_lake
from tests.serving.conftest import serving_settings
from tests.training.bgnbd_log import bgnbd_orders, order_map
from tests.training.conftest import small_config
from training.bundle import BundleError, load_model_bundle
from training.config import TrainingConfig
from training.metrics import binary_metrics
from training.pipeline import (
    prepare_data,
    read_model_features,
    train_models,
    with_calendar,
)
from training.tracking import CHALLENGER, MANIFEST_TAG, resolve_tracking, use_tracking

SETTINGS = FeatureSettings(profile_attributes=[], channels=["web"])


def stump_config(tmp: Path) -> TrainingConfig:
    """The test config with a LightGBM model cut to one two-leaf tree: every baseline beats it."""
    config = small_config(tmp)
    models = config.models.model_dump()
    for m in ("churn", "conversion"):
        models[m]["num_boost_round"] = 1
        models[m]["lightgbm"] = {"num_leaves": 2, "learning_rate": 0.01}
    return config.model_copy(update={"models": config.models.model_validate(models)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingConfig, list]:
    root = tmp_path_factory.mktemp("orders")
    journey = order_map(inactivity_days=90, horizon_days=56)
    ws = Workspace(root)
    write_lake(ws.lake, bgnbd_orders(800, 330, seed=3))
    catalog = build_catalog(journey, SETTINGS)
    build_snapshots(ws.lake, ws.snapshots, journey, catalog)
    apply_definitions(open_store(SETTINGS.store, ws), catalog, ws)
    config = stump_config(tmp_path_factory.mktemp("mlflow"))
    results = train_models(
        root,
        ["churn", "conversion"],
        journey,
        SETTINGS,
        config,
        resolve_tracking(config.tracking, root),
        register_baseline=True,
    )
    return root, config, results


@pytest.mark.slow
def test_training_says_which_baseline_wins_and_registers_it(
    trained: tuple[Path, TrainingConfig, list], tmp_path: Path
) -> None:
    root, config, results = trained
    client = use_tracking(resolve_tracking(config.tracking, root))
    for model in ("churn", "conversion"):
        lgbm = next(r for r in results if r.model == model and r.baseline is None)
        base = next(r for r in results if r.model == model and r.baseline is not None)
        assert base.baseline in ("logreg", "bgnbd")
        # the verdict names the baseline, the metric and the margin
        assert lgbm.verdict is not None and "beats the LightGBM model on auc by" in lgbm.verdict
        margin = lgbm.metrics[f"baseline_{base.baseline}_auc"] - lgbm.metrics["auc"]
        assert margin > 0 and f"by {margin:.4f}" in lgbm.verdict
        # the baseline is the challenger now; the LightGBM version stays registered
        alias = client.get_model_version_by_alias(base.registered_name, CHALLENGER)
        assert str(alias.version) == base.version != lgbm.version
        # gated against the LightGBM model it beat, on the same test rows
        assert base.metrics["baseline_lightgbm_auc"] == pytest.approx(lgbm.metrics["auc"])
        assert base.metrics["auc"] == pytest.approx(margin + lgbm.metrics["auc"], abs=1e-9)
        assert f"baseline_{base.baseline}_auc" not in base.metrics

        # serving loads it by alias, verifies its checksums and scores it as any model
        sw = SimpleNamespace(
            sim=SimpleNamespace(root=root), config=config, tracking_uri=config.tracking.tracking_uri
        )
        settings = serving_settings(sw, tmp_path)  # type: ignore[arg-type]
        settings = settings.model_copy(
            update={
                "models": ModelSettings(
                    alias=CHALLENGER,
                    prefix=config.registry.prefix,
                    tracking_uri=config.tracking.tracking_uri,
                    required=("churn", "conversion"),
                    optional=(),
                )
            }
        )
        models = ModelSet(settings)
        try:
            models.refresh()
            assert models.ready(), models.errors
            served = models.models[model]
            assert served.version == base.version
            bundle = served.bundle
            assert bundle.scorer_kind == {"logreg": "logistic", "bgnbd": "bgnbd"}[base.baseline]
            assert bundle.boosters == {}
            # the same test rows as the run: the served scores give the run's metrics
            data = prepare_data(root, order_map(inactivity_days=90, horizon_days=56),
                                SETTINGS, config)  # fmt: skip
            service = config.models.churn.feature_service
            spec, x = read_model_features(data, service, config, {})
            spec, x = with_calendar(spec, x, data.rows, config.features.calendar)
            te = (data.rows["split"] == "test").to_numpy()
            y = data.rows[model].to_numpy(dtype=np.int64)[te]
            p = bundle.predict_proba(x[te])
            served_metrics = binary_metrics(y, p)
            for key in ("auc", "ece", "log_loss"):
                assert served_metrics[key] == pytest.approx(base.metrics[key], abs=1e-9), key
            # the real-time path: probabilities with reasons that add up to the log-odds
            cutoffs = data.rows.loc[te, "cutoff"].head(50).to_numpy()
            encoded = bundle.encode(x[te].head(50).assign(event_timestamp=cutoffs))
            proba, contributions = bundle.predict_proba_explained(encoded)
            np.testing.assert_allclose(proba, p[:50], rtol=1e-9, atol=1e-12)
            raw = bundle.predict_raw_matrix(encoded)
            logit = np.log(raw) - np.log1p(-raw)
            np.testing.assert_allclose(contributions.sum(axis=1), logit, rtol=1e-6, atol=1e-6)
        finally:
            models.stop()
        # a tampered scorer fails verification
        mv = client.get_model_version(base.registered_name, base.version)
        folder = tmp_path / f"{model}-bundle"
        load_model_bundle(
            f"models:/{base.registered_name}/{base.version}",
            expected_manifest_sha256=mv.tags[MANIFEST_TAG],
            dst_path=folder,
        )
        scorer = next(folder.rglob("scorer.json"))
        scorer.write_text(scorer.read_text().replace("0", "1", 1))
        with pytest.raises(BundleError, match=r"scorer\.json"):
            load_model_bundle(scorer.parent, expected_manifest_sha256=mv.tags[MANIFEST_TAG])
