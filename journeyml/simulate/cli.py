"""``journeyml simulate``: a multi-channel journey world with ground truth.

Mounted by :mod:`journeyml.cli` as ``app.command("simulate")(simulate)``; heavy imports happen
inside the command so ``journeyml --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from journeyml.config import SIMULATOR_CONFIG_DIR, ConfigError

T = TypeVar("T")


def simulate(
    customers: int = typer.Option(2000, "--customers", help="How many customers."),
    days: int = typer.Option(365, "--days", help="How many days."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the same seed, the same files)."),
    out: Path = typer.Option(
        Path("data/sim"), "--out", help="Output folder (a previous simulation there is replaced)."
    ),
    start: str = typer.Option("2025-01-01", "--start", help="First day (UTC), YYYY-MM-DD."),
    world: Path | None = typer.Option(
        None, "--world", help="World config (default: simulator.yaml of --config-dir)."
    ),
    journeys: Path | None = typer.Option(
        None,
        "--journeys",
        help="Journey map (default: the simulator's, configs/simulator/journeys.yaml; the "
        "simulator needs its own event vocabulary and stages).",
    ),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    incident: list[str] = typer.Option(
        [],
        "--incident",
        help="A failing journey step, repeatable: STEP:START_DAY:DURATION_DAYS:FAILURE_RATE "
        "with STEP payment or checkout, e.g. payment:200:7:0.4.",
    ),
    truth_cutoffs: int = typer.Option(
        3, "--truth-cutoffs", help="Ground truth at the last N cutoffs of the grid (0: none)."
    ),
    truth_every: int = typer.Option(28, "--truth-every", help="Days between truth cutoffs."),
    truth_warmup: int = typer.Option(28, "--truth-warmup", help="First truth cutoff (day)."),
    truth_sample: int = typer.Option(
        1000, "--truth-sample", help="Active customers per truth cutoff (0: all)."
    ),
    truth_rollouts: int = typer.Option(
        64, "--truth-rollouts", help="Monte Carlo futures per customer and action."
    ),
) -> None:
    """Simulate a multi-channel journey log with personas, marketing actions and ground truth."""
    from journeyml.config import load_journey_map
    from journeyml.simulate.run import Incident, SimulationError, TruthOptions
    from journeyml.simulate.run import simulate as run_simulation
    from journeyml.simulate.world import load_world

    # no emoji or markup from user text: "payment:x:3" must not print an emoji
    err = Console(stderr=True, emoji=False, highlight=False)
    try:
        if fmt not in ("parquet", "csv"):
            raise SimulationError(f"--format must be parquet or csv, got {fmt!r}")
        try:
            first = date.fromisoformat(start)
        except ValueError:
            raise SimulationError(f"--start {start!r} is not a date (YYYY-MM-DD)") from None
        incidents = tuple(Incident.parse(spec) for spec in incident)
        world_config = _load(load_world, world, "--world")
        journey_map = _load(
            load_journey_map, journeys or SIMULATOR_CONFIG_DIR / "journeys.yaml", "--journeys"
        )
        summary, _ = run_simulation(
            world_config,
            journey_map,
            customers,
            days,
            seed,
            first,
            out,
            "csv" if fmt == "csv" else "parquet",
            incidents,
            TruthOptions(
                every_days=truth_every,
                warmup_days=truth_warmup,
                last_cutoffs=truth_cutoffs,
                sample=truth_sample,
                rollouts=truth_rollouts,
            ),
        )
    except SimulationError as exc:
        err.print(f"[red]simulate: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    table = Table(title="simulated journeys", show_header=False, title_justify="left")
    table.add_row("customers", f"{summary.customers:,}")
    table.add_row("dates", f"{summary.start} to {summary.end} ({summary.days} days)")
    table.add_row("events", f"{summary.events:,}")
    table.add_row("conversion", f"{summary.conversion_rate:.1%} of customers bought at least once")
    table.add_row(
        "churn",
        f"{summary.churn_rate:.1%} of customers left "
        f"({summary.cancelled_customers:,} cancelled explicitly, the rest went silent)",
    )
    table.add_row(
        "marketing actions", f"{summary.actions_sent:,} sent in {summary.decisions:,} decisions"
    )
    table.add_row("ground-truth rows", f"{summary.truth_rows:,}")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    for name, path in summary.outputs.items():
        table.add_row(name, escape(path))
    Console(emoji=False).print(table)


def _load(loader: Callable[[Path | None], T], path: Path | None, option: str) -> T:
    """Runs a config loader; a bad file becomes an error naming the option and the key."""
    from journeyml.simulate.run import SimulationError

    try:
        return loader(path)
    except ConfigError as exc:
        raise SimulationError(f"{option}: {exc}") from None
