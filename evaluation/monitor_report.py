"""The monitoring part of the journey report: incidents in plain words, KPI charts, drift."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from evaluation.html import Report, legend, pyplot
from evaluation.monitor import ALL, KPI_LABELS, MonitorResult

ALERT_TABLE = (
    "kpi", "step", "segment", "start", "end", "baseline", "current", "affected_customers",
)  # fmt: skip


def _segment_column(kpis: pd.DataFrame) -> pd.Series:
    return kpis["segment"] if "segment" in kpis.columns else pd.Series(ALL, index=kpis.index)


def add_monitoring_sections(report: Report, result: MonitorResult) -> None:
    """Journey health: the incidents ranked by severity (what broke, where, since when, for
    how many customers and how much value), the step KPIs over time, and feature drift."""
    alerts, kpis, incidents = result.alerts, result.kpis, result.incidents
    report.section("Journey health")
    facts = result.facts
    segments = facts.get("segments") or {}
    split = (
        "; KPIs are also split by "
        + ", ".join(f"{k} ({len(v)} values)" for k, v in segments.items() if v)
        if isinstance(segments, dict) and any(segments.values())
        else ""
    )
    report.text(
        f"Monitored {facts.get('kpis', 0)} KPIs over {facts.get('periods', 0)} periods of "
        f"{facts.get('period_days', 1)} day(s), from {str(facts.get('first_event', ''))[:10]} to "
        f"{str(facts.get('last_event', ''))[:10]}{split}."
    )
    webhook = facts.get("webhook")
    if isinstance(webhook, dict) and not webhook.get("delivered"):
        report.note(
            f"The incidents could not be posted to {webhook.get('target')}: "
            f"{webhook.get('error')}.",
            "warning",
        )
    if incidents is None or incidents.empty:
        if alerts.empty:
            report.note("No incident: every KPI stayed within its normal range.", "good")
    else:
        for inc in incidents.to_dict(orient="records"):
            report.note(_incident_text(inc, bool(facts.get("has_values", True))), "alert")
        shown = incidents[
            ["rank", "start", "end", "status", "segments", "affected_customers", "value_at_stake"]
        ].copy()
        shown["end"] = shown["end"].where(shown["end"].notna(), "ongoing")
        shown["segments"] = shown["segments"].map(lambda v: ", ".join(v) if len(v) else "")
        report.table(shown, caption="Incidents, most severe first")
    if not alerts.empty:
        columns = [
            c
            for c in (
                "kpi",
                "step",
                "segment",
                "start",
                "end",
                "baseline",
                "current",
                "affected_customers",
            )
            if c in alerts.columns
        ]
        shown = alerts[columns].copy()
        shown["end"] = shown["end"].where(shown["end"].notna(), "ongoing")
        report.table(shown, caption="The KPI changes behind the incidents")
    segment = _segment_column(kpis)
    steps = kpis[kpis["kpi"].isin(["step_conversion", "step_error_rate"]) & (segment == ALL)]
    alert_segment = alerts["segment"] if "segment" in alerts.columns else ALL
    alerted = (
        set(
            zip(
                alerts["kpi"],
                alerts["step"],
                pd.Series(alert_segment, index=alerts.index),
                strict=True,
            )
        )
        if not alerts.empty
        else set()
    )
    keys = list(zip(kpis["kpi"], kpis["step"], segment, strict=True))
    others = kpis[[k in alerted for k in keys]]
    plotted = pd.concat([steps, others]).assign(segment=lambda f: _segment_column(f))
    plotted = plotted.drop_duplicates(["period", "kpi", "step", "segment"])
    for key, frame in list(plotted.groupby(["kpi", "step", "segment"], sort=True))[:24]:
        kpi, step, seg = str(key[0]), str(key[1]), str(key[2])
        where = "" if seg == ALL else f" ({seg})"
        report.figure(
            _kpi_figure(frame, kpi, step, seg, alerts),
            caption=f"{step}{where}: {KPI_LABELS.get(kpi, kpi)} per period (alerts shaded)",
        )
    if result.drift is not None:
        _drift_sections(report, result)


def _incident_text(inc: Mapping[Any, Any], has_values: bool) -> str:
    end = inc.get("end")
    when = f"from {inc.get('start')} to {end}" if end else f"since {inc.get('start')} (ongoing)"
    value = inc.get("value_at_stake")
    stake = (
        f"value at stake {value:,.0f} (what these customers spent before it)"
        if has_values and isinstance(value, int | float) and value == value
        else "the log has no values: ranked by customers"
    )
    details = inc.get("details") or []
    more = f" Also: {' '.join(details[1:4])}" if len(details) > 1 else ""
    return (
        f"#{inc.get('rank')} {when}: {inc.get('headline')} "
        f"{inc.get('affected_customers', 0):,} customers in all; {stake}.{more}"
    )


def _drift_sections(report: Report, result: MonitorResult) -> None:
    drift = result.drift
    assert drift is not None
    facts = result.facts
    report.heading("Feature drift")
    judged = drift[drift["level"] != "calendar"]
    moved = judged[judged["level"] != "ok"]
    alerting = judged[judged["level"] == "alert"]
    calendar = drift[drift["level"] == "calendar"]
    report.text(
        f"Population stability (PSI) of each feature, the latest snapshot "
        f"({str(facts.get('drift_current', ''))[:10]}) against the snapshots up to "
        f"{str(facts.get('drift_reference_end', ''))[:10]}: "
        + (
            f"{len(moved)} of {len(judged)} features moved (PSI ≥ 0.1), {len(alerting)} of "
            "them enough to alert."
            if len(moved)
            else f"no feature moved (every PSI of {len(judged)} features below 0.1)."
        )
        + (
            f" {len(calendar)} calendar features (tenure, days since an event) grow with the "
            "calendar in any world and are shown but not judged."
            if len(calendar)
            else ""
        )
    )
    if len(alerting) and "models" in alerting.columns:
        affected = sorted(
            {m for v in alerting["models"].fillna("") for m in str(v).split(", ") if m}
        )
        scores_moved = (
            sorted(
                {m for v in alerting["scores_moved"].fillna("") for m in str(v).split(", ") if m}
            )
            if "scores_moved" in alerting.columns
            else []
        )
        performance_moved = (
            sorted(
                {
                    m
                    for v in alerting["performance_moved"].fillna("")
                    for m in str(v).split(", ")
                    if m
                }
            )
            if "performance_moved" in alerting.columns
            else []
        )
        if affected:
            report.note(
                "Drifting features are read by the "
                + ", ".join(affected)
                + " model(s); "
                + (
                    "the scores of " + ", ".join(scores_moved) + " moved too"
                    if scores_moved
                    else "their scores did not move (see score drift)"
                )
                + (
                    "; the performance of " + ", ".join(performance_moved) + " fell where labels "
                    "have matured: retrain."
                    if performance_moved
                    else (
                        ": consider retraining." if scores_moved else ": no retraining needed yet."
                    )
                ),
                "warning",
            )
        else:
            report.note("No champion model reads the drifting features.", "good")
    report.figure(_drift_figure(judged.head(15)), caption="The 15 judged features that moved most")
    report.table(drift.head(20), caption="PSI per feature (highest first)")
    if result.score_drift is not None and len(result.score_drift):
        scores = result.score_drift
        report.heading("Score drift")
        moved_scores = scores[scores["level"] != "ok"]
        report.text(
            "The champion models' scores of the same rows: "
            + (
                "; ".join(
                    f"{r.score} moved (PSI {r.psi:.2f}, mean {r.reference_mean:.3f} → "
                    f"{r.current_mean:.3f})"
                    for r in moved_scores.itertuples()
                )
                + ". Check the features that moved and consider retraining."
                if len(moved_scores)
                else "no score moved (every PSI below 0.1)."
            )
        )
        report.table(scores, caption="Score PSI and mean, reference against the latest snapshot")
    if result.performance is not None and len(result.performance):
        perf = result.performance
        report.heading("Model performance where labels have matured")
        judged_perf = perf[perf["level"].isin(["ok", "warn", "alert"])]
        report.text(
            "Each champion model's AUC on its own test period against the latest snapshots "
            "whose label horizon has passed: "
            + (
                "; ".join(
                    f"{r.score} {r.reference_auc:.3f} → {r.recent_auc:.3f} ({r.level})"
                    for r in judged_perf.itertuples()
                )
                if len(judged_perf)
                else "no model has matured labels after its test period yet"
            )
            + "."
        )
        report.table(perf, caption="AUC on the test period and on the latest matured snapshots")


def _kpi_figure(frame: pd.DataFrame, kpi: str, step: str, seg: str, alerts: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.6))
    periods = pd.to_datetime(frame["period"])
    ax.plot(periods, frame["value"], lw=1.2, color="#2a5bd7")
    ax.set_ylabel(KPI_LABELS.get(kpi, kpi))
    where = "" if seg == ALL else f" ({seg})"
    ax.set_title(f"{step}{where} — {KPI_LABELS.get(kpi, kpi)}", fontsize=10)
    if not alerts.empty:
        mine = alerts[(alerts["kpi"] == kpi) & (alerts["step"] == step)]
        if "segment" in mine.columns:
            mine = mine[mine["segment"] == seg]
        for start, end in zip(mine["start"], mine["end"], strict=True):
            stop = pd.Timestamp(end) if pd.notna(end) else periods.max()
            ax.axvspan(
                pd.Timestamp(start), stop + pd.Timedelta(days=1), color="#d2423b", alpha=0.18
            )
    legend(
        ax,
        [(KPI_LABELS.get(kpi, kpi), "#2a5bd7", "line"), ("alert", "#d2423b", "pale")],
        loc="best",
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _drift_figure(drift: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(drift) + 1))
    colors = drift["level"].map(
        {"ok": "#8a93a6", "warn": "#d99a1e", "alert": "#d2423b", "calendar": "#c0c4cc"}
    )
    ax.barh(drift["feature"][::-1], drift["psi"][::-1], color=colors[::-1].tolist())
    ax.axvline(0.1, color="#d99a1e", ls=":", lw=1)
    ax.axvline(0.25, color="#d2423b", ls=":", lw=1)
    ax.set_xlabel("PSI")
    legend(
        ax,
        [
            ("stable (PSI < 0.1)", "#8a93a6", "bar"),
            ("warning (0.1 to 0.25)", "#d99a1e", "bar"),
            ("alert (0.25 and above)", "#d2423b", "bar"),
            ("calendar feature (moves by design)", "#c0c4cc", "bar"),
        ],
        loc="lower right",
    )
    fig.tight_layout()
    return fig
