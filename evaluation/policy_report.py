"""The policy report: off-policy estimates, true simulator values, and the action mix."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.html import Report, legend, pyplot
from evaluation.policy import PolicyEvaluation
from evaluation.policy_sim import CEILING, share_target


def add_policy_sections(report: Report, result: PolicyEvaluation) -> None:
    """Is the next-best-action policy worth running? Estimates, truth and who gets what."""
    facts = result.facts
    dr = result.estimates[result.estimates["estimator"] == "dr"].set_index("policy")
    values = dict(zip(dr.index.astype(str), dr["value"].astype(float), strict=True))
    lows = dict(zip(dr.index.astype(str), dr["low"].astype(float), strict=True))
    highs = dict(zip(dr.index.astype(str), dr["high"].astype(float), strict=True))
    none = values.get("no action", 0.0)
    report.section("Policy value from the decision log")
    best = max(values, key=lambda k: values[k])
    report.text(
        f"From {facts.get('decisions', 0):,} logged decisions for "
        f"{facts.get('customers', 0):,} customers, the doubly robust estimate of the value of "
        f"one decision over the next {facts.get('horizon_days')} days (revenue minus action "
        f"cost) is highest for “{best}”: {values[best]:.2f} per decision "
        f"(95 % interval {lows[best]:.2f} to {highs[best]:.2f}), against "
        f"{none:.2f} with no action."
    )
    report.figure(_estimates_figure(dr), caption="Doubly robust estimates with 95 % intervals")
    wide = result.estimates.pivot_table(
        index="policy", columns="estimator", values="value", sort=False
    ).reset_index()
    report.table(wide, caption="Value per decision by estimator (IPS, self-normalised IPS, DR)")
    shown = result.estimates[result.estimates["estimator"] == "dr"][
        ["policy", "value", "low", "high", "effective_sample_size", "max_weight"]
    ]
    report.table(shown, caption="Doubly robust estimates and weight diagnostics")
    if result.true_values is not None:
        tv = result.true_values
        report.section("True values in the simulator")
        oracle = tv.loc[tv["policy"] == "oracle (true effects)"].iloc[0]
        logging = tv.loc[tv["policy"] == "logging policy"].iloc[0]
        report.text(
            f"Each policy ran the whole simulated period for {facts.get('sim_customers'):,} "
            f"customers (seed {facts.get('sim_seed')}). Knowing every customer's persona, the "
            f"oracle adds {oracle['incremental']:.2f} of net value per customer over no action; "
            f"the logging policy adds {logging['incremental']:.2f} "
            f"({logging['captured_share']:.0%} of the oracle's gain)."
        )
        learned = tv.loc[tv["policy"] == "learned policy"]
        if len(learned):
            row = learned.iloc[0]
            ceiling = tv.loc[tv["policy"] == CEILING, "captured_share"]
            ceiling_share = float(ceiling.iloc[0]) if len(ceiling) else None
            bar = share_target(ceiling_share)
            bar_text = (
                "target: 80 %"
                if bar == 0.8
                else f"target: 95 % of the hidden-state ceiling's {ceiling_share:.0%}, {bar:.0%}"
            )
            report.note(
                "The learned policy was learned from the logging policy's decision log alone "
                "(the journey features at each decision's day, the logged propensities and the "
                "net value that followed), never from the simulator's truth, and measured on "
                f"another seed: it adds {row['incremental']:.2f} per customer, "
                f"{row['captured_share']:.0%} of the oracle's gain ({bar_text}).",
                tone="good" if row["captured_share"] >= bar else "warning",
            )
        report.text(
            "Share of the oracle's gain, here and in every report: a policy's true net value per "
            "customer over the whole run minus no action's, divided by the oracle's minus no "
            "action's."
        )
        report.figure(_true_figure(tv), caption="True net value per customer over no action")
        report.table(tv, caption="True values per customer over the whole run")
        if result.oracle_choices:
            report.table(
                pd.DataFrame(
                    sorted(result.oracle_choices.items()), columns=["persona", "oracle's action"]
                ),
                caption="What the oracle sends each persona",
            )
    gate = facts.get("learned_policy_gate")
    if isinstance(gate, dict):
        verdict = "passes" if gate["passed"] else "does not pass"
        report.note(
            f"The learned policy {verdict} its gate: {gate['learned']:.2f} per decision (95 % "
            f"interval {gate['learned_low']:.2f} to {gate['learned_high']:.2f}) against the "
            f"logging policy's {gate['logging']:.2f} and the best single action's "
            f"({gate['best_single_policy']}) {gate['best_single']:.2f}"
            + ("." if gate["passed"] else ": " + "; ".join(gate["reasons"]) + "."),
            tone="good" if gate["passed"] else "warning",
        )
    if result.fairness is not None and result.fairness_gaps is not None:
        _fairness_section(report, result.fairness, result.fairness_gaps)
    report.section("Action mix by segment")
    report.text("Share of the logged decisions that sent each action, per customer segment.")
    report.table(result.action_mix.reset_index(), caption="Logged action mix")
    report.figure(_mix_figure(result.action_mix), caption="Logged action mix by segment")


def _fairness_section(report: Report, table: pd.DataFrame, gaps: pd.DataFrame) -> None:
    """Selection rates, incremental value, risk and calibration per group, and the gaps."""
    report.section("Fairness across segments")
    sel = gaps[gaps["measure"] == "selection_rate"]
    if len(sel):
        worst = sel.sort_values("gap").to_dict("records")[-1]
        report.text(
            f"The largest gap in the share of decisions that send an action is "
            f"{worst['gap']:.0%} ({worst['policy']}, {worst['attribute']}: {worst['highest']} "
            f"against {worst['lowest']}). Calibration compares the mean predicted conversion "
            "propensity of a group with the conversions reported within the horizon."
        )
    shown = [c for c in table.columns if c not in ("policy",)]
    report.table(table[["policy", *shown]].round(3), caption="Per policy, attribute and group")
    report.table(gaps.round(3), caption="Largest gap between two groups, per measure")


def _estimates_figure(dr: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(dr) + 1))
    y = np.arange(len(dr))
    ax.errorbar(
        dr["value"], y, xerr=[dr["value"] - dr["low"], dr["high"] - dr["value"]], fmt="o",
        color="#2a5bd7", capsize=3,
    )  # fmt: skip
    ax.set_yticks(y, dr.index)
    none = dr["value"][dr.index == "no action"]
    ax.axvline(float(none.iloc[0]) if len(none) else 0.0, ls=":")
    ax.set_xlabel("value per decision")
    legend(
        ax,
        [("estimate with its 95 % interval", "#2a5bd7", "point"), ("no action", "C0", "dotted")],
        loc="lower right",
    )
    fig.tight_layout()
    return fig


def _true_figure(tv: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(tv) + 1))
    colors = ["#2e9d5b" if v > 0 else "#d2423b" for v in tv["incremental"]]
    ax.barh(tv["policy"][::-1], tv["incremental"][::-1], color=colors[::-1])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("net value per customer over no action")
    legend(ax, [("adds value", "#2e9d5b", "bar"), ("loses value", "#d2423b", "bar")])
    fig.tight_layout()
    return fig


def _mix_figure(mix: pd.DataFrame) -> object:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(mix) + 1.2))
    left = np.zeros(len(mix))
    for action in mix.columns:
        ax.barh(mix.index.astype(str), mix[action], left=left, label=str(action))
        left += mix[action].to_numpy()
    ax.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.set_xlabel("share of decisions")
    fig.tight_layout()
    return fig


def add_engine_mix_section(report: Report, decisions: pd.DataFrame | None, command: str) -> None:
    """What journeyml's own decision engine chooses per segment, beside the logged mix above
    (on a simulated log the logging policy is the simulator's random one, not journeyml's).

    ``decisions``: one row per customer with ``segment`` and ``action`` (the churn-risk list,
    written by the same engine that answers requests), or None when there is no list.
    """
    report.section("journeyml's decisions by segment")
    if decisions is None or decisions.empty:
        report.note(
            f"No churn-risk list in this workspace: `{command}` writes one, and this section "
            "then shows the action journeyml's engine chooses for each customer, by segment.",
            tone="warning",
        )
        return
    mix = pd.crosstab(
        decisions["segment"].fillna("unknown").astype(str).rename("segment"),
        decisions["action"].astype(str).rename("action"),
        normalize="index",
    )
    top = decisions["action"].value_counts(normalize=True)
    report.text(
        f"Share of the {len(decisions):,} customers of the latest churn-risk list for which "
        "journeyml's decision engine (the code that answers next-best-action requests) chooses "
        f"each action. Most chosen: “{top.index[0]}” for {top.iloc[0]:.0%} of customers."
    )
    report.table(mix.reset_index(), caption="journeyml's action mix by segment")
    report.figure(_mix_figure(mix), caption="journeyml's action mix by segment")
