"""``journeyml evaluate-policy``: off-policy estimates and true simulator values of policies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from evaluation.fairness import FairnessSettings
    from evaluation.policy import PolicyEvaluation

console = Console()
err = Console(stderr=True)


def evaluate_policy(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Workspace folder."),
    journeys: Path | None = typer.Option(
        None, "--journeys", help="Journey map (default: journeys.yaml of --config-dir)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <data-dir>/evaluation/policy)."
    ),
    horizon_days: int = typer.Option(7, "--horizon-days", min=1, help="Reward window (days)."),
    simulate: bool = typer.Option(
        True, "--simulate/--no-simulate", help="Also run each policy in the simulator."
    ),
    sim_customers: int | None = typer.Option(
        None, "--sim-customers", min=50, help="Customers per simulated run (default: the log's)."
    ),
    sim_days: int | None = typer.Option(
        None, "--sim-days", min=30, help="Days per simulated run (default: the log's)."
    ),
    learned: bool = typer.Option(
        True,
        "--learned/--no-learned",
        help="Also learn a policy from the decision log (and, on a simulated workspace, "
        "measure its true value in the simulator).",
    ),
    source: str = typer.Option(
        "auto",
        "--source",
        help="Decision log: 'service' (the state store's, or --decisions), 'simulator' "
        "(sim/truth/decisions.parquet), or 'auto' (the simulator's when the workspace has one).",
    ),
    decisions: Path | None = typer.Option(
        None,
        "--decisions",
        help="Exported service decision log (journeyml decisions export); default: read the "
        "workspace's state store.",
    ),
    actions: Path | None = typer.Option(
        None, "--actions", help="Actions catalog (default: actions.yaml of --config-dir)."
    ),
    serving_config: Path | None = typer.Option(
        None, "--serving-config", help="Serving settings naming the state store (service log)."
    ),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="Service log: only decisions whose horizon ended by this time (ISO with zone; "
        "default: now).",
    ),
    outcome_value: list[str] = typer.Option(
        [],
        "--outcome-value",
        help="Service log: OUTCOME=AMOUNT, what a feedback outcome is worth (repeatable; "
        "default: converted = the catalog's mean value of its convert actions).",
    ),
    fairness_attribute: list[str] = typer.Option(
        ["segment", "plan", "region"],
        "--fairness-attribute",
        help="Service log: a profile attribute whose groups the fairness audit compares "
        "(repeatable).",
    ),
    fairness_check: bool = typer.Option(
        False,
        "--fairness-check/--no-fairness-check",
        help="Service log: the learned policy's gate also refuses gaps above the bounds.",
    ),
    max_selection_gap: float = typer.Option(
        0.25,
        "--max-selection-gap",
        min=0.0,
        max=1.0,
        help="Fairness check: largest gap in the share of decisions that send an action.",
    ),
    max_calibration_gap: float = typer.Option(
        0.10,
        "--max-calibration-gap",
        min=0.0,
        max=1.0,
        help="Fairness check: largest |predicted - observed| conversion rate of a group.",
    ),
) -> None:
    """Value of no action, single actions, random, the logging and the learned policy from a
    decision log (the service's or the simulator's); on a simulated workspace also the truth."""
    from evaluation.fairness import FairnessSettings
    from evaluation.policy import NotSimulatedError, evaluate_policies, is_simulated
    from evaluation.policy_log import DecisionLogError
    from journeyml.config import ConfigError, load_journey_map

    if source not in ("auto", "service", "simulator"):
        err.print(f"[red]--source must be auto, service or simulator, not {source!r}[/red]")
        raise typer.Exit(2)
    use_service = source == "service" or (
        source == "auto" and (decisions is not None or not is_simulated(data_dir))
    )
    try:
        if use_service:
            fairness = FairnessSettings(
                tuple(fairness_attribute), fairness_check, max_selection_gap, max_calibration_gap
            )
            result = _service_result(
                data_dir, decisions, actions, serving_config, horizon_days, as_of,
                outcome_value, learned, fairness,
            )  # fmt: skip
        else:
            journey = load_journey_map(journeys)
            result = evaluate_policies(
                data_dir, journey, horizon_days, simulate, sim_customers, sim_days, learned
            )
    except (ConfigError, NotSimulatedError, DecisionLogError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    target = out or data_dir / "evaluation" / "policy"
    result.write(target)
    table = Table(title=f"Value per decision over {horizon_days} days (doubly robust, 95 %)")
    for column in ("policy", "estimate", "interval", "true value per customer"):
        table.add_column(column)
    truth = (
        {}
        if result.true_values is None
        else dict(zip(result.true_values["policy"], result.true_values["net_value"], strict=True))
    )
    for row in result.estimates.itertuples():
        if row.estimator not in ("dr", "on-policy mean"):
            continue
        interval = "" if row.estimator != "dr" else f"{row.low:.2f} to {row.high:.2f}"
        true = truth.get(str(row.policy))
        table.add_row(
            str(row.policy), f"{row.value:.2f}", interval, "" if true is None else f"{true:.2f}"
        )
    estimated = set(result.estimates["policy"].astype(str))
    for policy, true in truth.items():  # run in the simulator only (e.g. the learned policy)
        if str(policy) not in estimated:
            table.add_row(str(policy), "", "", f"{true:.2f}")
    console.print(table)
    if result.true_values is not None:
        shares = result.true_values.set_index("policy")["captured_share"]
        if "learned policy" in shares.index:
            console.print(
                f"The policy learned from the decision log captures "
                f"{shares['learned policy']:.0%} of the oracle's incremental value over no action "
                "(target 80 %)."
            )
    gate = result.facts.get("learned_policy_gate")
    if isinstance(gate, dict):
        verdict = "passes" if gate["passed"] else "does not pass"
        console.print(
            f"The learned policy {verdict} its gate: {gate['learned']:.2f} per decision "
            f"(95 % {gate['learned_low']:.2f} to {gate['learned_high']:.2f}) against the logging "
            f"policy's {gate['logging']:.2f} and {gate['best_single_policy']}'s "
            f"{gate['best_single']:.2f}."
            + ("" if gate["passed"] else " " + "; ".join(gate["reasons"]) + ".")
        )
    console.print(f"Written to {target}")


def _service_result(
    data_dir: Path,
    decisions: Path | None,
    actions: Path | None,
    serving_config: Path | None,
    horizon_days: int,
    as_of: str | None,
    outcome_value: list[str],
    learned: bool,
    fairness: FairnessSettings,
) -> PolicyEvaluation:
    """Evaluates the service's decision log (exported, or read from the state store)."""
    from datetime import datetime

    import pandas as pd

    from evaluation.policy import evaluate_service_policies
    from evaluation.policy_log import DecisionLogError
    from journeyml.config import config_path, load_config
    from serving.actions import ActionsCatalog
    from serving.config import load_serving_settings
    from serving.decision_log import export_decisions
    from serving.state import StateStore

    values: dict[str, float] = {}
    for item in outcome_value:
        name, _, amount = item.partition("=")
        try:
            values[name.strip()] = float(amount)
        except ValueError:
            raise DecisionLogError(
                f"--outcome-value {item!r}: expected OUTCOME=AMOUNT, e.g. converted=40"
            ) from None
    when = None
    if as_of is not None:
        when = datetime.fromisoformat(as_of)
        if when.tzinfo is None:
            raise DecisionLogError(f"--as-of {as_of!r}: give a time zone (e.g. +00:00)")
    if decisions is None:
        settings = load_serving_settings(serving_config, data_dir)
        url = settings.resolved_state_url()
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise DecisionLogError(
                f"no decision log in {data_dir}: neither a simulator run (sim/) nor the "
                f"service's state store ({url}); export one with `journeyml decisions export` "
                "and pass --decisions"
            )
        decisions = data_dir / "serving" / "decisions.parquet"
        store = StateStore(url)
        try:
            export_decisions(store, decisions)
        finally:
            store.close()
        actions = actions or (Path(settings.actions) if settings.actions else None)
    # costs and values are all the evaluation reads: the rules are not compiled
    catalog = load_config(actions or config_path("actions.yaml"), ActionsCatalog)
    frame = pd.read_parquet(decisions)
    return evaluate_service_policies(
        frame, catalog, horizon_days, when, values or None, learned, fairness=fairness
    )
