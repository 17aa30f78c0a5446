"""Running the simulation: the event log, the customers table, decisions and ground truth.

:func:`simulate` steps through the days with the engine's vectorised :func:`advance` over all
customers; on decision days the policy (by default the world's randomised logging policy)
decides for everyone who has signed up and not cancelled; on truth cutoffs the ground truth is
computed from the state that morning (see :mod:`journeyml.simulate.truth`). Events are rendered
day by day and written in chunks, so memory stays bounded whatever the run's size.

Outputs in ``out``::

    events/part-NNNNN.parquet   (or events.csv) the event log; each part sorted by customer
                                and time, parts in time order, so every customer's events are
                                in time order when read in file order
    customers.parquet           (or .csv) customer_id, signup_at, segment, plan, region,
                                marketing_opt_out
    truth/decisions.parquet     every policy decision, "none" included
    truth/personas.parquet      every customer's latent persona
    truth/customers.parquet     true p_churn, p_convert at the truth cutoffs
    truth/effects.parquet       true effect of each action at the truth cutoffs
    world.json                  seed, options, world parameters and a summary

Randomness: one :class:`numpy.random.SeedSequence` of the seed feeds independent generators for
the population, the calendar, the engine's daily draws, rendering and truth, so runs with the
same seed and different policies share their customers and their luck.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from journeyml.config import JourneyMap
from journeyml.simulate.engine import (
    DAY_US,
    NONE,
    STAGES,
    Array,
    Calendar,
    Incident,
    Params,
    Population,
    Roles,
    SimulationError,
    Uniforms,
    advance,
    build_calendar,
    compile_world,
    draw_population,
    seconds_to_us,
)
from journeyml.simulate.policy import Policy, check_decision, logging_policy, observe
from journeyml.simulate.render import (
    EVENT_SCHEMA,
    DayDecisions,
    EventRows,
    Renderer,
    customer_ids,
    decision_ids,
    to_table,
)
from journeyml.simulate.truth import CutoffTruth, TruthOptions, compute_truth, truth_cutoffs
from journeyml.simulate.world import World

__all__ = [
    "Incident",
    "Outcomes",
    "SimulationError",
    "SimulationSummary",
    "TruthOptions",
    "simulate",
]

logger = logging.getLogger(__name__)

Format = Literal["parquet", "csv"]
OUTPUT_NAMES = ("events", "events.csv", "customers.parquet", "customers.csv", "truth", "world.json")
TS = pa.timestamp("us", tz="UTC")


@dataclass
class RunLog:
    """The log of a run kept in memory (``simulate(..., out=None, keep_log=True)``)."""

    events: pd.DataFrame
    customers: pd.DataFrame
    decisions: pd.DataFrame
    truth_customers: pd.DataFrame | None
    truth_effects: pd.DataFrame | None


@dataclass
class Outcomes:
    """Per-customer totals of a run, with the latent persona (for policy values)."""

    persona: Array
    purchases: Array
    revenue: Array
    churned: Array
    action_cost: Array
    actions_sent: Array
    log: RunLog | None = None

    def value(self) -> dict[str, float]:
        """Mean outcomes per customer: the true value of the policy that ran."""
        n = len(self.purchases)
        return {
            "customers": float(n),
            "purchases_per_customer": float(self.purchases.sum() / n),
            "conversion_rate": float((self.purchases > 0).mean()),
            "revenue_per_customer": float(self.revenue.sum() / n),
            "churn_rate": float(self.churned.mean()),
            "action_cost_per_customer": float(self.action_cost.sum() / n),
            "net_value_per_customer": float((self.revenue.sum() - self.action_cost.sum()) / n),
            "actions_per_customer": float(self.actions_sent.sum() / n),
        }

    def frame(self, persona_names: tuple[str, ...] | list[str]) -> pd.DataFrame:
        """One row per customer (index = customer number)."""
        return pd.DataFrame(
            {
                "persona": np.array(persona_names)[self.persona],
                "purchases": self.purchases,
                "revenue": self.revenue,
                "churned": self.churned,
                "action_cost": self.action_cost,
                "actions_sent": self.actions_sent,
            }
        )


@dataclass
class SimulationSummary:
    """What a run produced (also written to ``world.json``)."""

    customers: int
    days: int
    seed: int
    start: str
    end: str
    events: int
    event_types: dict[str, int]
    buying_customers: int
    conversion_rate: float
    churned_customers: int
    cancelled_customers: int
    churn_rate: float
    revenue: float
    decisions: int
    actions_sent: int
    action_cost: float
    truth_rows: int
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)


def _check_options(
    customers: int,
    days: int,
    seed: int,
    fmt: str,
    incidents: tuple[Incident, ...],
    truth: TruthOptions | None,
) -> None:
    if customers <= 0:
        raise SimulationError(f"--customers must be positive, got {customers}")
    if days <= 0:
        raise SimulationError(f"--days must be positive, got {days}")
    if seed < 0:
        raise SimulationError(f"--seed must be non-negative, got {seed}")
    if fmt not in ("parquet", "csv"):
        raise SimulationError(f"--format must be parquet or csv, got {fmt!r}")
    for incident in incidents:
        if incident.start_day >= days:
            raise SimulationError(
                f"--incident {incident.step}:{incident.start_day}:...: starts on day "
                f"{incident.start_day}, after the last simulated day ({days - 1})"
            )
    if truth is not None:
        for name in ("every_days", "warmup_days", "rollouts"):
            if getattr(truth, name) <= 0:
                raise SimulationError(f"--truth-{name.split('_')[0]} must be positive")
        if truth.sample < 0 or truth.last_cutoffs < 0:
            raise SimulationError("--truth-sample and --truth-cutoffs must not be negative")


def prepare_out(out: Path) -> None:
    """Creates ``out``, or clears a previous simulation there; refuses other folders' content.

    Only the simulator's own outputs are ever deleted.
    """
    if out.exists() and not out.is_dir():
        raise SimulationError(f"--out {out} is a file, not a folder")
    if out.exists():
        entries = {p.name for p in out.iterdir()}
        foreign = sorted(entries - set(OUTPUT_NAMES))
        if foreign:
            raise SimulationError(
                f"--out {out} holds files that are not a simulation's ({', '.join(foreign[:5])});"
                " choose an empty or new folder"
            )
        for name in entries:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


class _EventSink:
    """Buffers rendered rows and writes them in chunks (parquet parts, one CSV, or memory)."""

    def __init__(
        self,
        out: Path | None,
        fmt: Format,
        ids: pa.Array,
        type_names: list[str],
        action_ids: list[str],
        keep: bool,
        chunk_rows: int,
    ):
        self.out, self.fmt, self.ids, self.keep = out, fmt, ids, keep
        self.type_names, self.action_ids = type_names, action_ids
        self.chunk_rows = chunk_rows
        self.buffer: list[EventRows] = []
        self.buffered = 0
        self.written = 0
        self.parts = 0
        self.counts = np.zeros(len(type_names), dtype=np.int64)
        self.kept: list[pa.Table] = []
        self.csv: pacsv.CSVWriter | None = None

    def add(self, rows: EventRows) -> None:
        self.counts += np.bincount(rows.event_type, minlength=len(self.type_names))
        if self.out is None and not self.keep:
            self.written += len(rows)
            return
        self.buffer.append(rows)
        self.buffered += len(rows)
        if self.buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        rows = EventRows.concat(self.buffer)
        self.buffer, self.buffered = [], 0
        table = to_table(rows, self.written, self.ids, self.type_names, self.action_ids)
        self.written += table.num_rows
        if self.out is None:
            self.kept.append(table)
        elif self.fmt == "csv":
            if self.csv is None:
                self.csv = pacsv.CSVWriter(self.out / "events.csv", table.schema)
            self.csv.write_table(table)
        else:
            folder = self.out / "events"
            folder.mkdir(exist_ok=True)
            pq.write_table(table, folder / f"part-{self.parts:05d}.parquet", compression="zstd")
            self.parts += 1

    def close(self) -> None:
        self.flush()
        if self.csv is not None:
            self.csv.close()


DECISION_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("customer_id", pa.string()),
        ("timestamp", TS),
        ("action_id", pa.string()),
        ("propensity", pa.float64()),
    ]
)


class _DecisionSink:
    """Streams decisions to ``truth/decisions.parquet`` (or keeps them in memory)."""

    def __init__(self, path: Path | None, ids: pa.Array, action_ids: list[str], keep: bool):
        self.ids, self.names = ids, pa.array(["none", *action_ids], pa.string())
        self.writer = pq.ParquetWriter(path, DECISION_SCHEMA) if path is not None else None
        self.keep = keep
        self.kept: list[pa.Table] = []

    def add(self, d: DayDecisions) -> None:
        if self.writer is None and not self.keep:
            return
        table = pa.table(
            {
                "decision_id": decision_ids(d.numbers),
                "customer_id": self.ids.take(pa.array(d.lanes)),
                "timestamp": pa.array(d.time_us, TS),
                "action_id": self.names.take(pa.array(d.actions + 1)),
                "propensity": pa.array(d.propensities, pa.float64()),
            },
            schema=DECISION_SCHEMA,
        )
        if self.writer is not None:
            self.writer.write_table(table)
        else:
            self.kept.append(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def customers_table(params: Params, pop: Population, calendar: Calendar, ids: pa.Array) -> pa.Table:
    """The observable customers table; ``signup_at`` equals the signup event's timestamp."""
    signup_us = calendar.day_start_us(0) + pop.arrival * DAY_US + seconds_to_us(pop.signup_second)
    return pa.table(
        {
            "customer_id": ids,
            "signup_at": pa.array(signup_us, TS),
            "segment": pa.array(np.array(params.segment_names)[pop.segment]),
            "plan": pa.array(np.where(pop.premium, "premium", "basic")),
            "region": pa.array(np.array(params.region_names)[pop.region]),
            "marketing_opt_out": pa.array(pop.opt_out),
        }
    )


