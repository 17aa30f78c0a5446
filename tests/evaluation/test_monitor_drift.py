"""Feature drift on simulated worlds: a stationary world raises no feature-drift alert (tenure,
days-since and lifetime totals grow with the calendar in any world; a 90-day count is not one
in the log's first 90 days); a world that changed does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.monitor import DriftSettings, drift_frames, feature_drift
from journeyml.cli import app

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


def test_a_stationary_world_raises_no_feature_drift_alert(tmp_path: Path) -> None:
    drift = _drift(_workspace(tmp_path, None))
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
