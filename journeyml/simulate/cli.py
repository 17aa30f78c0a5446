"""``journeyml simulate``: a multi-channel journey world with ground truth."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from journeyml.config import CONFIG_DIR, ConfigError

console = Console()
err = Console(stderr=True)


def simulate(
    customers: int = typer.Option(2000, "--customers", help="How many customers."),
    days: int = typer.Option(365, "--days", help="How many days."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the same seed, the same world)."),
    out: Path = typer.Option(Path("data/sim"), "--out", help="Output folder (replaced)."),
    start: str = typer.Option("2025-01-01", "--start", help="First day, YYYY-MM-DD."),
    world: Path = typer.Option(CONFIG_DIR / "simulator.yaml", "--world", help="World config."),
    journeys: Path = typer.Option(CONFIG_DIR / "journeys.yaml", "--journeys", help="Journey map."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    incident: list[str] = typer.Option(
        [], "--incident", help="A failing step: payment:START_DAY:DURATION_DAYS:FAILURE_RATE."
    ),
    truth_sample: int = typer.Option(400, "--truth-sample", help="Customers per truth cutoff."),
    truth_rollouts: int = typer.Option(80, "--truth-rollouts", help="Futures per customer."),
    truth_cutoffs: int = typer.Option(3, "--truth-cutoffs", help="Truth cutoffs (the last N)."),
) -> None:
    """Simulate a multi-channel journey log with personas, marketing actions and ground truth."""
    from journeyml.config import load_journey_map
    from journeyml.simulate.run import Incident, SimulationError, TruthOptions
    from journeyml.simulate.run import simulate as run_simulation
    from journeyml.simulate.world import load_world

    try:
        if fmt not in ("parquet", "csv"):
            raise SimulationError("--format must be parquet or csv")
        try:
            first = date.fromisoformat(start)
        except ValueError:
            raise SimulationError(f"--start {start!r} is not a date (YYYY-MM-DD)") from None
        for name, value in (("--truth-sample", truth_sample), ("--truth-rollouts", truth_rollouts)):
            if value <= 0:
                raise SimulationError(f"{name} must be positive")
        incidents = tuple(Incident.parse(spec) for spec in incident)
        summary, _ = run_simulation(
            load_world(str(world)),
            load_journey_map(journeys),
            customers,
            days,
            seed,
            first,
            out,
            fmt,  # type: ignore[arg-type]
            incidents,
            TruthOptions(
                last_cutoffs=max(truth_cutoffs, 0), sample=truth_sample, rollouts=truth_rollouts
            ),
        )
    except (SimulationError, ConfigError) as exc:
        err.print(f"[red]simulate: {exc}[/red]")
        raise typer.Exit(2) from None
    table = Table(title="simulated journeys", show_header=False, title_justify="left")
    table.add_row("customers", f"{summary.customers:,}")
    table.add_row("days", f"{summary.days} from {summary.start}")
    table.add_row("events", f"{summary.events:,}")
    table.add_row("customers who bought", f"{summary.buying_customers:,}")
    table.add_row("customers who churned", f"{summary.churned_customers:,}")
    table.add_row(
        "marketing actions sent", f"{summary.actions_sent:,} of {summary.decisions:,} decisions"
    )
    table.add_row("ground-truth rows", f"{summary.truth_rows:,}")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    for name, path in summary.outputs.items():
        table.add_row(name, path)
    console.print(table)