def _truth_tables(
    params: Params,
    pop: Population,
    state_stage: Array,
    state_alive: Array,
    state_s: Array,
    state_e: Array,
    bought: Array,
    t: CutoffTruth,
    calendar: Calendar,
    ids: pa.Array,
) -> tuple[pa.Table, pa.Table]:
    cutoff = pa.array(np.full(len(t.customers), calendar.day_start_us(t.cutoff)), TS)
    who = ids.take(pa.array(t.customers))
    customers = pa.table(
        {
            "customer_id": who,
            "cutoff": cutoff,
            "persona": np.array(params.persona_names)[pop.persona[t.customers]],
            "stage": np.array(STAGES)[state_stage],
            "alive": state_alive,
            "satisfaction": state_s,
            "engagement": state_e,
            "bought_before": bought,
            "p_churn": t.p_churn,
            "p_convert": t.p_convert,
            "expected_revenue": t.revenue,
            "p_churn_none": t.arm_churn[0],
            "p_convert_none": t.arm_convert[0],
        }
    )
    opt_out = pop.opt_out[t.customers]
    effects = []
    for a, action in enumerate(params.world.actions):
        n = len(t.customers)
        effects.append(
            pa.table(
                {
                    "customer_id": who,
                    "cutoff": cutoff,
                    "action_id": pa.array([action.id] * n),
                    "effect_convert": t.arm_convert[1 + a] - t.arm_convert[0],
                    "effect_churn": t.arm_churn[1 + a] - t.arm_churn[0],
                    "effect_revenue": t.arm_revenue[1 + a] - t.arm_revenue[0],
                    "p_convert": t.arm_convert[1 + a],
                    "p_churn": t.arm_churn[1 + a],
                    "cost": np.full(n, action.cost),
                    "eligible": ~(opt_out & action.marketing),
                }
            )
        )
    return customers, pa.concat_tables(effects)


