"""Feature drift on simulated worlds: a stationary world raises no feature-drift alert (tenure,
days-since and lifetime totals grow with the calendar in any world; a 90-day count is not one
in the log's first 90 days); a world that changed does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.monitor import (
    DriftSettings,
    LabelledModel,
    compare_performance,
    drift_frames,
    feature_drift,
    performance_drift,
)
from journeyml.cli import app
from journeyml.config import load_journey_map

pytestmark = pytest.mark.slow


def _workspace(root: Path, incident: str | None) -> Path:
    runner = CliRunner()
    args = ["simulate", "--customers", "800", "--days", "150", "--seed", "5"]
    args += ["--out", str(root / "sim"), "--truth-cutoffs", "0"]
    if incident:
        args += ["--incident", incident]
    for command in (
        args,
        ["events", "ingest", str(root / "sim" / "events"), "--out", str(root / "lake")],
        ["features", "build", "--data-dir", str(root)],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    return root


def _drift(root: Path) -> pd.DataFrame:
    settings = DriftSettings()
    frames = drift_frames(root / "features" / "journey_features", settings)
    first = pd.read_parquet(root / "lake" / "events")["timestamp"].min()
    return feature_drift(frames, settings, None, first.to_pydatetime())


@pytest.fixture(scope="module")
def stationary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(tmp_path_factory.mktemp("stationary"), None)


def test_a_stationary_world_raises_no_feature_drift_alert(stationary: Path) -> None:
    drift = _drift(stationary)
    alerts = drift[drift["level"] == "alert"]
    assert alerts.empty, alerts
    # the calendar features are there, shown and not judged
    assert {"tenure_days", "days_since_last_event"} <= set(
        drift[drift["level"] == "calendar"]["feature"]
    )


def test_a_world_that_changed_raises_feature_drift_alerts(tmp_path: Path) -> None:
    # checkouts fail for 90 % of customers over the last 45 days: buying stops
    drift = _drift(_workspace(tmp_path, "checkout:105:45:0.9"))
    alerts = set(drift[drift["level"] == "alert"]["feature"])
    assert alerts, drift.head(10)
    assert any("purchase" in f or "conversion" in f or "checkout" in f for f in alerts), alerts


def test_performance_is_compared_where_labels_have_matured(stationary: Path) -> None:
    """A recency score of churn, judged on a 'test period' and on the latest snapshots whose
    horizon has passed: in a world that did not change, it ranks customers as well on both."""
    snapshots = stationary / "features" / "journey_features"
    times = sorted(pd.to_datetime(pd.read_parquet(snapshots)["event_timestamp"], utc=True).unique())
    journey = load_journey_map()
    horizon = pd.Timedelta(days=journey.horizons.churn_days)
    log_end = pd.read_parquet(stationary / "lake" / "events")["timestamp"].max()
    scorers = {"recency": lambda rows: rows["days_since_last_event"].to_numpy(float)}
    test = LabelledModel("churn", times[len(times) // 3], times[len(times) // 2])
    perf = performance_drift(
        stationary / "lake", snapshots, journey, scorers, {"recency": test}, DriftSettings()
    ).iloc[0]
    assert perf["level"] == "ok", perf
    assert perf["reference_auc"] > 0.6 and abs(perf["auc_change"]) < 0.03, perf
    # the recent rows come after the test period, and their labels had time to mature
    assert perf["recent_from"] > test.test_to and perf["recent_to"] + horizon <= log_end
    assert perf["recent_rows"] > 100 and 0 < perf["recent_rate"] < 1
    # a test period at the log's end leaves nothing matured after it
    late = LabelledModel("churn", times[-3], times[-1])
    none = performance_drift(
        stationary / "lake", snapshots, journey, scorers, {"recency": late}, DriftSettings()
    ).iloc[0]
    assert none["level"] == "no matured labels"


@pytest.mark.parametrize(
    ("recent_noise", "level"), [(0.0, "ok"), (3.0, "alert"), (None, "too few labels")]
)
def test_a_fall_of_the_auc_is_an_alert(recent_noise: float | None, level: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(size=2000) < 0.3
    score = y + rng.normal(0, 0.8, 2000)
    if recent_noise is None:
        recent = (y[:30], score[:30])  # about 9 positives
    else:
        recent = (y, y + rng.normal(0, 0.8 + recent_noise, 2000))
    out = compare_performance((y, score), recent, DriftSettings())
    assert out["level"] == level, out
    if level == "alert":
        assert out["auc_change"] <= -0.05
