"""The training set (labels + features at every labelled cutoff, as Parquet) and training from
it: ``journeyml training-set`` writes what the lake path trains on, and ``journeyml train
--dataset`` reads it, sampled by customer over its budget, with the rate in MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from journeyml.cli import app
from journeyml.config import JourneyMap
from tests.training.conftest import SimWorkspace, small_config
from training.config import DatasetSettings
from training.dataset import describe_service, entity_frame, read_features
from training.labels import LABEL_COLUMNS, LabelError, build_labels
from training.training_set import LOG_END, SET_COLUMNS, build_training_set, read_training_set


@pytest.fixture(scope="module")
def training_set(sim_ws: SimWorkspace, journey_map: JourneyMap) -> Path:
    out = sim_ws.root / "features" / "training_set"
    build_training_set(
        sim_ws.root / "lake",
        sim_ws.root / "features" / "journey_features",
        out,
        journey_map,
        sim_ws.settings,
    )
    return out


def test_the_set_holds_the_labels_and_the_features_training_reads(
    training_set: Path, sim_ws: SimWorkspace, journey_map: JourneyMap
) -> None:
    from features.store import Workspace, open_store

    sample = read_training_set(training_set, 10**9, 10**6)
    assert sample.sample_rate == 1.0
    frame = sample.frame
    assert list(frame.columns[: len(SET_COLUMNS)]) == list(SET_COLUMNS)
    labels = build_labels(sim_ws.root / "lake", journey_map, sim_ws.settings)
    assert len(frame) == len(labels.frame) > 1000
    assert frame[LOG_END].iloc[0] == pd.Timestamp(labels.log_end)
    assert sorted(frame["cutoff"].unique()) == [pd.Timestamp(t) for t in labels.cutoffs]
    expected = labels.frame.sort_values(["cutoff", "customer_id"]).reset_index(drop=True)
    for col in ("customer_id", *LABEL_COLUMNS):
        a, b = frame[col], expected[col]
        same = (a.astype(object) == b.astype(object)) | (a.isna() & b.isna())
        assert same.all(), f"{col}: {int((~same).sum())} rows differ"
    # the features are those the lake path reads for the same rows (Feast's point-in-time
    # join, in DuckDB) for a model's service
    store = open_store(sim_ws.settings.store, Workspace(sim_ws.root))
    spec = describe_service(store, "churn_v1")
    read = read_features(store, spec, entity_frame(frame))
    for f in spec.features:
        a, b = frame[f], read[f]
        if a.dtype == object:
            same = (a == b) | (a.isna() & b.isna())
        else:
            same = pd.Series(np.isclose(a.astype(float), b, equal_nan=True))
        assert same.all(), f"{f}: {int((~same).sum())} rows differ"


def test_a_set_over_budget_keeps_whole_customers_at_the_budgets_rate(training_set: Path) -> None:
    full = read_training_set(training_set, 10**9, 10**6)
    rows = len(full.frame)
    sample = read_training_set(training_set, rows // 4, 10**6)
    assert sample.sample_rate == pytest.approx(0.25, abs=1 / rows)
    kept = sample.frame["customer_id"].unique()
    # every row of a kept customer, at every cutoff; none of the others
    assert len(sample.frame) == int(full.frame["customer_id"].isin(kept).sum())
    assert 0.15 < len(kept) / full.customers_total < 0.35
    assert 0.15 < len(sample.frame) / rows < 0.35
    # the same customers in every run, and a sample independent of the held-out group
    again = read_training_set(training_set, rows // 4, 10**6)
    assert sorted(again.frame["customer_id"].unique()) == sorted(kept)
    params = sample.params()
    assert params["dataset_rows_total"] == rows
    assert params["dataset_rows_read"] == len(sample.frame)
    assert params["dataset_sample_rate"] == pytest.approx(sample.sample_rate, abs=1e-6)
    # the memory budget binds the same way
    size = sum(
        pq.ParquetFile(p).metadata.row_group(i).total_byte_size
        for p in training_set.rglob("*.parquet")
        for i in range(pq.ParquetFile(p).metadata.num_row_groups)
    )
    tight = read_training_set(training_set, 10**9, size / 2**20 / 2)
    assert tight.sample_rate == pytest.approx(0.5)


def test_a_folder_that_is_not_a_training_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="no training set"):
        read_training_set(tmp_path / "nothing", 10, 10)
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"customer_id": ["a"]}), other / "x.parquet")
    with pytest.raises(LabelError, match=r"not a training set .*cutoff"):
        read_training_set(other, 10, 10)


def test_train_from_a_sampled_set_logs_the_rate(
    training_set: Path, sim_ws: SimWorkspace, tmp_path: Path
) -> None:
    import mlflow

    total = read_training_set(training_set, 10**9, 10**6).rows_total
    config = small_config(tmp_path).model_copy(
        update={"dataset": DatasetSettings(max_rows=total // 2, max_memory_mb=4096)}
    )
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(config.model_dump(mode="json")), "utf-8")
    features = tmp_path / "features.yaml"
    features.write_text(yaml.safe_dump(sim_ws.settings.model_dump(mode="json")), "utf-8")
    result = CliRunner().invoke(
        app,
        ["train", "--model", "churn", "--data-dir", str(sim_ws.root), "--config", str(models),
         "--features-config", str(features), "--dataset", str(training_set)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    params = run.data.params
    rate = float(params["dataset_sample_rate"])
    assert rate == pytest.approx(0.5, abs=0.01)
    assert int(params["dataset_rows_read"]) < int(params["dataset_rows_total"]) == total
    rows = sum(run.data.metrics[f"{s}_rows"] for s in ("train", "validation", "test"))
    assert rows <= int(params["dataset_rows_read"])
    assert run.data.metrics["auc"] > 0.5


def test_uplift_is_refused_from_a_training_set(training_set: Path, sim_ws: SimWorkspace) -> None:
    result = CliRunner().invoke(
        app,
        ["train", "--model", "uplift", "--data-dir", str(sim_ws.root), "--dataset",
         str(training_set)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "not from a training set" in " ".join(result.output.split())
