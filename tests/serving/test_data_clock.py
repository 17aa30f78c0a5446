"""A log that ends in the past (the test workspace's simulated log ends in 2025) is aged from its
own end by the list, its reasons and the real-time path; a given --now still wins."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from journeyml.cli import app
from journeyml.clock import last_event_time
from serving.engine import DecisionContext
from serving.runtime import Runtime
from tests.serving.conftest import ServingWorkspace, serving_settings

# the ages the reasons cite ("no activity for 45 days", "last visit 3 days ago", "customer for
# 277 days"), not the windows of counts ("in the last 30 days")
DAYS = re.compile(r"(?:for ([\d,]+) days?\b|([\d,]+) days? ago)")


def _days_in_reasons(texts: pd.Series) -> list[float]:
    found = [DAYS.search(str(t)) for t in texts.dropna()]
    return [float((m.group(1) or m.group(2)).replace(",", "")) for m in found if m]


def test_the_list_and_its_reasons_are_aged_from_the_end_of_the_log(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    root = serving_ws.sim.root
    end = last_event_time(root / "lake")
    assert end is not None and (datetime.now(UTC) - end).days > 30  # the log ends in the past
    config = tmp_path / "serving.yaml"
    settings = serving_settings(serving_ws, tmp_path)
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    args = ["lists", "churn-risk", "--data-dir", str(root), "--config", str(config)]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "data_time")])
    assert result.exit_code == 0, result.output
    assert "ages are counted from the end of the log" in " ".join(result.output.split())
    listed = pd.read_csv(tmp_path / "data_time" / "churn_risk.csv")
    reasons = pd.concat([listed[f"reason_{i}"] for i in (1, 2, 3)])
    days = _days_in_reasons(reasons)
    assert days and max(days) <= 204  # the log is 203 days long: no wall-clock age
    assert not any("e+" in str(t) for t in reasons.dropna())
    wall = datetime.now(UTC).date().isoformat()  # by hand: the old behaviour, for contrast
    # At the wall clock every customer is lapsed: the contrast lists them all.
    wall_args = [*args, "--out", str(tmp_path / "wall"), "--now", wall, "--population", "all"]
    result = runner.invoke(app, wall_args)
    assert result.exit_code == 0, result.output
    walled = pd.read_csv(tmp_path / "wall" / "churn_risk.csv")
    aged = _days_in_reasons(pd.concat([walled[f"reason_{i}"] for i in (1, 2, 3)]))
    assert aged and min(aged) > (datetime.now(UTC) - end).days - 1


def test_the_real_time_path_runs_on_the_same_clock(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    end = last_event_time(serving_ws.sim.root / "lake")
    assert end is not None
    rt = Runtime(serving_settings(serving_ws, tmp_path, deadline_ms=10_000))
    try:
        assert rt.clock.on_data_time and rt.clock.now == end
        assert abs((rt.now() - end).total_seconds()) < 600
        for cid in serving_ws.customers[:20]:
            d = rt.engine.decide(cid)  # no time given: the data's clock
            assert abs((d.decided_at - end).total_seconds()) < 600
            assert d.scores is not None
            for reason in d.scores.reasons:
                for value in _days_in_reasons(pd.Series([reason.text])):
                    assert value <= 400, reason.text
        given = datetime(2025, 3, 1, tzinfo=UTC)
        assert rt.engine.decide(serving_ws.customers[0], DecisionContext(at=given)).decided_at == (
            given
        )
    finally:
        rt.close()


def test_the_service_clock_catches_up_with_events_received_online(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    """A live service whose lake lags behind (ingest runs weekly) takes the newest event it
    receives as its time, never a time past the wall clock."""
    from serving.schemas import EventsRequest

    rt = Runtime(serving_settings(serving_ws, tmp_path, deadline_ms=10_000))
    try:
        assert rt.clock.on_data_time
        recent = datetime.now(UTC) - timedelta(hours=2)
        event = {"customer_id": serving_ws.customers[3], "event_type": "page_view"}
        reply = rt.events(
            EventsRequest.model_validate({"events": [{**event, "timestamp": recent.isoformat()}]})
        )
        assert reply.status == 200, reply.body
        assert recent <= rt.now() <= datetime.now(UTC)
        assert rt.engine.decide(serving_ws.customers[3]).decided_at >= recent
    finally:
        rt.close()
