"""``journeyml simulate`` through the command line: outputs, summary and option errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from journeyml.cli import app


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["simulate", *args])
    return result.exit_code, result.output


def test_cli_writes_every_output_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    code, output = invoke(
        "--customers", "120", "--days", "70", "--seed", "1", "--out", str(out),
        "--truth-sample", "20", "--truth-rollouts", "4", "--truth-cutoffs", "1",
        "--format", "csv", "--incident", "payment:30:5:0.5", "--start", "2024-11-01",
    )  # fmt: skip
    assert code == 0, output
    for name in (
        "events.csv",
        "customers.csv",
        "world.json",
        "truth/decisions.parquet",
        "truth/personas.parquet",
        "truth/customers.parquet",
        "truth/effects.parquet",
    ):
        assert (out / name).is_file(), name
    for words in ("customers", "events", "conversion", "churn", "2024-11-01 to 2025-01-09"):
        assert words in output
    events = pd.read_csv(out / "events.csv")
    assert pd.to_datetime(events["timestamp"]).min() >= pd.Timestamp("2024-11-01", tz="UTC")
    truth = pd.read_parquet(out / "truth" / "customers.parquet")
    assert len(truth) == 20


def test_a_previous_simulation_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ("--days", "20", "--truth-cutoffs", "0", "--out", str(out))
    assert invoke("--customers", "60", *args)[0] == 0
    assert invoke("--customers", "30", "--format", "csv", *args)[0] == 0
    assert not (out / "events").exists()
    assert len(pd.read_csv(out / "customers.csv")) == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customers", "0"], "--customers must be positive"),
        (["--customers", "-3"], "--customers must be positive"),
        (["--days", "0"], "--days must be positive"),
        (["--incident", "payment:x:3:0.5"], "--incident 'payment:x:3:0.5'"),
        (["--incident", "login:1:3:0.5"], "unknown step 'login'"),
        (["--incident", "payment:50:3:0.5"], "after the last simulated day"),
        (["--format", "xml"], "--format must be parquet or csv"),
        (["--start", "2025-13-01"], "--start '2025-13-01' is not a date"),
        (["--truth-rollouts", "0"], "--truth-rollouts must be positive"),
        (["--truth-sample", "-1"], "--truth-sample"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = invoke("--out", str(tmp_path / "o"), "--days", "10", "--customers", "20", *args)
    assert code == 2
    assert message in " ".join(output.split())


def test_bad_world_key_is_named(tmp_path: Path) -> None:
    world = tmp_path / "world.yaml"
    world.write_text("policy:\n  min_propensty: 0.1\n")
    code, output = invoke("--world", str(world), "--out", str(tmp_path / "o"), "--days", "5")
    assert code == 2
    assert "--world" in output
    assert "policy.min_propensty: unknown key" in " ".join(output.split())


def test_missing_world_file_is_named(tmp_path: Path) -> None:
    code, output = invoke("--world", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "--world" in output and "not found" in output


def test_an_out_folder_with_other_files_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    code, output = invoke("--out", str(tmp_path), "--days", "5", "--customers", "5")
    assert code == 2
    assert "--out" in output
    assert (tmp_path / "notes.txt").read_text() == "keep me"
