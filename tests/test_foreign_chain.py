"""The whole chain from ``journeyml init`` on a log the simulator did not make, with no
hand-edited config: a date-only purchase log (its own column names, no web events) through
ingest, features, training, promotion, the churn-risk list, journey analytics, monitoring and
the reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from journeyml.cli import app
from tests.foreign_logs import generate_purchase_log

pytestmark = pytest.mark.slow


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_purchase_log_from_init_to_reports(tmp_path: Path) -> None:
    log = generate_purchase_log(tmp_path / "log", n_customers=400, seed=12)
    folder = tmp_path / "cfg"
    run("init", str(log.events_csv), *log.map_args(), "--out", str(folder))
    config, data = ["--config-dir", str(folder)], ["--data-dir", str(tmp_path)]
    run(*config, "events", "ingest", str(log.events_csv), "--out", str(tmp_path / "lake"))
    run(*config, "features", "build", *data)
    for model in ("churn", "conversion"):
        run(*config, "train", "--model", model, *data)
    # the gate may rightly refuse a model no better than its baseline; the chain goes on
    run(*config, "promote", *data, "--to", "challenger", "--only-unset")
    out = run(*config, "lists", "churn-risk", *data, "--top", "50")
    assert "Churn-risk list: 50 customers" in " ".join(out.split())
    listed = pd.read_parquet(tmp_path / "lists" / "churn_risk.parquet")
    assert len(listed) == 50 and listed["churn_risk"].is_monotonic_decreasing
    reasons = " ".join(listed["reason_1"].astype(str))
    assert "churn risk" in reasons and "e+0" not in reasons
    # ages are read from the log's own end, not from the wall clock (the log ended in 2025)
    text = pd.concat([listed[f"reason_{i}"] for i in (1, 2, 3)]).astype(str)
    ages = text.str.extract(r"days since the last event[^:]*: ([0-9,.]+)")[0].dropna()
    assert len(ages) > 0
    assert ages.str.replace(",", "").astype(float).max() <= log.days
    run(*config, "analyze", *data)
    run(*config, "monitor", *data)
    for kind in ("model", "journey"):
        run(*config, "report", "--kind", kind, *data)
        assert "<svg" in (tmp_path / "reports" / f"{kind}.html").read_text()
