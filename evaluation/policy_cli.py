"""``journeyml evaluate-policy``: off-policy estimates and true simulator values of policies."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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
        help="Also learn a policy from the logging policy's decision log (observable features "
        "only) and measure its true value in the simulator.",
    ),
) -> None:
    """Value of no action, single actions, random and the oracle: from the log and the truth."""
    from evaluation.policy import NotSimulatedError, evaluate_policies
    from journeyml.config import ConfigError, load_journey_map

    try:
        journey = load_journey_map(journeys)
        result = evaluate_policies(
            data_dir, journey, horizon_days, simulate, sim_customers, sim_days, learned
        )
    except (ConfigError, NotSimulatedError, ValueError) as exc:
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
    console.print(f"Written to {target}")
