"""``journeyml monitor backtest``: a replay scores alerts against known incidents, and its
replay agrees with daily runs on the log as it stood each day."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation.monitor import MonitorSettings, run_monitor
from evaluation.monitor_backtest import (
    IncidentFileError,
    KnownIncident,
    backtest,
    load_known_incidents,
)
from journeyml.cli import app
from tests.evaluation.test_monitor import SHOP, START, ingest_shop_log

SETTINGS = MonitorSettings(segments=["platform"])
BUG = START + timedelta(days=60)


@pytest.fixture(scope="module")
def shop_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ingest_shop_log(tmp_path_factory.mktemp("shop"), 80, bug_from=60)


def test_the_backtest_scores_detection_delay_and_false_alerts(shop_lake: Path) -> None:
    known = [KnownIncident("mobile loop", BUG, START + timedelta(days=79), "platform=mobile")]
    result = backtest(shop_lake, SETTINGS, known, SHOP)
    row = result.incidents.iloc[0]
    assert row["detected"] is not None and 0 <= row["delay_days"] <= 3 and row["within_target"]
    assert any("platform=mobile" in a for a in row["alerts"])
    assert result.summary["false_alerts"] == 0 and result.summary["detected_within_target"] == 1
    # the same log scored against an incident that never happened: its alerts are false
    wrong = [KnownIncident("elsewhere", START + timedelta(days=20), START + timedelta(days=25))]
    missed = backtest(shop_lake, SETTINGS, wrong, SHOP)
    assert missed.incidents.iloc[0]["detected"] is None
    assert missed.summary["false_alerts"] >= 1 and missed.summary["false_alerts_per_month"] > 0


def test_the_replay_matches_runs_on_the_log_as_it_stood(shop_lake: Path) -> None:
    """A daily run on day d (the log cut at d) knows an incident exactly when the replay says
    a live run would have raised it."""
    known = [KnownIncident("mobile loop", BUG, START + timedelta(days=79))]
    detected = backtest(shop_lake, SETTINGS, known, SHOP).incidents.iloc[0]["detected"]
    assert isinstance(detected, date)
    for day in (detected - timedelta(days=1), detected):
        live = run_monitor(shop_lake, SETTINGS, journey=SHOP, until=day)
        found = [s for s in live.incidents["start"] if s >= BUG - timedelta(days=3)]
        assert bool(found) == (day >= detected), (day, live.incidents)


def test_known_incidents_files(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    path.write_text(
        json.dumps(
            {
                "incidents": [
                    {"name": "a", "start_day": 10, "end_day": 15, "segment": {"platform": "ios"},
                     "affected_customers": 21},
                    {"kind": "b", "start_date": "2025-02-01", "end_date_exclusive": "2025-02-05"},
                    {"start": "2025-03-01", "end": 70},
                ]
            }
        )
    )  # fmt: skip
    a, b, c = load_known_incidents(path, START)
    assert (a.start, a.end, a.segment, a.affected_customers) == (
        START + timedelta(days=10), START + timedelta(days=14), "platform=ios", 21,
    )  # fmt: skip
    assert (b.name, b.start, b.end) == ("b", date(2025, 2, 1), date(2025, 2, 4))
    assert c.end == START + timedelta(days=70)
    path.write_text(json.dumps([{"start": "2025-03-01"}]))
    with pytest.raises(IncidentFileError, match="incident 0: needs end"):
        load_known_incidents(path, START)
    path.write_text(json.dumps([{"start": "March", "end": 3}]))
    with pytest.raises(IncidentFileError, match=r"incident 0\.start: expected an ISO date"):
        load_known_incidents(path, START)


def test_the_backtest_command(shop_lake: Path, tmp_path: Path) -> None:
    truth = tmp_path / "incidents.json"
    truth.write_text(json.dumps([{"name": "mobile loop", "start_day": 60, "end_day": 80}]))
    config = tmp_path / "monitoring.yaml"
    config.write_text("segments: [platform]\n")
    journeys = tmp_path / "journeys.yaml"
    journeys.write_text(json.dumps(SHOP.model_dump(mode="json")))
    args = ["monitor", "backtest", "--lake", str(shop_lake), "--incidents", str(truth)]
    args += ["--config", str(config), "--journeys", str(journeys), "--out", str(tmp_path / "bt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Detected 1 of 1 known incidents, 1 within 3 days" in result.output
    payload = json.loads((tmp_path / "bt" / "backtest.json").read_text())
    assert payload["summary"]["false_alerts"] == 0
    bad = CliRunner().invoke(app, [*args[:4], "--incidents", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "cannot read the incidents file" in bad.output
