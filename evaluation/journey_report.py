"""The journey analytics part of the journey report: funnel, transitions and paths, time to
convert, cohort retention, moments that matter and personas, each in plain words first."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evaluation.html import Report, colorbar, legend, pyplot
from evaluation.journey import ALL, JourneyAnalytics

_COLORS = ["#2a5bd7", "#2e9d5b", "#d99a1e", "#d2423b", "#7b4fc9", "#1aa3a3", "#8a93a6", "#c2549d"]


def add_journey_sections(report: Report, result: JourneyAnalytics) -> None:
    """Adds the journey analytics sections to ``report``."""
    names = _persona_names(result.personas)
    _overview(report, result)
    _funnel(report, result, names)
    _transitions(report, result)
    _time_to_convert(report, result, names)
    _retention(report, result, names)
    _moments(report, result, names)
    _personas(report, result)


def _persona_names(personas: pd.DataFrame) -> dict[str, str]:
    return {
        str(p): f"{p}: {d}"
        for p, d in zip(personas["persona"], personas["description"], strict=True)
    }


def _overall(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["group_kind"] == ALL]


def _label(kind: str, group: str, names: dict[str, str]) -> str:
    if kind == "persona":
        return names.get(group, group)
    if kind == "channel":
        return f"first touch: {group}"
    return "all customers"


def _pct(x: Any) -> str:
    return "–" if x is None or not np.isfinite(float(x)) else f"{float(x):.0%}"


def _days(x: Any) -> str:
    return "not reached" if x is None or not np.isfinite(float(x)) else f"{float(x):.0f} days"


# -- overview -----------------------------------------------------------------------------------


def _overview(report: Report, result: JourneyAnalytics) -> None:
    f = result.facts
    report.section("Journey analytics")
    ttc = _overall(result.time_to_convert)
    row = ttc.iloc[0] if len(ttc) else None
    significant = _overall(result.moments)
    significant = significant[significant["significant"].astype(bool)]
    report.kpis(
        [
            ("customers", f"{int(f.get('customers', 0)):,}"),
            ("events", f"{int(f.get('events', 0)):,}"),
            ("converted within 90 days", _pct(row["converted_by_90d"]) if row is not None else "–"),
            ("median time to convert", _days(row["median_days"]) if row is not None else "–"),
            ("personas", str(f.get("persona_k", "–"))),
            ("moments that matter", f"{len(significant):,}"),
        ]
    )
    report.text(
        f"Journeys of {int(f.get('customers', 0)):,} customers from "
        f"{str(f.get('first_event', ''))[:10]} to {str(f.get('last_event', ''))[:10]}. Every "
        "figure below is shown for all customers and broken down by persona (segments found "
        "from journey behaviour) and by first-touch channel (the channel of a customer's first "
        "event, known from day one). Marketing actions are not customer behaviour and are left "
        "out of the journeys."
    )


# -- funnel -------------------------------------------------------------------------------------


def _funnel(report: Report, result: JourneyAnalytics, names: dict[str, str]) -> None:
    funnel = result.funnel
    overall = _overall(funnel).sort_values("stage_idx")
    report.section("Funnel")
    if overall.empty or not overall["customers"].iloc[0]:
        report.note("No customer event maps to a journey stage: there is no funnel.", "warning")
        return
    steps = overall.dropna(subset=["drop_off"])
    worst = steps.sort_values("drop_off", ascending=False).iloc[0] if len(steps) else None
    stages = overall["stage"].tolist()
    text = (
        f"Of {int(overall['customers'].iloc[0]):,} customers in the journey, "
        f"{_pct(overall['share_of_first'].iloc[-1])} reach {stages[-1]}. A customer counts as "
        "having reached every stage up to the furthest one their events show."
    )
    if worst is not None:
        nxt = stages[int(worst["stage_idx"]) + 1]
        text += (
            f" The largest drop-off is from {worst['stage']} to {nxt}: "
            f"{_pct(worst['drop_off'])} of those who reach {worst['stage']} go no further."
        )
    report.text(text)
    report.figure(_funnel_figure(funnel, names), caption="Share of customers reaching each stage")
    shown = overall[["stage", "customers", "share_of_first", "step_conversion", "drop_off"]]
    report.table(shown, caption="Funnel, all customers (step conversion to the next stage)")
    wide = funnel[funnel["group_kind"] != ALL].copy()
    wide["group"] = [
        _label(k, g, names) for k, g in zip(wide["group_kind"], wide["group"], strict=True)
    ]
    pivot = wide.pivot_table(
        index="group", columns="stage", values="step_conversion", sort=False
    ).reindex(columns=stages[:-1])
    pivot.insert(0, "customers", wide[wide["stage_idx"] == 0].set_index("group")["customers"])
    report.table(
        pivot.reset_index(), caption="Step conversion to the next stage, by persona and channel"
    )


def _funnel_figure(funnel: pd.DataFrame, names: dict[str, str]) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, kind in zip(axes, ("persona", "channel"), strict=True):
        overall = _overall(funnel).sort_values("stage_idx")
        ax.plot(
            overall["stage"],
            overall["share_of_first"],
            color="#1d2330",
            lw=2.5,
            label="all customers",
        )
        part = funnel[funnel["group_kind"] == kind]
        for i, (group, g) in enumerate(part.groupby("group", sort=True)):
            g = g.sort_values("stage_idx")
            ax.plot(
                g["stage"],
                g["share_of_first"],
                color=_COLORS[i % len(_COLORS)],
                lw=1.3,
                marker="o",
                ms=3,
                label=str(group) if kind == "persona" else f"{group}",
            )
        ax.set_title(f"by {kind}", fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("share of customers reaching")
    fig.tight_layout()
    return fig


# -- transitions and paths ----------------------------------------------------------------------


def _transitions(report: Report, result: JourneyAnalytics) -> None:
    report.section("Transitions and paths")
    stages = list(result.facts.get("stages", []))
    st = _overall(result.stage_transitions)
    paths = _overall(result.paths)
    if st.empty and paths.empty:
        report.note("No customer changed stage: there are no transitions to show.", "warning")
        return
    if len(paths):
        top = paths.iloc[0]
        report.text(
            f"The most common journey start is “{top['path']}” ({_pct(top['share'])} of "
            "customers). A path is a customer's sequence of stages with repeats collapsed; "
            "the flow diagram shows how the most common paths split stage after stage."
        )
        report.figure(
            _sankey_figure(paths, stages),
            caption=f"Journey paths: the first {int(paths['steps'].max())} stages of the "
            f"{len(paths)} most common paths",
        )
        report.table(paths[["path", "customers", "share"]], caption="Most common paths")
    if len(st):
        regress = st[
            st["from_stage"].map(lambda s: stages.index(s) if s in stages else -1)
            > st["to_stage"].map(lambda s: stages.index(s) if s in stages else -1)
        ]
        back = regress["count"].sum() / st["count"].sum()
        report.text(
            f"{_pct(back)} of all stage changes go back to an earlier stage (a regression). "
            "Each row of the matrix gives where customers go next when they leave a stage."
        )
        report.figure(
            _matrix_figure(st, "from_stage", "to_stage", stages),
            caption="Stage → next stage (row probabilities)",
        )
    et = result.event_transitions
    if len(et):
        order = et.groupby("from_event")["count"].sum().sort_values(ascending=False).index.tolist()
        report.figure(
            _matrix_figure(et, "from_event", "to_event", order),
            caption="Event → next event, most frequent event types (row probabilities)",
        )


def _matrix_figure(frame: pd.DataFrame, row: str, col: str, order: list[str]) -> Any:
    plt = pyplot()
    matrix = frame.pivot_table(index=row, columns=col, values="probability", fill_value=0.0)
    rows = [o for o in order if o in matrix.index] + [r for r in matrix.index if r not in order]
    cols = [o for o in order if o in matrix.columns]
    cols += [c for c in matrix.columns if c not in cols]
    matrix = matrix.reindex(index=rows, columns=cols, fill_value=0.0)
    size = 0.55 * max(len(rows), len(cols)) + 2
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(matrix.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("next")
    _annotate(ax, matrix.to_numpy(float), "{:.2f}", dark_above=0.5, smallest=0.01)
    colorbar(fig, im, ax, "probability of the next step")
    fig.tight_layout()
    return fig


def _sankey_figure(paths: pd.DataFrame, stages: list[str]) -> Any:
    """A layered flow diagram: one column per step, bands as wide as the customers they carry."""
    from matplotlib.patches import PathPatch, Rectangle
    from matplotlib.path import Path as MplPath

    plt = pyplot()
    seqs = [
        (str(p).split(" → "), int(n))
        for p, n in zip(paths["path"], paths["customers"], strict=True)
    ]
    steps = max(len(s) for s, _ in seqs)
    order = {s: i for i, s in enumerate(stages)}
    total = float(sum(n for _, n in seqs))
    node: dict[tuple[int, str], float] = {}
    flow: dict[tuple[int, str, str], float] = {}
    for seq, n in seqs:
        for j, s in enumerate(seq):
            node[(j, s)] = node.get((j, s), 0.0) + n
            if j + 1 < len(seq):
                key = (j, s, seq[j + 1])
                flow[key] = flow.get(key, 0.0) + n
    gap, width, scale = 0.03, 0.12, 0.85 / total
    pos: dict[tuple[int, str], float] = {}
    for j in range(steps):
        y = 0.0
        for s in sorted({s for (k, s) in node if k == j}, key=lambda s: order.get(s, 99)):
            pos[(j, s)] = y
            y += node[(j, s)] * scale + gap
    fig, ax = plt.subplots(figsize=(10, 4.6))
    colour = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(stages)}
    out_used: dict[tuple[int, str], float] = {}
    in_used: dict[tuple[int, str], float] = {}
    for (j, a, b), carried in sorted(
        flow.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), order.get(kv[0][2], 99))
    ):
        h = carried * scale
        y0 = pos[(j, a)] + out_used.get((j, a), 0.0)
        y1 = pos[(j + 1, b)] + in_used.get((j + 1, b), 0.0)
        out_used[(j, a)] = out_used.get((j, a), 0.0) + h
        in_used[(j + 1, b)] = in_used.get((j + 1, b), 0.0) + h
        x0, x1 = j + width, j + 1
        xm = (x0 + x1) / 2
        verts = [
            (x0, y0),
            (xm, y0),
            (xm, y1),
            (x1, y1),
            (x1, y1 + h),
            (xm, y1 + h),
            (xm, y0 + h),
            (x0, y0 + h),
            (x0, y0),
        ]
        codes = [
            MplPath.MOVETO,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.LINETO,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.CURVE4,
            MplPath.CLOSEPOLY,
        ]
        ax.add_patch(
            PathPatch(MplPath(verts, codes), fc=colour.get(a, "#8a93a6"), alpha=0.35, lw=0)
        )
    for (j, s), size in node.items():
        h = size * scale
        ax.add_patch(Rectangle((j, pos[(j, s)]), width, h, fc=colour.get(s, "#8a93a6"), lw=0))
        if h > 0.025:
            ax.text(
                j + width + 0.02,
                pos[(j, s)] + h / 2,
                f"{s} ({size / total:.0%})",
                va="center",
                fontsize=7,
            )
    ax.set_xlim(-0.1, steps - 1 + width + 0.6)
    ax.set_ylim(-0.02, max(p + node[k] * scale for k, p in pos.items()) + 0.02)
    ax.invert_yaxis()
    ax.set_xticks([j + width / 2 for j in range(steps)], [f"step {j + 1}" for j in range(steps)])
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    shown = [s for s in stages if any(k == s for _, k in node)]
    legend(
        ax,
        [(s, colour[s], "bar") for s in shown]
        + [("customers moving on (band width)", "#8a93a6", "pale")],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=len(shown) + 1,
    )
    fig.tight_layout()
    return fig


# -- time to convert ----------------------------------------------------------------------------


def _time_to_convert(report: Report, result: JourneyAnalytics, names: dict[str, str]) -> None:
    report.section("Time to convert")
    ttc = result.time_to_convert
    overall = _overall(ttc)
    if overall.empty:
        report.note("No customer to measure.", "warning")
        return
    row = overall.iloc[0]
    report.text(
        f"Half of the customers convert within {_days(row['median_days'])} of their first "
        f"event; {_pct(row['converted_by_30d'])} within 30 days and "
        f"{_pct(row['converted_by_90d'])} within 90. {int(row['censored']):,} customers had "
        "not converted when the log ends: they count as not converted for as long as they were "
        "observed (Kaplan–Meier), rather than being dropped or counted as never converting."
    )
    report.figure(
        _km_figure(result.conversion_curve, names),
        caption="Share converted by days since first event (Kaplan–Meier)",
    )
    shown = ttc.copy()
    shown["group"] = [
        _label(k, g, names) for k, g in zip(shown["group_kind"], shown["group"], strict=True)
    ]
    report.table(
        shown[
            [
                "group",
                "customers",
                "converted",
                "censored",
                "p25_days",
                "median_days",
                "p75_days",
                "converted_by_7d",
                "converted_by_30d",
                "converted_by_90d",
            ]
        ],
        caption="Time to convert by persona and channel (days; – where not reached)",
        digits=2,
    )


def _km_figure(curve: pd.DataFrame, names: dict[str, str]) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, kind in zip(axes, ("persona", "channel"), strict=True):
        overall = _overall(curve)
        ax.step(
            overall["day"],
            overall["converted_share"],
            where="post",
            color="#1d2330",
            lw=2.2,
            label="all customers",
        )
        for i, (group, g) in enumerate(curve[curve["group_kind"] == kind].groupby("group")):
            ax.step(
                g["day"],
                g["converted_share"],
                where="post",
                lw=1.2,
                color=_COLORS[i % len(_COLORS)],
                label=str(group),
            )
        ax.set_title(f"by {kind}", fontsize=10)
        ax.set_xlabel("days since first event")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("share converted")
    fig.tight_layout()
    return fig


# -- cohort retention ---------------------------------------------------------------------------


def _retention(report: Report, result: JourneyAnalytics, names: dict[str, str]) -> None:
    report.section("Cohort retention")
    cohorts, retention = result.cohorts, result.retention
    if cohorts.empty:
        report.note("The log covers no complete month: no cohort to follow.", "warning")
        return
    overall = _overall(retention).set_index("period")
    text = "Customers are grouped by the month of their first activity (their cohort). "
    if 1 in overall.index:
        text += f"{_pct(overall.loc[1, 'retention'])} are active again the month after"
        last = int(overall.index.max())
        if last > 1:
            text += f", {_pct(overall.loc[last, 'retention'])} {last} months after"
        text += ". "
    text += (
        "The first cohort also holds every customer already active when the log starts, so it "
        "is larger and more loyal than a cohort of new customers."
    )
    report.text(text)
    report.figure(_cohort_figure(cohorts), caption="Share of each cohort active k months later")
    report.figure(
        _retention_figure(retention, names),
        caption="Retention by months since first activity, pooled over cohorts",
    )
    shown = retention[retention["period"] > 0].copy()
    shown["group"] = [
        _label(k, g, names) for k, g in zip(shown["group_kind"], shown["group"], strict=True)
    ]
    wide = shown.pivot_table(index="group", columns="period", values="retention", sort=False)
    wide.columns = [f"month {c}" for c in wide.columns]
    report.table(wide.reset_index(), caption="Retention by persona and channel")


def _cohort_figure(cohorts: pd.DataFrame) -> Any:
    plt = pyplot()
    matrix = cohorts.pivot_table(index="cohort", columns="period", values="retention")
    fig, ax = plt.subplots(
        figsize=(min(11, 1.2 + 0.6 * matrix.shape[1]) + 1.5, 0.35 * len(matrix) + 1.4)
    )
    im = ax.imshow(matrix.to_numpy(), cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(matrix)), [str(c)[:7] for c in matrix.index], fontsize=8)
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], fontsize=8)
    ax.set_xlabel("months since first activity")
    _annotate(ax, matrix.to_numpy(float), "{:.0%}", dark_above=0.6, smallest=-np.inf)
    colorbar(fig, im, ax, "share of the cohort active")
    fig.tight_layout()
    return fig


def _retention_figure(retention: pd.DataFrame, names: dict[str, str]) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
    for ax, kind in zip(axes, ("persona", "channel"), strict=True):
        overall = _overall(retention)
        ax.plot(
            overall["period"],
            overall["retention"],
            color="#1d2330",
            lw=2.2,
            marker="o",
            ms=3,
            label="all customers",
        )
        for i, (group, g) in enumerate(retention[retention["group_kind"] == kind].groupby("group")):
            ax.plot(
                g["period"],
                g["retention"],
                color=_COLORS[i % len(_COLORS)],
                lw=1.2,
                marker="o",
                ms=2,
                label=str(group),
            )
        ax.set_title(f"by {kind}", fontsize=10)
        ax.set_xlabel("months since first activity")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("share active")
    fig.tight_layout()
    return fig


# -- moments that matter ------------------------------------------------------------------------


def _moment_sentence(row: Any) -> str:
    verb = "raises" if row["adjusted_difference"] > 0 else "lowers"
    size = abs(float(row["adjusted_difference"]))
    return (
        f"{row['touchpoint']} ({row['kind']}): {int(row['exposed']):,} customers had it; it goes "
        f"with {verb} {row['outcome']} by {size * 100:.1f} points after adjusting for activity "
        f"(95 % interval {row['low'] * 100:+.1f} to {row['high'] * 100:+.1f}); "
        f"value at stake {float(row['value_at_stake']):,.0f}."
    )


def _moments(report: Report, result: JourneyAnalytics, names: dict[str, str]) -> None:
    f = result.facts
    report.section("Moments that matter")
    report.text(
        f"Which touchpoints and stage moves go with later churn or conversion? For the "
        f"{int(f.get('moments_population', 0)):,} customers active on "
        f"{str(f.get('moments_cutoff', ''))[:10]}, touchpoints are read from "
        f"{str(f.get('moments_window_start', ''))[:10]} up to that day and outcomes only after "
        "it, so no outcome leaks into what it is compared with. Effects are risk differences "
        "(the outcome rate of customers who had the touchpoint minus that of those who did "
        "not), adjusted for how active customers were, with 95 % intervals. They are ranked as "
        "opportunities by value at stake: customers affected × effect × value (a conversion's "
        "mean value; for churn, a year of an average customer's revenue)."
    )
    moments = _overall(result.moments)
    if moments.empty:
        report.note("Too few customers to score any touchpoint.", "warning")
        return
    top = moments[moments["significant"].astype(bool)].head(5)
    if top.empty:
        report.note("No touchpoint differs clearly (every interval includes zero).", "info")
    else:
        report.bullets([_moment_sentence(r) for _, r in top.iterrows()])
    report.note(
        "These are associations in the log, not proven effects: use them to decide where to "
        "look and what to test first. Marketing actions are left out (the policy targets them; "
        "see the policy report for their effect).",
        "info",
    )
    report.figure(
        _moments_figure(moments.head(12)),
        caption="Top moments by value at stake (interval of the effect on the right)",
    )
    cols = [
        "rank",
        "touchpoint",
        "kind",
        "outcome",
        "direction",
        "exposed",
        "exposed_rate",
        "unexposed_rate",
        "adjusted_difference",
        "low",
        "high",
        "value_at_stake",
    ]
    report.table(moments[cols], caption="Moments that matter, ranked", max_rows=30)
    by_group = result.moments[
        (result.moments["group_kind"] != ALL) & result.moments["significant"].astype(bool)
    ]
    if len(by_group):
        shown = (
            by_group.sort_values("value_at_stake", ascending=False)
            .groupby(["group_kind", "group"], sort=True)
            .head(3)
            .copy()
        )
        shown["group"] = [
            _label(k, g, names) for k, g in zip(shown["group_kind"], shown["group"], strict=True)
        ]
        report.table(
            shown[
                [
                    "group",
                    "touchpoint",
                    "outcome",
                    "direction",
                    "exposed",
                    "adjusted_difference",
                    "value_at_stake",
                ]
            ],
            caption="The top moments within each persona and channel",
        )


def _moments_figure(moments: pd.DataFrame) -> Any:
    plt = pyplot()
    shown = moments.iloc[::-1]
    labels = [f"{t} [{o}]" for t, o in zip(shown["touchpoint"], shown["outcome"], strict=True)]
    harmful = ((shown["outcome"] == "churn") & (shown["adjusted_difference"] > 0)) | (
        (shown["outcome"] == "conversion") & (shown["adjusted_difference"] < 0)
    )
    colors = np.where(harmful, "#d2423b", "#2e9d5b")
    fig, (ax, bx) = plt.subplots(
        1,
        2,
        figsize=(11, 0.35 * len(shown) + 1.4),
        sharey=True,
        gridspec_kw={"width_ratios": [3, 2]},
    )
    y = np.arange(len(shown))
    ax.barh(y, shown["value_at_stake"], color=colors)
    for i, clear in enumerate(shown["significant"].astype(bool)):
        if not clear:  # the interval includes zero: drawn pale
            ax.patches[i].set_alpha(0.35)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("value at stake")
    legend(
        ax,
        [
            ("raises churn or lowers conversion", "#d2423b", "bar"),
            ("lowers churn or raises conversion", "#2e9d5b", "bar"),
            ("pale: the interval includes no effect", "#8a93a6", "pale"),
        ],
        loc="lower right",
    )
    bx.errorbar(
        shown["adjusted_difference"] * 100,
        y,
        xerr=[
            (shown["adjusted_difference"] - shown["low"]) * 100,
            (shown["high"] - shown["adjusted_difference"]) * 100,
        ],
        fmt="o",
        color="#1d2330",
        ms=3,
        lw=1,
    )
    bx.axvline(0, color="#8a93a6", lw=1, ls=":")
    bx.set_xlabel("adjusted effect (points)")
    legend(
        bx,
        [("effect with its 95 % interval", "#1d2330", "point"), ("no effect", "#8a93a6", "dotted")],
        loc="lower right",
    )
    fig.tight_layout()
    return fig


# -- personas -----------------------------------------------------------------------------------


def _personas(report: Report, result: JourneyAnalytics) -> None:
    personas = result.personas
    f = result.facts
    report.section("Personas")
    sil = f.get("persona_silhouette", {}) or {}
    report.text(
        f"{len(personas)} personas were found by clustering customers on their journey "
        "behaviour (visits, purchases, order value, complaints, support contacts, marketing "
        "responses, recency, time in the log and channel use), with the number chosen by "
        "silhouette"
        + (f" (tried {', '.join(sorted(sil, key=int))})" if sil else "")
        + ". Each is described by what sets it apart from the average customer."
    )
    report.bullets(
        [
            f"{r['persona']}: {r['description']} — {int(r['customers']):,} customers "
            f"({r['share']:.0%}), {r['converted_share']:.0%} converted, "
            f"{r['churned_share']:.0%} churned by the end of the log, revenue "
            f"{r['revenue_per_customer']:,.0f} per customer."
            for r in personas.to_dict(orient="records")
        ]
    )
    if "persona_agreement_ari" in f:
        report.note(
            f"Simulated log: the personas agree with the simulator's true personas with an "
            f"adjusted Rand index of {float(f['persona_agreement_ari']):.2f} (0 is chance, 1 "
            "is identical).",
            "info",
        )
    report.figure(_persona_figure(personas), caption="What sets each persona apart (z-scores)")
    cols = [
        "persona",
        "description",
        "customers",
        "share",
        "converted_share",
        "churned_share",
        "revenue_per_customer",
        "complaints_per_customer",
    ]
    typical = [c for c in personas.columns if c.startswith("typical_")]
    report.table(personas[cols], caption="Personas")
    report.table(
        personas[["persona", *typical]].rename(columns={t: t[8:] for t in typical}),
        caption="Typical behaviour per persona (counts per 30 days; value per order; days; "
        "channel share)",
    )


def _persona_figure(personas: pd.DataFrame) -> Any:
    plt = pyplot()
    zcols = [c for c in personas.columns if c.startswith("z_")]
    matrix = personas[zcols].to_numpy(float)
    fig, ax = plt.subplots(figsize=(0.75 * len(zcols) + 2.5, 0.5 * len(personas) + 1.6))
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(len(zcols)), [c[2:] for c in zcols], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(personas)), personas["persona"].tolist(), fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:+.1f}", ha="center", va="center", fontsize=7)
    colorbar(fig, im, ax, "standard deviations from all customers")
    fig.tight_layout()
    return fig


def _annotate(ax: Any, values: np.ndarray, fmt: str, dark_above: float, smallest: float) -> None:
    """Writes each finite cell of a heatmap at least ``smallest`` into it, in white on dark
    cells (above ``dark_above``)."""
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v) and v >= smallest:
            ax.text(
                j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                color="white" if v > dark_above else "#1d2330",
            )  # fmt: skip
