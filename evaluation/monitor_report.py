"""The monitoring part of the journey report: alerts in plain words, KPI charts, drift."""

from __future__ import annotations

import pandas as pd

from evaluation.html import Report, pyplot
from evaluation.monitor import KPI_LABELS, MonitorResult


def add_monitoring_sections(report: Report, result: MonitorResult) -> None:
    """Journey health: what broke and when, the step KPIs over time, and feature drift."""
    alerts, kpis = result.alerts, result.kpis
    report.section("Journey health")
    facts = result.facts
    report.text(
        f"Monitored {facts.get('kpis', 0)} KPIs over {facts.get('periods', 0)} periods of "
        f"{facts.get('period_days', 1)} day(s), from {str(facts.get('first_event', ''))[:10]} to "
        f"{str(facts.get('last_event', ''))[:10]}."
    )
    if alerts.empty:
        report.note("No step broke: every KPI stayed within its normal range.", "good")
    else:
        for message in alerts["message"]:
            report.note(str(message), "alert")
        shown = alerts[
            ["kpi", "step", "start", "end", "baseline", "current", "affected_customers"]
        ].copy()
        shown["end"] = shown["end"].fillna("ongoing")
        report.table(shown, caption="Alerts")
    steps = kpis[kpis["kpi"].isin(["step_conversion", "step_error_rate"])]
    alerted = set(zip(alerts["kpi"], alerts["step"], strict=True)) if not alerts.empty else set()
    others = kpis[[(k, s) in alerted for k, s in zip(kpis["kpi"], kpis["step"], strict=True)]]
    plotted = pd.concat([steps, others]).drop_duplicates(["period", "kpi", "step"])
    for key, frame in plotted.groupby(["kpi", "step"], sort=True):
        kpi, step = str(key[0]), str(key[1])
        report.figure(
            _kpi_figure(frame, kpi, step, alerts),
            caption=f"{step}: {KPI_LABELS[kpi]} per period (alert periods shaded)",
        )
    if result.drift is not None:
        drift = result.drift
        report.heading("Feature drift")
        moved = drift[drift["level"] != "ok"]
        report.text(
            f"Population stability (PSI) of each feature, the latest snapshot "
            f"({str(facts.get('drift_current', ''))[:10]}) against the snapshots up to "
            f"{str(facts.get('drift_reference_end', ''))[:10]}: "
            + (
                f"{len(moved)} of {len(drift)} features moved (PSI ≥ 0.1)."
                if len(moved)
                else "no feature moved (every PSI below 0.1)."
            )
        )
        report.figure(_drift_figure(drift.head(15)), caption="The 15 features that moved most")
        report.table(drift.head(20), caption="PSI per feature (highest first)")
    if result.score_drift is not None and len(result.score_drift):
        scores = result.score_drift
        report.heading("Score drift")
        moved = scores[scores["level"] != "ok"]
        report.text(
            "The champion models' scores of the same rows: "
            + (
                "; ".join(
                    f"{r.score} moved (PSI {r.psi:.2f}, mean {r.reference_mean:.3f} → "
                    f"{r.current_mean:.3f})"
                    for r in moved.itertuples()
                )
                + ". Check the features that moved and consider retraining."
                if len(moved)
                else "no score moved (every PSI below 0.1)."
            )
        )
        report.table(scores, caption="Score PSI and mean, reference against the latest snapshot")


def _kpi_figure(frame: pd.DataFrame, kpi: str, step: str, alerts: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.6))
    periods = pd.to_datetime(frame["period"])
    ax.plot(periods, frame["value"], lw=1.2, color="#2a5bd7")
    ax.set_ylabel(KPI_LABELS[kpi])
    ax.set_title(f"{step} — {KPI_LABELS[kpi]}", fontsize=10)
    if not alerts.empty:
        mine = alerts[(alerts["kpi"] == kpi) & (alerts["step"] == step)]
        for start, end in zip(mine["start"], mine["end"], strict=True):
            stop = pd.Timestamp(end) if pd.notna(end) else periods.max()
            ax.axvspan(
                pd.Timestamp(start), stop + pd.Timedelta(days=1), color="#d2423b", alpha=0.18
            )
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _drift_figure(drift: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(drift) + 1))
    colors = drift["level"].map({"ok": "#8a93a6", "warn": "#d99a1e", "alert": "#d2423b"})
    ax.barh(drift["feature"][::-1], drift["psi"][::-1], color=colors[::-1].tolist())
    ax.axvline(0.1, color="#d99a1e", ls=":", lw=1)
    ax.axvline(0.25, color="#d2423b", ls=":", lw=1)
    ax.set_xlabel("PSI")
    fig.tight_layout()
    return fig
