"""A log with its own column names, loaded through the column mapping, goes through every
marketer and analyst command as ``make demo`` runs them: features, training, promotion, the
churn-risk list, journey analytics, monitoring, policy evaluation and the reports.

The log is the simulator's, exported to CSV the way another system would write it (its own
column names, text timestamps with an offset, amounts as text); nothing downstream may depend
on the simulator's column names.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from journeyml.cli import app

NOW = "2026-01-02T00:00:00"
RENAMED = {
    "customer_id": "user_id",
    "timestamp": "ts",
    "event_type": "event",
    "value": "amount",
    "channel": "medium",
}


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mapped")
    sim = root / "sim"
    run(
        "simulate", "--customers", "400", "--days", "365", "--seed", "3",
        "--out", str(sim), "--truth-cutoffs", "0",
    )  # fmt: skip
    export = root / "export" / "events.csv"
    export.parent.mkdir()
    con = duckdb.connect()
    columns = [
        r[0]
        for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{sim / 'events'}/**/*.parquet')"
        ).fetchall()
    ]
    select = ", ".join(
        f"strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S+00:00') AS {RENAMED[c]}"
        if c == "timestamp"
        else f'"{c}" AS {RENAMED.get(c, c)}'
        for c in columns
    )
    con.execute(
        f"COPY (SELECT {select} FROM read_parquet('{sim / 'events'}/**/*.parquet') ORDER BY ts) "
        f"TO '{export}' (HEADER)"
    )
    con.close()
    maps = [arg for src_dst in RENAMED.items() for arg in ("--map", f"{src_dst[1]}={src_dst[0]}")]
    run("events", "validate", str(export), *maps, "--now", NOW)
    run(
        "events", "ingest", str(export), *maps, "--customers", str(sim / "customers.parquet"),
        "--out", str(root / "lake"), "--now", NOW,
    )  # fmt: skip
    data = ["--data-dir", str(root)]
    run("features", "build", *data)
    run("features", "materialize", *data)
    run("train", "--model", "all", *data)
    run("promote", *data, "--to", "challenger", "--only-unset")
    return root


def test_the_mapped_log_keeps_the_simulated_events(workspace: Path) -> None:
    manifest = json.loads((workspace / "lake" / "manifest.json").read_text())
    assert manifest["batches"][0]["column_map"]["user_id"] == "customer_id"
    con = duckdb.connect()
    lake = con.execute(
        f"SELECT count(*), sum(value) FROM read_parquet('{workspace / 'lake'}/events/**/*.parquet')"
    ).fetchone()
    sim = con.execute(
        f"SELECT count(*), sum(value) FROM read_parquet('{workspace / 'sim'}/events/**/*.parquet')"
    ).fetchone()
    assert lake is not None and sim is not None
    assert lake[0] == sim[0] and lake[1] == pytest.approx(sim[1])


def test_churn_risk_list(workspace: Path) -> None:
    out = run(
        "lists", "churn-risk", "--data-dir", str(workspace), "--top", "100", "--rank-by", "risk"
    )
    assert "Churn-risk list: 100 customers" in out
    listed = pd.read_parquet(workspace / "lists" / "churn_risk.parquet")
    assert len(listed) == 100 and listed["churn_risk"].is_monotonic_decreasing
    assert listed["customer_id"].str.startswith("C").all()
    assert listed["reason_1"].notna().all()
    assert not listed["reason_1"].str.contains("(", regex=False).any()


def test_analytics_monitoring_policy_and_reports(workspace: Path) -> None:
    data = ["--data-dir", str(workspace)]
    run("analyze", *data)
    out = run("monitor", *data)
    assert "Score drift of churn v1" in out
    assert (workspace / "evaluation" / "monitoring" / "score_drift.csv").is_file()
    out = run("evaluate-policy", *data, "--sim-customers", "150", "--sim-days", "60")
    words = " ".join(out.split())  # rich wraps long lines
    assert "learned policy" in words and "of the oracle's incremental value" in words
    out = run("report", *data)
    reports = workspace / "reports"
    for kind in ("model", "journey", "policy"):
        page = (reports / f"{kind}.html").read_text()
        assert "<svg" in page, kind
    assert "funnel" in (reports / "journey.html").read_text().lower()
    assert "report" in out.lower()
