"""The bundle contract serving loads: round trip, checksums, encoders, calibrators, and that
the module stands alone (serving may import it without training code)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import bundle as bundle_module
from training.bundle import (
    PREDICT_LEAF,
    PREDICT_NORMAL,
    ROW_PATH_MAX_ROWS,
    BundleError,
    RowPredictor,
    apply_binary_calibrator,
    apply_multiclass_calibrator,
    encode_frame,
    load_model_bundle,
    write_bundle,
)
from training.calibration import fit_binary_calibrator, fit_isotonic, fit_platt, fit_vector_scaling

VOCAB = {"stage": ["retention", "purchase"]}


def test_encoding_unknown_and_missing_values() -> None:
    frame = pd.DataFrame(
        {"n": [1.0, None, 3.0, 4.0], "stage": ["purchase", "advocacy", None, "retention"]}
    )
    x = encode_frame(frame, ["n", "stage"], VOCAB)
    assert x[:, 0].tolist()[0] == 1.0 and np.isnan(x[1, 0])
    assert x[0, 1] == 1.0  # position in the vocabulary
    assert x[1, 1] == 2.0  # unseen → len(vocabulary), its own code
    assert np.isnan(x[2, 1])  # missing stays missing
    assert x[3, 1] == 0.0
    with pytest.raises(BundleError, match="missing features"):
        encode_frame(frame, ["n", "absent"], VOCAB)


def tiny_booster() -> tuple[lgb.Booster, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"n": rng.normal(size=400), "stage": rng.choice(VOCAB["stage"], 400)})
    y = (frame["n"] + (frame["stage"] == "purchase") + rng.normal(size=400) > 0.5).astype(int)
    x = encode_frame(frame, ["n", "stage"], VOCAB)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(x, y, feature_name=["n", "stage"], categorical_feature=["stage"]),
        20,
    )
    return booster, frame


def write_tiny(folder: Path) -> tuple[Path, lgb.Booster, pd.DataFrame]:
    booster, frame = tiny_booster()
    manifest = write_bundle(
        folder,
        {
            "model": "churn",
            "kind": "binary",
            "feature_service": "churn_v1",
            "features": ["n", "stage"],
        },
        {"model": booster.model_to_string()},
        VOCAB,
        {"method": "platt", "a": 1.0, "b": 0.0},
    )
    return manifest, booster, frame


def test_round_trip_predicts_like_the_booster(tmp_path: Path) -> None:
    manifest, booster, frame = write_tiny(tmp_path)
    loaded = load_model_bundle(
        tmp_path, expected_manifest_sha256=bundle_module.sha256_file(manifest)
    )
    expected = booster.predict(encode_frame(frame, ["n", "stage"], VOCAB))
    np.testing.assert_allclose(loaded.predict_raw(frame), expected)
    np.testing.assert_allclose(loaded.predict_proba(frame), expected, atol=1e-6)
    assert loaded.features == ["n", "stage"] and loaded.feature_service == "churn_v1"


@pytest.mark.parametrize("target", ["model.txt", "encoders.json", "calibrator.json"])
def test_an_altered_file_fails_its_checksum_before_loading(tmp_path: Path, target: str) -> None:
    write_tiny(tmp_path)
    path = tmp_path / target
    path.write_text(path.read_text() + " ")
    with pytest.raises(BundleError, match="does not match"):
        load_model_bundle(tmp_path)


def test_the_manifest_checksum_is_checked_when_given(tmp_path: Path) -> None:
    write_tiny(tmp_path)
    with pytest.raises(BundleError, match="does not match the recorded"):
        load_model_bundle(tmp_path, expected_manifest_sha256="0" * 64)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["format"] = "other/9"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="unknown bundle format"):
        load_model_bundle(tmp_path)


def test_bundle_module_imports_no_training_code() -> None:
    tree = ast.parse(Path(bundle_module.__file__).read_text())
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [None])  # type: ignore[list-item]
    }
    assert not any(m.startswith(("training", "features", "journeyml")) for m in imported if m)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=50))
def test_calibrators_never_reverse_an_order(values: list[float]) -> None:
    rng = np.random.default_rng(1)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    grid = np.sort(np.asarray(values))
    for spec in (fit_isotonic(p, y), fit_platt(p, y), fit_binary_calibrator(p, y, "auto")):
        out = apply_binary_calibrator(spec, grid)
        assert np.all(np.diff(out) >= -1e-12)
        assert np.all((out >= 0) & (out <= 1))
    assert json.loads(json.dumps(fit_isotonic(p, y)))["method"] == "isotonic_interpolated"


def test_calibration_repairs_shifted_scores() -> None:
    rng = np.random.default_rng(2)
    p_true = rng.random(5000) * 0.3
    y = (rng.random(5000) < p_true).astype(int)
    shifted = np.clip(p_true * 2.5, 0, 1)  # what a balanced-weight model outputs
    spec = fit_binary_calibrator(shifted, y, "auto")
    assert abs(apply_binary_calibrator(spec, shifted).mean() - y.mean()) < 0.01


def test_vector_scaling_calibrates_a_multiclass_model() -> None:
    rng = np.random.default_rng(3)
    n, k = 3000, 3
    logits = rng.normal(size=(n, k))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in true])
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    spec = fit_vector_scaling(over, y)
    assert spec["method"] == "vector_scaling" and spec["temperature"] > 1.5
    fixed = apply_multiclass_calibrator(spec, over)
    nll = lambda q: -np.mean(np.log(q[np.arange(n), y]))  # noqa: E731
    assert nll(fixed) < nll(over)
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False), st.integers()),
            st.one_of(st.none(), st.sampled_from(["retention", "purchase", "advocacy", ""])),
        ),
        min_size=1,
        max_size=20,
    )
)
@settings(max_examples=60, deadline=None)
def test_row_encoding_equals_frame_encoding(rows: list[tuple[float | None, str | None]]) -> None:
    """The serving path (dicts) and the batch path (frames) give the model the same matrix."""
    booster, _ = tiny_booster()
    bundle = bundle_module.ModelBundle(
        {"kind": "binary", "model": "churn", "features": ["n", "stage"]},
        {"model": booster},
        {k: list(v) for k, v in VOCAB.items()},
        {"method": "none"},
    )
    records = [{"n": n, "stage": s, "extra": 1} for n, s in rows]
    frame = pd.DataFrame(records)
    np.testing.assert_array_equal(bundle.encode_rows(records), bundle.encode(frame))
    np.testing.assert_allclose(
        bundle.predict_proba_matrix(bundle.encode_rows(records)), bundle.predict_proba(frame)
    )
    with pytest.raises(BundleError, match="missing feature"):
        bundle.encode_rows([{"n": 1.0}])


def test_contributions_add_up_to_the_raw_score_and_follow_the_splits(tmp_path: Path) -> None:
    write_tiny(tmp_path)
    loaded = load_model_bundle(tmp_path)
    x = loaded.encode(pd.concat([tiny_booster()[1]] * 2, ignore_index=True))
    contrib = loaded.contributions(x)
    raw = loaded.boosters["model"].predict(x, raw_score=True)
    np.testing.assert_allclose(contrib.sum(axis=1), raw, atol=1e-9)  # local accuracy
    np.testing.assert_allclose(loaded.contributions(x[:1]), contrib[:1])  # one row = the batch
    # the real-time path's probability from the contributions is the model's own
    proba, explained = loaded.predict_proba_explained(x)
    np.testing.assert_allclose(proba, loaded.predict_proba_matrix(x), atol=1e-12)
    np.testing.assert_allclose(explained, contrib)
    # n drives the label: higher n must be credited with more churn on average
    n = x[:, 0]
    assert np.corrcoef(n, contrib[:, 0])[0, 1] > 0.8
    # on single-split trees, path attribution is exact TreeSHAP
    stump = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 2, "min_data_in_leaf": 5},
        lgb.Dataset(x, (n > 0).astype(int), feature_name=["n", "stage"]),
        10,
    )
    loaded.boosters["model"] = stump
    loaded._path_cache = None
    np.testing.assert_allclose(
        loaded.contributions(x), stump.predict(x, pred_contrib=True), atol=1e-9
    )


def test_the_single_row_path_predicts_what_the_booster_predicts(tmp_path: Path) -> None:
    """RowPredictor (LightGBM's single-row fast path) against Booster.predict: probabilities
    of binary and multiclass models, regression values and leaf indices, on rows with missing
    values and unseen categories; a bundle routes a few rows through it and more through one
    Booster.predict call, with equal results."""
    booster, frame = tiny_booster()
    rng = np.random.default_rng(3)
    x = encode_frame(frame, ["n", "stage"], VOCAB)[:40].copy()
    x[::7, 0] = np.nan
    x[::5, 1] = len(VOCAB["stage"])  # unseen category
    labels = rng.integers(0, 3, 400)
    multi = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(encode_frame(frame, ["n", "stage"], VOCAB), labels),
        8,
    )
    regression = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(encode_frame(frame, ["n", "stage"], VOCAB), rng.normal(size=400)),
        12,
    )
    for model in (booster, multi, regression):
        expected = np.asarray(model.predict(x)).reshape(len(x), -1)
        np.testing.assert_allclose(RowPredictor(model, PREDICT_NORMAL).predict(x), expected)
        leaves = np.asarray(model.predict(x, pred_leaf=True)).reshape(len(x), -1)
        np.testing.assert_array_equal(RowPredictor(model, PREDICT_LEAF).predict(x), leaves)
    with pytest.raises(BundleError, match="reads 2 features"):
        RowPredictor(booster, PREDICT_NORMAL).predict(np.zeros((1, 3)))

    write_tiny(tmp_path)
    loaded = load_model_bundle(tmp_path)
    few, many = x[:ROW_PATH_MAX_ROWS], x
    assert len(many) > ROW_PATH_MAX_ROWS
    np.testing.assert_allclose(loaded.predict_raw_matrix(few), booster.predict(few))
    np.testing.assert_allclose(loaded.predict_raw_matrix(many), booster.predict(many))
    np.testing.assert_allclose(loaded.contributions(few), loaded.contributions(many)[: len(few)])
    loaded.prepare_row_path()  # built at load by serving: the predictors the calls then use
    prepared = dict(loaded._row_predictors)
    assert {key[1] for key in prepared} == {PREDICT_LEAF, PREDICT_NORMAL}
    loaded.contributions(few)
    assert loaded._row_predictors == prepared
    loaded.boosters["model"] = regression  # a replaced booster is not served from the cache
    np.testing.assert_allclose(loaded.predict_raw_matrix(x[:1]), regression.predict(x[:1]))


def test_a_logistic_baseline_bundle_scores_as_the_baseline(tmp_path: Path) -> None:
    """A logistic baseline as a bundle: JSON only, the baseline's own predictions, reasons
    that are its log-odds terms, and a checksum on its scorer."""
    from training.models import LogisticBaseline

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "n": np.where(rng.random(600) < 0.1, np.nan, rng.normal(size=600) * 10),
            "stage": rng.choice(
                ["retention", "purchase", "rare", None], 600, p=[0.5, 0.4, 0.02, 0.08]
            ),
        }
    )
    y = ((frame["n"].fillna(0) > 0) ^ (rng.random(600) < 0.2)).astype(int).to_numpy()
    base = LogisticBaseline(["n", "stage"], ["stage"]).fit(frame, y)
    manifest = {"model": "churn", "kind": "binary", "features": ["n", "stage"],
                "feature_service": "churn_v1"}  # fmt: skip
    path = write_bundle(
        tmp_path, manifest, {}, base.vocabularies_, {"method": "none"}, base.scorer()
    )
    digest = bundle_module.sha256_file(path)
    loaded = load_model_bundle(tmp_path, expected_manifest_sha256=digest)
    assert loaded.scorer_kind == "logistic" and loaded.boosters == {}
    unseen = pd.concat([frame, pd.DataFrame({"n": [3.0], "stage": ["never seen"]})])
    np.testing.assert_allclose(loaded.predict_proba(unseen), base.predict_proba(unseen))
    x = loaded.encode(unseen)
    p, terms = loaded.predict_proba_explained(x)
    np.testing.assert_allclose(1 / (1 + np.exp(-terms.sum(axis=1))), p)
    assert np.all(terms[:, -1] == base.scorer()["intercept"])
    # a rare value shares its weight with unseen ones; missing has its own
    table = base.scorer()["terms"][1]["codes"]
    assert table[base.vocabularies_["stage"].index("rare")] == table[-1]
    (tmp_path / "scorer.json").write_text(json.dumps({**base.scorer(), "intercept": 9.0}))
    with pytest.raises(BundleError, match="does not match"):
        load_model_bundle(tmp_path, expected_manifest_sha256=digest)