def simulate(
    world: World,
    journey: JourneyMap,
    customers: int,
    days: int,
    seed: int = 0,
    start: date = date(2025, 1, 1),
    out: Path | None = None,
    fmt: Format = "parquet",
    incidents: tuple[Incident, ...] = (),
    truth: TruthOptions | None = TruthOptions(),  # noqa: B008 (frozen, never mutated)
    policy: Policy | None = None,
    keep_log: bool = False,
    chunk_rows: int = 500_000,
) -> tuple[SimulationSummary, Outcomes]:
    """Simulates ``customers`` for ``days`` days from ``start``; deterministic for a seed.

    Args:
        world: the world (personas, dynamics, actions, logging policy).
        journey: the journey map: event roles and label horizons for the truth.
        out: output folder (created; a previous simulation there is replaced). None writes
            nothing: with ``keep_log`` the log comes back in ``Outcomes.log``, otherwise only
            the per-customer outcomes (to measure a policy's true value quickly).
        incidents: failing journey steps (see :class:`Incident`).
        truth: where to compute ground truth; None (or ``last_cutoffs=0``) for none. Truth is
            computed only when the log is written or kept.
        policy: decides the marketing actions (default: the world's logging policy); see
            :mod:`journeyml.simulate.policy`. A policy with an ``observe_events(events,
            customers)`` method is handed each day's rendered events (the log as it grows) and
            the customers table, after the day's decisions.
        chunk_rows: events buffered before a part file is written.

    Returns:
        The run's summary and the per-customer outcomes.

    Raises:
        SimulationError: an option cannot be simulated (the message names it).
    """
    _check_options(customers, days, seed, fmt, incidents, truth)
    started = time.perf_counter()
    roles = Roles.from_journey(journey)
    params = compile_world(world)
    policy = policy or logging_policy(world)
    seeds = np.random.SeedSequence(seed).spawn(4)
    population_rng, calendar_rng, day_rng, render_rng = (
        np.random.Generator(np.random.PCG64(s)) for s in seeds
    )
    calendar = build_calendar(world, start, days, incidents, calendar_rng)
    pop, state = draw_population(params, customers, days, calendar, population_rng)
    ids = customer_ids(customers, pop.id_width)
    renderer = Renderer(params, pop, calendar, render_rng)
    writing = out is not None
    if out is not None:
        prepare_out(out)
        (out / "truth").mkdir()
    keep = keep_log and not writing
    events = _EventSink(out, fmt, ids, renderer.type_names, world.action_ids, keep, chunk_rows)
    decisions = _DecisionSink(
        out / "truth" / "decisions.parquet" if out is not None else None,
        ids,
        world.action_ids,
        keep,
    )
    customers_tab = customers_table(params, pop, calendar, ids)
    if out is not None:
        if fmt == "csv":
            pacsv.write_csv(customers_tab, out / "customers.csv")
        else:
            pq.write_table(customers_tab, out / "customers.parquet")
    horizon = max(journey.horizons.churn_days, journey.horizons.conversion_days)
    cutoffs = set(truth_cutoffs(days, horizon, truth)) if truth and (writing or keep) else set()
    truth_customers: list[pa.Table] = []
    truth_effects: list[pa.Table] = []

    outcomes = Outcomes(
        persona=pop.persona,
        purchases=np.zeros(customers, dtype=np.int64),
        revenue=np.zeros(customers),
        churned=np.zeros(customers, dtype=bool),
        action_cost=np.zeros(customers),
        actions_sent=np.zeros(customers, dtype=np.int64),
    )
    n_decisions = 0
    every = world.policy.every_days
    watcher = getattr(policy, "observe_events", None)
    watched = 0
    for day in range(days):
        draws = Uniforms.draw(day_rng, customers)
        if day in cutoffs:
            t = compute_truth(
                params,
                pop,
                state,
                day,
                calendar,
                roles,
                journey,
                policy,
                truth or TruthOptions(),
                seed,
            )
            c, e = _truth_tables(
                params,
                pop,
                state.stage[t.customers],
                state.alive[t.customers],
                state.satisfaction[t.customers],
                state.engagement[t.customers],
                state.purchases[t.customers] > 0,
                t,
                calendar,
                ids,
            )
            truth_customers.append(c)
            truth_effects.append(e)
        actions = np.full(customers, NONE)
        today: DayDecisions | None = None
        if day % every == 0:
            obs = observe(params, pop, state, day)
            if len(obs):
                chosen, propensity = check_decision(obs, *policy(obs, draws.policy[obs.customers]))
                actions[obs.customers] = chosen
                today = DayDecisions(
                    lanes=obs.customers,
                    actions=chosen,
                    propensities=propensity,
                    numbers=np.arange(n_decisions, n_decisions + len(obs)),
                    time_us=renderer.decision_times(day, len(obs)),
                )
                n_decisions += len(obs)
                decisions.add(today)
        state, outcome = advance(params, pop, state, day, calendar, draws, actions, roles)
        rendered = renderer.render(day, outcome, today)
        events.add(rendered)
        if watcher is not None and len(rendered):
            # a policy that reads the log as it grows (e.g. journey features) sees the day
            watcher(
                to_table(rendered, watched, ids, renderer.type_names, world.action_ids),
                customers_tab,
            )
            watched += len(rendered)
        sent = actions != NONE
        outcomes.purchases += outcome.purchases
        outcomes.revenue += outcome.revenue
        outcomes.churned |= outcome.churned
        outcomes.actions_sent += sent
        outcomes.action_cost[sent] += params.action_cost[actions[sent]]
        if day % 30 == 29:
            logger.debug("day %d: %d events so far", day + 1, events.written + events.buffered)
    events.close()
    decisions.close()

    truth_c = pa.concat_tables(truth_customers) if truth_customers else None
    truth_e = pa.concat_tables(truth_effects) if truth_effects else None
    summary = _summary(
        customers, days, seed, start, events, state.cancelled, outcomes, n_decisions, truth_c
    )
    if out is not None:
        personas = pa.table(
            {"customer_id": ids, "persona": np.array(params.persona_names)[pop.persona]}
        )
        pq.write_table(personas, out / "truth" / "personas.parquet")
        if truth_c is not None and truth_e is not None:
            pq.write_table(truth_c, out / "truth" / "customers.parquet")
            pq.write_table(truth_e, out / "truth" / "effects.parquet")
        suffix = "csv" if fmt == "csv" else "parquet"
        summary.outputs = {
            "events": str(out / ("events.csv" if fmt == "csv" else "events")),
            "customers": str(out / f"customers.{suffix}"),
            "truth": str(out / "truth"),
            "world": str(out / "world.json"),
        }
    summary.seconds = time.perf_counter() - started
    if out is not None:
        options = {
            "customers": customers,
            "days": days,
            "seed": seed,
            "start": start.isoformat(),
            "format": fmt,
            "incidents": [asdict(i) for i in incidents],
            "truth": asdict(truth) if truth else None,
            "policy": type(policy).__name__,
        }
        _write_world(out / "world.json", world, params, options, summary, journey)
    if keep:
        outcomes.log = RunLog(
            events=pa.concat_tables(events.kept or [EVENT_SCHEMA.empty_table()]).to_pandas(),
            customers=customers_tab.to_pandas(),
            decisions=pa.concat_tables(
                decisions.kept or [DECISION_SCHEMA.empty_table()]
            ).to_pandas(),
            truth_customers=truth_c.to_pandas() if truth_c is not None else None,
            truth_effects=truth_e.to_pandas() if truth_e is not None else None,
        )
    logger.info(
        "simulated %d events for %d customers over %d days in %.1f s",
        summary.events,
        customers,
        days,
        summary.seconds,
    )
    return summary, outcomes


