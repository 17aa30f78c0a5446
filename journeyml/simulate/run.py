"""Running the simulation: the event log, the customers table and the ground truth."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from journeyml.config import JourneyMap
from journeyml.simulate.engine import (
    NONE,
    DayOutcome,
    Policy,
    Population,
    State,
    Uniforms,
    apply_actions,
    build_population,
    fixed_policy,
    initial_state,
    logging_policy,
    logging_probabilities,
    observe,
    season,
    step,
)
from journeyml.simulate.world import World

logger = logging.getLogger(__name__)

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
        ("channel", pa.string()),
        ("value", pa.float64()),
        ("session_id", pa.string()),
        ("action_id", pa.string()),
        ("propensity", pa.float64()),
        ("decision_id", pa.string()),
        ("score", pa.int64()),
    ]
)


class SimulationError(ValueError):
    """Options that cannot be simulated; the message names the option."""


@dataclass(frozen=True)
class Incident:
    """A journey step that fails for a while: ``payment`` fails at ``rate`` from ``start_day``."""

    step: Literal["payment"]
    start_day: int
    duration_days: int
    rate: float

    @staticmethod
    def parse(spec: str) -> Incident:
        """Parses ``payment:START_DAY:DURATION_DAYS:FAILURE_RATE``."""
        parts = spec.split(":")
        if len(parts) != 4 or parts[0] != "payment":
            raise SimulationError(
                f"--incident {spec!r}: expected payment:START_DAY:DURATION_DAYS:FAILURE_RATE"
            )
        try:
            start, duration, rate = int(parts[1]), int(parts[2]), float(parts[3])
        except ValueError:
            raise SimulationError(
                f"--incident {spec!r}: days must be integers, rate a number"
            ) from None
        if start < 0 or duration <= 0 or not 0 <= rate <= 1:
            raise SimulationError(
                f"--incident {spec!r}: start ≥ 0, duration > 0 and 0 ≤ rate ≤ 1 required"
            )
        return Incident("payment", start, duration, rate)

    def active(self, day: int) -> bool:
        return self.start_day <= day < self.start_day + self.duration_days


@dataclass(frozen=True)
class TruthOptions:
    """Where and how precisely ground truth is computed.

    Truth cutoffs are midnights every ``every_days`` from ``warmup_days`` (the feature
    pipeline's default snapshot grid) whose horizons end inside the simulation; only the last
    ``last_cutoffs`` of them are computed (the test period), for up to ``sample`` customers
    active at the cutoff, each with ``rollouts`` Monte Carlo futures per arm.
    """

    every_days: int = 28
    warmup_days: int = 28
    last_cutoffs: int = 3
    sample: int = 400
    rollouts: int = 80


@dataclass
class Outcomes:
    """Per-customer totals of a run (for policy values)."""

    purchases: np.ndarray
    revenue: np.ndarray
    churned: np.ndarray
    action_cost: np.ndarray
    actions_sent: np.ndarray

    def value(self) -> dict[str, float]:
        n = len(self.purchases)
        return {
            "customers": float(n),
            "purchases_per_customer": float(self.purchases.sum() / n),
            "revenue_per_customer": float(self.revenue.sum() / n),
            "churn_rate": float(self.churned.mean()),
            "action_cost_per_customer": float(self.action_cost.sum() / n),
            "net_value_per_customer": float((self.revenue.sum() - self.action_cost.sum()) / n),
            "actions_per_customer": float(self.actions_sent.sum() / n),
        }


@dataclass
class SimulationSummary:
    customers: int
    days: int
    seed: int
    start: str
    events: int
    event_types: dict[str, int]
    churned_customers: int
    buying_customers: int
    decisions: int
    actions_sent: int
    truth_rows: int
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)


class _EventWriter:
    """Streams event batches to ``events/part-NNNNN.parquet`` or one ``events.csv``."""

    def __init__(self, out: Path | None, fmt: str, rows_per_file: int = 500_000):
        self.out, self.fmt, self.rows_per_file = out, fmt, rows_per_file
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts = 0
        self.total = 0
        self.csv: pacsv.CSVWriter | None = None
        self.types: Counter[str] = Counter()

    def add(self, table: pa.Table) -> None:
        self.types.update(
            dict(
                zip(
                    *np.unique(table.column("event_type").to_numpy(False), return_counts=True),
                    strict=True,
                )
            )
        )
        self.total += table.num_rows
        if self.out is None:
            return
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if self.out is None or not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        if self.fmt == "csv":
            if self.csv is None:
                self.csv = pacsv.CSVWriter(self.out / "events.csv", EVENT_SCHEMA)
            self.csv.write_table(table)
        else:
            events = self.out / "events"
            events.mkdir(exist_ok=True)
            pq.write_table(table, events / f"part-{self.parts:05d}.parquet", compression="zstd")
            self.parts += 1

    def close(self) -> None:
        self.flush()
        if self.csv is not None:
            self.csv.close()


class _Expander:
    """Turns a day's outcome into event rows (timestamps, sessions, values, ids)."""

    def __init__(
        self, world: World, pop: Population, customer_ids: pa.Array, start: date, seed: int
    ):
        self.world, self.pop, self.ids = world, pop, customer_ids
        self.start = datetime(start.year, start.month, start.day, tzinfo=UTC)
        self.rng = np.random.Generator(np.random.PCG64([seed, 2]))
        medians = np.array([p.order_value_median for p in world.personas])
        spreads = np.array([p.order_value_spread for p in world.personas])
        self.value_mu = np.log(medians)[pop.persona]
        self.value_sigma = spreads[pop.persona]
        self.counter = 0
        self.action_channels = np.array([a.channel for a in world.actions])
        self.action_ids = np.array([a.id for a in world.actions])

    def expand(
        self,
        day: int,
        out: DayOutcome,
        actions: np.ndarray,
        props: np.ndarray,
        decision_ids: pa.Array | None,
        arrivals: np.ndarray,
    ) -> pa.Table:
        parts: list[dict[str, object]] = []
        base = int((self.start + timedelta(days=day)).timestamp() * 1_000_000)
        rng = self.rng

        def add(
            idx: np.ndarray,
            etype: str,
            seconds: np.ndarray,
            channel: object,
            value: np.ndarray | None = None,
            session: pa.Array | None = None,
            score: np.ndarray | None = None,
            extra: dict[str, object] | None = None,
        ) -> None:
            if len(idx) == 0:
                return
            parts.append(
                {
                    "idx": idx,
                    "type": etype,
                    "us": base + (seconds * 1e6).astype(np.int64),
                    "channel": channel,
                    "value": value,
                    "session": session,
                    "score": score,
                    **(extra or {}),
                }
            )

        sent = np.flatnonzero(actions != NONE)
        if len(sent):
            a = actions[sent]
            add(
                sent,
                "",
                np.full(len(sent), 60.0),
                self.action_channels[a],
                extra={
                    "types": np.char.add("action_", self.action_ids[a]),
                    "action_id": self.action_ids[a],
                    "propensity": props[sent],
                    "decision_id": decision_ids.take(pa.array(sent)) if decision_ids else None,
                },
            )
        add(arrivals, "signup", rng.uniform(8 * 3600, 22 * 3600, len(arrivals)), "web")
        for j in range(out.product.shape[1]):
            idx = np.flatnonzero(out.sessions > j)
            if len(idx) == 0:
                continue
            t0 = rng.uniform(7 * 3600, 23 * 3600 - 600, len(idx))
            channel = np.where(out.app[idx, j], "app", "web")
            session = pc.binary_join_element_wise(
                self.ids.take(pa.array(idx)), pa.scalar(f"{day}-{j}"), "-"
            )
            add(idx, "page_view", t0, channel, session=session)
            for flag, etype, lag in (
                (out.product, "product_view", 60),
                (out.cart, "add_to_cart", 120),
                (out.checkout, "checkout_start", 180),
                (out.failed, "payment_failed", 240),
                (out.purchase, "purchase", 240),
            ):
                keep = flag[idx, j]
                if not keep.any():
                    continue
                k = idx[keep]
                value = (
                    np.round(np.exp(rng.normal(self.value_mu[k], self.value_sigma[k])), 2)
                    if etype == "purchase"
                    else None
                )
                add(
                    k,
                    etype,
                    t0[keep] + lag,
                    channel[keep],
                    value=value,
                    session=session.filter(pa.array(keep)),
                )

        def anytime(n: int) -> np.ndarray:
            return rng.uniform(6 * 3600, 23 * 3600, n)

        for flag, etype, fixed_channel in (
            (out.login, "login", "app"),
            (out.referral, "referral", "web"),
            (out.review, "review_posted", "web"),
            (out.redeemed, "offer_redeemed", "web"),
            (out.complaint, "complaint", "phone"),
            (out.cancelled, "cancel_subscription", "web"),
        ):
            idx = np.flatnonzero(flag)
            add(idx, etype, anytime(len(idx)), fixed_channel)
        idx = np.flatnonzero(out.support)
        add(
            idx,
            "support_contact",
            anytime(len(idx)),
            np.where(rng.random(len(idx)) < 0.5, "phone", "chat"),
        )
        idx = np.flatnonzero(out.email_open)
        t_open = rng.uniform(2 * 3600, 20 * 3600, len(idx))
        add(idx, "email_open", t_open, "email")
        click = out.email_click[idx]
        add(idx[click], "email_click", t_open[click] + 30, "email")
        idx = np.flatnonzero(out.nps)
        add(idx, "nps_response", np.full(len(idx), 23.5 * 3600), "email", score=out.nps_score[idx])
        idx = np.flatnonzero(out.csat)
        add(
            idx, "csat_response", np.full(len(idx), 23.6 * 3600), "email", score=out.csat_score[idx]
        )
        return self._table(parts)

    def _table(self, parts: list[dict[str, object]]) -> pa.Table:
        if not parts:
            return EVENT_SCHEMA.empty_table()
        cols: dict[str, list[pa.Array]] = {name: [] for name in EVENT_SCHEMA.names}
        for p in parts:
            idx = p["idx"]
            n = len(idx)  # type: ignore[arg-type]
            ids = np.arange(self.counter, self.counter + n)
            self.counter += n
            cols["event_id"].append(
                pc.binary_join_element_wise(pa.scalar("E"), pc.cast(pa.array(ids), pa.string()), "")
            )
            cols["customer_id"].append(self.ids.take(pa.array(idx)))
            cols["timestamp"].append(pa.array(p["us"]).cast(pa.timestamp("us", tz="UTC")))
            types = p.get("types")
            cols["event_type"].append(
                pa.array(types) if types is not None else pa.array(np.full(n, p["type"]))
            )
            ch = p["channel"]
            cols["channel"].append(pa.array(np.full(n, ch) if isinstance(ch, str) else ch))
            for name, typ in (
                ("value", pa.float64()),
                ("propensity", pa.float64()),
                ("score", pa.int64()),
            ):
                v = p.get(name)
                cols[name].append(pa.nulls(n, typ) if v is None else pa.array(v, typ))
            for name in ("session", "action_id", "decision_id"):
                v = p.get(name)
                target = "session_id" if name == "session" else name
                cols[target].append(
                    pa.nulls(n, pa.string())
                    if v is None
                    else pa.array(v, pa.string())
                    if not isinstance(v, pa.Array)
                    else v.cast(pa.string())
                )
        return pa.table({k: pa.concat_arrays(v) for k, v in cols.items()}, schema=EVENT_SCHEMA)


def advance(
    world: World,
    pop: Population,
    state: State,
    day: int,
    u: Uniforms,
    actions: np.ndarray,
    incidents: tuple[Incident, ...],
    start: date,
) -> tuple[State, DayOutcome]:
    """One simulated day: today's actions take effect, then every customer lives the day.

    The log and the ground-truth roll-outs both go through here, so truth and log come from
    the same dynamics.
    """
    emails = np.flatnonzero([a.channel == "email" for a in world.actions])
    discount = next((i for i, a in enumerate(world.actions) if a.id == "discount_offer"), -2)
    failure = max([i.rate for i in incidents if i.active(day)], default=world.payment_failure_rate)
    state = apply_actions(pop, state, actions, day, world)
    return step(
        pop,
        state,
        day,
        u,
        actions,
        np.isin(actions, emails),
        season(start + timedelta(days=day)),
        failure,
        discount,
        world.noise,
    )


def _truth_days(days: int, horizon: int, options: TruthOptions) -> list[int]:
    grid = list(range(options.warmup_days, days - horizon + 1, options.every_days))
    return grid[-options.last_cutoffs :] if options.last_cutoffs else []


def _rollout(
    world: World,
    pop: Population,
    state: State,
    cutoff: int,
    seed: int,
    options: TruthOptions,
    journey: JourneyMap,
    start: date,
    incidents: tuple[Incident, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True label probabilities at a cutoff under each arm, by Monte Carlo roll-outs.

    Returns customer indices, p_churn and p_convert under the logging policy, and the
    (n_actions, n) effects on conversion and churn of sending each action instead of none.
    """
    inactivity = journey.churn.inactivity_days or 10**6
    present = np.flatnonzero(
        state.alive
        & (pop.arrival < cutoff)
        & (state.last_activity >= cutoff - inactivity)
        & (state.last_activity >= 0)
    )
    pick = np.random.Generator(np.random.PCG64([seed, cutoff, 3]))
    chosen = np.sort(pick.choice(present, size=min(options.sample, len(present)), replace=False))
    k = options.rollouts
    rep = np.repeat(chosen, k)
    pop_r, state_0 = pop.take(rep), state.take(rep)
    h_churn, h_conv = journey.horizons.churn_days, journey.horizons.conversion_days
    horizon = max(h_churn, h_conv)
    logging = logging_policy(world)
    # Arms: no action, then each action, sent at the cutoff; later decisions follow the
    # logging policy in every arm. The value under the logging policy itself is the mix of
    # these arms with the policy's probabilities at the cutoff (exact in expectation).
    arms = [fixed_policy(NONE)] + [fixed_policy(a) for a in range(len(world.actions))]
    churn_p, conv_p = [], []
    for arm in arms:
        rng = np.random.Generator(np.random.PCG64([seed, cutoff, 7]))  # common random numbers
        st = state_0
        active = np.zeros(len(rep), dtype=bool)
        cancel = np.zeros(len(rep), dtype=bool)
        bought = np.zeros(len(rep), dtype=bool)
        for h in range(horizon):
            d = cutoff + h
            u = Uniforms.draw(rng, len(rep))
            actions = np.full(len(rep), NONE)
            if d % world.decision_every_days == 0:
                obs = observe(pop_r, st, d)
                policy = arm if h == 0 else logging
                chosen_a, _ = policy(obs, u.policy[obs.customers])
                actions[obs.customers] = chosen_a
            st, out = advance(world, pop_r, st, d, u, actions, incidents, start)
            if h < h_churn:
                active |= out.active
                cancel |= out.cancelled
            if h < h_conv:
                bought |= out.purchase.any(axis=1)
        churn = (~active | cancel).reshape(-1, k).mean(axis=1)
        conv = bought.reshape(-1, k).mean(axis=1)
        churn_p.append(churn)
        conv_p.append(conv)
    churn_arms, conv_arms = np.array(churn_p), np.array(conv_p)  # (1 + actions, n)
    if cutoff % world.decision_every_days == 0:
        mix = logging_probabilities(world, observe(pop, state, cutoff)._take(chosen)).T
    else:
        mix = np.zeros_like(churn_arms)
        mix[0] = 1.0
    p_churn = (mix * churn_arms).sum(axis=0)
    p_conv = (mix * conv_arms).sum(axis=0)
    return (chosen, p_churn, p_conv, conv_arms[1:] - conv_arms[0], churn_arms[1:] - churn_arms[0])


def simulate(
    world: World,
    journey: JourneyMap,
    customers: int,
    days: int,
    seed: int,
    start: date = date(2025, 1, 1),
    out: Path | None = None,
    fmt: Literal["parquet", "csv"] = "parquet",
    incidents: tuple[Incident, ...] = (),
    truth: TruthOptions | None = TruthOptions(),
    policy: Policy | None = None,
) -> tuple[SimulationSummary, Outcomes]:
    """Simulates ``customers`` for ``days`` days; writes the log and ground truth to ``out``.

    Deterministic for a seed. ``policy`` decides the marketing actions every
    ``world.decision_every_days`` (default: the randomised logging policy). With ``out=None``
    nothing is written (used to measure a policy's true value).
    """
    if customers <= 0:
        raise SimulationError("--customers must be positive")
    if days <= 0:
        raise SimulationError("--days must be positive")
    started = time.perf_counter()
    if out is not None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    pop = build_population(world, customers, days, rng)
    state = initial_state(pop, rng)
    day_rng = np.random.Generator(np.random.PCG64([seed, 1]))
    width = max(7, len(str(customers)))
    ids = pa.array([f"C{i:0{width}d}" for i in range(customers)])
    policy = policy or logging_policy(world)
    writer = _EventWriter(out, fmt)
    expander = _Expander(world, pop, ids, start, seed)
    costs = np.array([a.cost for a in world.actions] + [0.0])
    horizon = max(journey.horizons.churn_days, journey.horizons.conversion_days)
    truth_days = set(_truth_days(days, horizon, truth)) if truth and out is not None else set()
    outcomes = Outcomes(
        np.zeros(customers),
        np.zeros(customers),
        np.zeros(customers, bool),
        np.zeros(customers),
        np.zeros(customers),
    )
    decisions: list[pa.Table] = []
    truth_rows: list[pa.Table] = []
    effect_rows: list[pa.Table] = []
    n_decisions = 0
    for d in range(days):
        u = Uniforms.draw(day_rng, customers)
        if d in truth_days and truth is not None:
            chosen, p_churn, p_conv, e_conv, e_churn = _rollout(
                world, pop, state, d, seed, truth, journey, start, incidents
            )
            cut = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=d)
            names = np.array([p.name for p in world.personas])
            truth_rows.append(
                pa.table(
                    {
                        "customer_id": ids.take(pa.array(chosen)),
                        "cutoff": pa.array([cut] * len(chosen), pa.timestamp("us", tz="UTC")),
                        "persona": names[pop.persona[chosen]],
                        "bought_before": state.customer[chosen],
                        "p_churn": p_churn,
                        "p_convert": p_conv,
                    }
                )
            )
            for a, action in enumerate(world.actions):
                effect_rows.append(
                    pa.table(
                        {
                            "customer_id": ids.take(pa.array(chosen)),
                            "cutoff": pa.array([cut] * len(chosen), pa.timestamp("us", tz="UTC")),
                            "action_id": [action.id] * len(chosen),
                            "effect_convert": e_conv[a],
                            "effect_churn": e_churn[a],
                            "cost": [action.cost] * len(chosen),
                        }
                    )
                )
        actions = np.full(customers, NONE)
        props = np.zeros(customers)
        decision_ids = None
        if d % world.decision_every_days == 0:
            obs = observe(pop, state, d)
            chosen_a, p = policy(obs, u.policy[obs.customers])
            actions[obs.customers], props[obs.customers] = chosen_a, p
            n_decisions += len(obs.customers)
            decision_ids = pc.binary_join_element_wise(pa.scalar(f"D{d}"), ids, "-")
            if out is not None:
                action_names = np.array([a.id for a in world.actions] + ["none"])
                when = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(
                    days=d, seconds=60
                )
                decisions.append(
                    pa.table(
                        {
                            "decision_id": decision_ids.take(pa.array(obs.customers)),
                            "customer_id": ids.take(pa.array(obs.customers)),
                            "timestamp": pa.array(
                                [when] * len(obs.customers), pa.timestamp("us", tz="UTC")
                            ),
                            "action_id": action_names[chosen_a],
                            "propensity": p,
                        }
                    )
                )
        state, outcome = advance(world, pop, state, d, u, actions, incidents, start)
        arrivals = np.flatnonzero(pop.arrival == d)
        table = expander.expand(d, outcome, actions, props, decision_ids, arrivals)
        writer.add(table)
        bought = outcome.purchase.sum(axis=1)
        outcomes.purchases += bought
        if bought.any():
            buyers = table.filter(pc.equal(table.column("event_type"), "purchase"))
            rev = buyers.group_by("customer_id").aggregate([("value", "sum")])
            index = pc.cast(pc.utf8_slice_codeunits(rev.column("customer_id"), 1), pa.int64())
            np.add.at(outcomes.revenue, index.to_numpy(), rev.column("value_sum").to_numpy())
        outcomes.churned |= outcome.churned
        outcomes.action_cost += costs[actions]
        outcomes.actions_sent += actions != NONE
    writer.close()
    summary = SimulationSummary(
        customers=customers,
        days=days,
        seed=seed,
        start=start.isoformat(),
        events=writer.total,
        event_types=dict(sorted(writer.types.items())),
        churned_customers=int(outcomes.churned.sum()),
        buying_customers=int((outcomes.purchases > 0).sum()),
        decisions=n_decisions,
        actions_sent=int(outcomes.actions_sent.sum()),
        truth_rows=sum(t.num_rows for t in truth_rows),
        seconds=0.0,
    )
    if out is not None:
        _write_outputs(
            out,
            world,
            pop,
            ids,
            start,
            decisions,
            truth_rows,
            effect_rows,
            fmt,
            summary,
            incidents,
            truth,
        )
    summary.seconds = time.perf_counter() - started
    if out is not None:
        _write_world(out, world, summary, incidents, truth)
    logger.info(
        "simulated %d events for %d customers in %.1f s", summary.events, customers, summary.seconds
    )
    return summary, outcomes


def _write_outputs(
    out: Path,
    world: World,
    pop: Population,
    ids: pa.Array,
    start: date,
    decisions: list[pa.Table],
    truth_rows: list[pa.Table],
    effect_rows: list[pa.Table],
    fmt: str,
    summary: SimulationSummary,
    incidents: tuple[Incident, ...],
    truth: TruthOptions | None,
) -> None:
    rng = np.random.Generator(np.random.PCG64([len(pop.persona), 11]))
    n = len(pop.persona)
    seg_rng = np.random.Generator(np.random.PCG64([n, 12]))
    segments = np.empty(n, dtype=object)
    for j, persona in enumerate(world.personas):
        members = np.flatnonzero(pop.persona == j)
        names = list(persona.segments)
        w = np.array([persona.segments[s] for s in names])
        segments[members] = seg_rng.choice(names, size=len(members), p=w / w.sum())
    regions = list(world.regions)
    rw = np.array([world.regions[r] for r in regions])
    first = datetime(start.year, start.month, start.day, tzinfo=UTC)
    signup = [
        first + timedelta(days=int(a), hours=int(h))
        for a, h in zip(pop.arrival, rng.integers(8, 22, n), strict=True)
    ]
    customers = pa.table(
        {
            "customer_id": ids,
            "signup_at": pa.array(signup, pa.timestamp("us", tz="UTC")),
            "segment": pa.array(segments.astype(str)),
            "plan": np.where(pop.premium, "premium", "basic"),
            "region": rng.choice(regions, size=n, p=rw / rw.sum()),
            "marketing_opt_out": rng.random(n) < world.opt_out_share,
        }
    )
    if fmt == "csv":
        pacsv.write_csv(customers, out / "customers.csv")
    else:
        pq.write_table(customers, out / "customers.parquet")
    truth_dir = out / "truth"
    truth_dir.mkdir()
    if decisions:
        pq.write_table(pa.concat_tables(decisions), truth_dir / "decisions.parquet")
    if truth_rows:
        pq.write_table(pa.concat_tables(truth_rows), truth_dir / "customers.parquet")
        pq.write_table(pa.concat_tables(effect_rows), truth_dir / "effects.parquet")
    summary.outputs = {
        "events": str(out / ("events.csv" if fmt == "csv" else "events")),
        "customers": str(out / f"customers.{'csv' if fmt == 'csv' else 'parquet'}"),
        "truth": str(truth_dir),
    }


def _write_world(
    out: Path,
    world: World,
    summary: SimulationSummary,
    incidents: tuple[Incident, ...],
    truth: TruthOptions | None,
) -> None:
    (out / "world.json").write_text(
        json.dumps(
            {
                "summary": asdict(summary),
                "incidents": [asdict(i) for i in incidents],
                "truth": asdict(truth) if truth else None,
                "world": world.model_dump(),
            },
            indent=2,
            default=str,
        )
    )
