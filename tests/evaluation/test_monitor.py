"""Journey health monitoring on logs where the truth is known: simulated incidents must raise
an alert starting within 3 days of the truth, a stable log must raise none."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from evaluation.html import Report
from evaluation.monitor import (
    DetectionSettings,
    DriftSettings,
    MonitorSettings,
    Series,
    categorical_psi,
    detect_changes,
    drift_frames,
    feature_drift,
    load_monitor_settings,
    psi,
    run_monitor,
    score_drift,
)
from evaluation.monitor_report import add_monitoring_sections
from journeyml.cli import app
from journeyml.config import SIMULATOR_CONFIG_DIR, ConfigError
from journeyml.events.schema import NORMALISED_EVENT_SCHEMA
from tests.features.helpers import write_lake

START = date(2025, 1, 1)
SIMULATED = SIMULATOR_CONFIG_DIR / "monitoring.yaml"  # the simulator's steps and rates


def simulate_lake(root: Path, seed: int, incident: str | None) -> Path:
    args = ["simulate", "--customers", "1500", "--days", "150", "--seed", str(seed)]
    args += ["--out", str(root / "sim"), "--truth-cutoffs", "0"]
    if incident:
        args += ["--incident", incident]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["events", "ingest", str(root / "sim" / "events"), "--out", str(root / "lake")],
    )
    assert result.exit_code == 0, result.output
    return root / "lake"


@pytest.fixture(scope="module")
def payment_incident(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the payment step fails for 40 % of checkouts from day 90 (2025-04-01) for three weeks
    return simulate_lake(tmp_path_factory.mktemp("payment"), 3, "payment:90:21:0.4")


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_lake(tmp_path_factory.mktemp("stable"), 3, None)


def test_a_payment_incident_raises_an_alert_at_its_start(payment_incident: Path) -> None:
    result = run_monitor(payment_incident, load_monitor_settings(SIMULATED))
    payment = result.alerts[
        (result.alerts["step"] == "payment") & (result.alerts["kpi"] == "step_conversion")
    ]
    assert len(payment) == 1, result.alerts
    alert = payment.iloc[0]
    truth = START + timedelta(days=90)
    assert abs((alert["start"] - truth).days) <= 3
    assert alert["current"] < alert["baseline"] - 0.2
    assert alert["affected_customers"] > 50
    assert "payment step broke" in alert["message"]
    # the incident ends after three weeks: so does the alert
    assert alert["end"] is not None and alert["end"] <= truth + timedelta(days=28)


def test_a_checkout_incident_raises_an_alert_at_its_start(tmp_path: Path) -> None:
    lake = simulate_lake(tmp_path, 4, "checkout:100:14:0.6")
    alerts = run_monitor(lake, load_monitor_settings(SIMULATED)).alerts
    checkout = alerts[(alerts["step"] == "checkout") & (alerts["kpi"] == "step_conversion")]
    assert len(checkout) == 1, alerts
    assert abs((checkout.iloc[0]["start"] - (START + timedelta(days=100))).days) <= 3


def test_a_stable_log_raises_no_alert(stable: Path) -> None:
    result = run_monitor(stable, load_monitor_settings(SIMULATED))
    assert result.alerts.empty, result.alerts["message"].tolist()
    # and the KPIs were there to be watched
    assert {"step_conversion", "step_error_rate", "rate", "volume"} <= set(result.kpis["kpi"])


def _series(values: np.ndarray, n: np.ndarray, kind: str = "proportion") -> Series:
    periods = [START + timedelta(days=i) for i in range(len(values))]
    return Series("step_conversion", "s", kind, "down", periods, values, n)  # type: ignore[arg-type]


def test_cusum_false_alarms_are_rare_and_breaks_are_dated() -> None:
    d = DetectionSettings()
    false_alarms = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n = rng.integers(15, 40, 120).astype(float)
        ok = rng.binomial(n.astype(int), 0.8).astype(float)
        false_alarms += bool(detect_changes(_series(ok, n), d))
        broken = ok.copy()
        broken[70:85] = rng.binomial(n[70:85].astype(int), 0.5)
        changes = [c for c in detect_changes(_series(broken, n), d) if c.start.month >= 3]
        assert changes, f"seed {seed}: the break was missed"
        assert abs((changes[0].start - (START + timedelta(days=70))).days) <= 3
    assert false_alarms <= 1


def _loop_log(days: int, loops_from: int) -> pa.Table:
    """Steady browsing; from ``loops_from`` on, customers bounce between checkout and an error."""
    rows = []
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for day in range(days):
        for c in range(40):
            t = t0 + timedelta(days=day, hours=9, minutes=c)
            rows += [(f"C{c}", t, "page_view"), (f"C{c}", t + timedelta(minutes=1), "product_view")]
            if day >= loops_from and c < 12:
                for k in range(2):
                    base = t + timedelta(minutes=5 + 2 * k)
                    rows += [
                        (f"C{c}", base, "checkout_start"),
                        (f"C{c}", base + timedelta(seconds=30), "payment_failed"),
                    ]
    return pa.Table.from_pydict(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "customer_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "channel": ["web"] * len(rows),
            "value": [None] * len(rows),
            "session_id": [None] * len(rows),
            "properties": [None] * len(rows),
        },
        schema=NORMALISED_EVENT_SCHEMA,
    )


def test_a_loop_between_two_steps_raises_an_alert(tmp_path: Path) -> None:
    write_lake(tmp_path / "lake", _loop_log(60, loops_from=40))
    settings = MonitorSettings(steps=[], rates=[])
    alerts = run_monitor(tmp_path / "lake", settings).alerts
    loops = alerts[alerts["kpi"] == "loop"]
    assert set(loops["step"]) == {"checkout_start -> payment_failed"}, alerts
    assert abs((loops.iloc[0]["start"] - (START + timedelta(days=40))).days) <= 3
    assert loops.iloc[0]["affected_customers"] >= 12


def test_psi_known_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=50_000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-9)
    assert psi(x, rng.normal(size=50_000)) < 0.01
    # a one-sigma shift moves a population a lot
    assert psi(x, x + 1.0) > 0.25
    # hand-computed: two halves -> 80/20 (no 0.5 smoothing effect at these counts)
    ref = np.repeat([0.0, 1.0], 50_000)
    cur = np.repeat([0.0, 1.0], [80_000, 20_000])
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected, rel=1e-3)
    same = pd.Series(["a", "b", None] * 100)
    assert categorical_psi(same, same) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        psi(np.array([]), x)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text("steps:\n  - name: pay\n    from: [checkout_start]\n    sucess: [purchase]\n")
    with pytest.raises(ConfigError) as info:
        load_monitor_settings(path)
    assert "steps.0" in str(info.value) and "sucess" in str(info.value)


def test_too_short_or_empty_logs_get_clear_errors(tmp_path: Path) -> None:
    write_lake(tmp_path / "lake", _loop_log(5, loops_from=99))
    with pytest.raises(ValueError, match="complete period"):
        run_monitor(tmp_path / "lake", load_monitor_settings(SIMULATED))


def test_cli_and_report(payment_incident: Path, tmp_path: Path) -> None:
    data = payment_incident.parent
    runner = CliRunner()
    sim = ["--config-dir", str(SIMULATOR_CONFIG_DIR)]
    result = runner.invoke(app, [*sim, "monitor", "--data-dir", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "payment step broke" in result.output
    assert (tmp_path / "alerts.csv").exists() and (tmp_path / "kpis.parquet").exists()
    failing = runner.invoke(app, [*sim, "monitor", "--data-dir", str(data), "--fail-on-alert"])
    assert failing.exit_code == 3
    missing = runner.invoke(app, ["monitor", "--data-dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no event lake" in missing.output

    report = Report("Journey report")
    add_monitoring_sections(report, run_monitor(payment_incident, load_monitor_settings(SIMULATED)))
    html = report.render()
    assert report.figures >= 3 and "payment step broke" in html


def test_feature_drift_flags_the_feature_that_moved(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    for week in range(10):
        n = 2000
        moved = week == 9
        pd.DataFrame(
            {
                "customer_id": [f"C{i}" for i in range(n)],
                "event_timestamp": [t0 + timedelta(days=7 * week)] * n,
                "stable": rng.normal(size=n),
                "shifted": rng.normal(size=n) + (1.0 if moved else 0.0),
                "tier": rng.choice(["a", "b"], n, p=[0.8, 0.2] if moved else [0.5, 0.5]),
            }
        ).to_parquet(snaps / f"week{week}.parquet", index=False)
    frames = drift_frames(snaps, DriftSettings())
    assert len(frames.current) == 2000 and frames.current_time == t0 + timedelta(days=63)
    assert (frames.reference["event_timestamp"] <= t0 + timedelta(days=28)).all()
    drift = feature_drift(frames, DriftSettings()).set_index("feature")
    assert drift.loc["stable", "level"] == "ok" and drift.loc["stable", "psi"] < 0.05
    assert drift.loc["shifted", "level"] == "alert"
    assert drift.loc["tier", "psi"] == pytest.approx(
        (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5), abs=0.05
    )
    # a score reading the shifted feature drifts; one reading the stable feature does not
    scores = score_drift(
        frames,
        {
            "shifted score": lambda f: 1 / (1 + np.exp(-f["shifted"].to_numpy())),
            "stable score": lambda f: 1 / (1 + np.exp(-f["stable"].to_numpy())),
        },
        DriftSettings(),
    ).set_index("score")
    assert scores.loc["shifted score", "level"] == "alert"
    assert (
        scores.loc["shifted score", "current_mean"]
        > scores.loc["shifted score", "reference_mean"] + 0.1
    )
    assert scores.loc["stable score", "level"] == "ok"
    with pytest.raises(ValueError, match="reference is empty"):
        drift_frames(snaps, DriftSettings(reference_end_days=400))