def _summary(
    customers: int,
    days: int,
    seed: int,
    start: date,
    events: _EventSink,
    cancelled: Array,
    outcomes: Outcomes,
    n_decisions: int,
    truth_c: pa.Table | None,
) -> SimulationSummary:
    counts = {t: int(c) for t, c in zip(events.type_names, events.counts, strict=True) if c}
    return SimulationSummary(
        customers=customers,
        days=days,
        seed=seed,
        start=start.isoformat(),
        end=(start + timedelta(days=days - 1)).isoformat(),
        events=int(events.counts.sum()),
        event_types=dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        buying_customers=int((outcomes.purchases > 0).sum()),
        conversion_rate=float((outcomes.purchases > 0).mean()),
        churned_customers=int(outcomes.churned.sum()),
        cancelled_customers=int(cancelled.sum()),
        churn_rate=float(outcomes.churned.mean()),
        revenue=float(outcomes.revenue.sum()),
        decisions=n_decisions,
        actions_sent=int(outcomes.actions_sent.sum()),
        action_cost=float(outcomes.action_cost.sum()),
        truth_rows=truth_c.num_rows if truth_c is not None else 0,
        seconds=0.0,
    )


def _write_world(
    path: Path,
    world: World,
    params: Params,
    options: dict[str, Any],
    summary: SimulationSummary,
    journey: JourneyMap,
) -> None:
    document = {
        "generated_by": "journeyml simulate",
        "seed": options["seed"],
        "options": options,
        "label_definitions": {
            "churn_days": journey.horizons.churn_days,
            "conversion_days": journey.horizons.conversion_days,
            "inactivity_days": journey.churn.inactivity_days,
            "churn": "explicit churn event, or no activity event, in [cutoff, cutoff + churn_days)",
            "conversion": "a conversion event in [cutoff, cutoff + conversion_days)",
        },
        "personas": [p.model_dump(mode="json") for p in world.personas],
        "actions": [
            {
                **a.model_dump(mode="json", exclude={"effects"}),
                "effects": {p: a.effect_for(p).model_dump() for p in params.persona_names},
            }
            for a in world.actions
        ],
        "world": world.model_dump(mode="json"),
        # no wall-clock figures: the same seed writes the same files
        "summary": {k: v for k, v in asdict(summary).items() if k not in ("seconds", "outputs")},
        "outputs": {
            name: str(Path(value).relative_to(path.parent))
            for name, value in summary.outputs.items()
        },
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
