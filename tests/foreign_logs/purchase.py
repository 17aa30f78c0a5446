"""A date-only purchase log from a known BG/NBD process (a retailer's order export).

Columns: ``client`` (opaque id), ``order_date`` (``YYYY-MM-DD``, no time of day), ``amount``
(the order's value), ``shop`` and ``txn`` (always ``order``; ``event_column=None`` leaves it
out, the shape of many real order exports, which the event contract cannot ingest without an
event type column). Each client's first purchase falls in the first
``cohort_days`` of the log (staggered cohorts); from then on purchases follow the BG/NBD
process of :mod:`tests.foreign_logs.bgnbd` with time in days. Two orders of one client on one
day are real orders; when both are the client's usual basket in the same shop, the two rows
are identical in every column.

Truth (``truth/``): ``params.json`` (the population parameters and the log's facts),
``customers.csv`` (each client's hidden ``lam``, ``p``, drop-out time and date),
``cutoff.csv`` (at ``cutoff`` for ``horizon_days``: each client's observed ``x, t_x, T``,
``p_alive`` and ``p_purchase`` under the TRUE parameters — the best probability the history
allows — and the realised label ``purchased``).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tests.foreign_logs.base import ForeignLog, customer_ids, day_strings, write_json, write_log
from tests.foreign_logs.bgnbd import BGNBDParams, p_alive, p_purchase_within, simulate_bgnbd

#: Days as the time unit: a mean rate of r/α = 0.01 purchases a day (3.65 a year) and a mean
#: drop-out probability of a/(a+b) = 0.25 after each repeat purchase.
DEFAULT_PARAMS = BGNBDParams(r=0.6, alpha=60.0, a=0.8, b=2.4)
SHOPS = ("web_shop", "riverside", "old_town", "airport")
COLUMN_MAP = {"client": "customer_id", "order_date": "timestamp", "amount": "value"}
ORDER_EVENT = "order"


def generate_purchase_log(
    out: Path,
    n_customers: int = 500,
    seed: int = 0,
    params: BGNBDParams = DEFAULT_PARAMS,
    start: date = date(2024, 1, 1),
    days: int = 540,
    cohort_days: int = 120,
    horizon_days: int = 90,
    cutoff: date | None = None,
    parquet: bool = False,
    event_column: str | None = "txn",
) -> ForeignLog:
    """Writes ``out/orders.csv`` (and ``.parquet``) and ``out/truth/``.

    Args:
        out: the folder to write.
        n_customers: clients (each makes at least the first purchase).
        seed: everything is a function of the seed.
        params: the BG/NBD population parameters, time in days.
        start: the log's first day; the log covers ``[start, start + days)``.
        cohort_days: first purchases are spread uniformly over these first days.
        horizon_days: the horizon of the truth's purchase probabilities.
        cutoff: the day the truth is computed at (default: ``horizon_days`` before the end, so
            the realised labels are in the log).
        parquet: also write ``orders.parquet``.
        event_column: the column holding the event type (``order`` on every row), or
            ``None`` for none.
    """
    if not 0 < cohort_days < days:
        raise ValueError("cohort_days must be between 0 and days")
    end = start + timedelta(days=days)
    cutoff = cutoff or end - timedelta(days=horizon_days)
    if not start < cutoff <= end:
        raise ValueError(f"cutoff {cutoff} is outside the log ({start} to {end})")
    rng = np.random.default_rng(seed)
    clients = customer_ids("cl", n_customers, rng)
    # Continuous time in days from the log's start; each first purchase inside its day.
    first = rng.integers(0, cohort_days, size=n_customers) + rng.uniform(0, 1, n_customers)
    draw = simulate_bgnbd(rng, params, horizon=days - first)
    owner = np.concatenate([np.arange(n_customers), draw.owner])
    when = np.concatenate([first, first[draw.owner] + draw.times])
    day = np.floor(when).astype(np.int64)

    basket = np.round(rng.gamma(4.0, 12.0, size=n_customers) + 5.0, 2)
    usual = rng.uniform(size=len(owner)) < 0.6
    amount = np.where(
        usual, basket[owner], np.round(basket[owner] * rng.lognormal(0.0, 0.35, len(owner)), 2)
    )
    home = rng.integers(0, len(SHOPS), size=n_customers)
    elsewhere = rng.integers(0, len(SHOPS), size=len(owner))
    shop = np.where(rng.uniform(size=len(owner)) < 0.85, home[owner], elsewhere)

    order = np.lexsort((owner, day))
    frame = pd.DataFrame(
        {
            "client": clients[owner[order]],
            "order_date": day_strings(start, day[order]),
            "amount": amount[order],
            "shop": np.asarray(SHOPS)[shop[order]],
        }
    )
    column_map = dict(COLUMN_MAP)
    if event_column is not None:
        frame[event_column] = ORDER_EVENT
        column_map[event_column] = "event_type"
    csv_path, parquet_path = write_log(frame, out, "orders", parquet)

    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    customers = pd.DataFrame(
        {
            "client": clients,
            "first_order_day": np.floor(first).astype(int),
            "lam": draw.lam,
            "p": draw.p,
            "dropout_day": first + draw.dropout,
            "dropout_date": np.where(
                first + draw.dropout < days,
                day_strings(start, np.floor(np.minimum(first + draw.dropout, days))),
                "",
            ),
            "alive_at_end": first + draw.dropout > days,
        }
    )
    customers.to_csv(truth_dir / "customers.csv", index=False)
    at_cutoff = best_probabilities(frame, cutoff, horizon_days, params)
    hidden = customers.set_index("client").loc[at_cutoff["client"]]
    at_cutoff["alive_at_cutoff"] = (hidden["dropout_day"] > (cutoff - start).days).to_numpy()
    at_cutoff.to_csv(truth_dir / "cutoff.csv", index=False)
    duplicates = int(frame.duplicated().sum())
    facts = {
        "params": params.as_dict(),
        "time_unit": "day",
        "seed": seed,
        "start": start,
        "end": end,
        "cohort_days": cohort_days,
        "n_customers": n_customers,
        "n_orders": len(frame),
        "duplicate_rows": duplicates,
        "same_day_repeat_orders": int(frame.duplicated(["client", "order_date"]).sum()),
        "cutoff": cutoff,
        "horizon_days": horizon_days,
    }
    write_json(truth_dir / "params.json", facts)
    return ForeignLog(
        kind="purchase",
        events_csv=csv_path,
        events_parquet=parquet_path,
        truth_dir=truth_dir,
        column_map=column_map,
        start=start,
        end=end,
        n_customers=n_customers,
        n_events=len(frame),
        params={**params.as_dict(), "seed": seed, "duplicate_rows": duplicates},
        truth={
            "params": truth_dir / "params.json",
            "customers": truth_dir / "customers.csv",
            "cutoff": truth_dir / "cutoff.csv",
        },
        columns=tuple(frame.columns),
        value_column="amount",
        segment_columns=("shop",),
    )


def observed_history(orders: pd.DataFrame, cutoff: date) -> pd.DataFrame:
    """Each client's BG/NBD summary from the orders dated before ``cutoff``.

    ``orders`` has the log's ``client`` and ``order_date`` columns; time is in whole days from
    the first order's day: ``x`` repeat orders, ``t_x`` the last order's day, ``T`` the cutoff.
    Clients whose first order is on or after the cutoff are left out.
    """
    day = (pd.to_datetime(orders["order_date"]) - pd.Timestamp(cutoff)).dt.days.to_numpy()
    seen = pd.DataFrame({"client": orders["client"].to_numpy(), "day": day})[day < 0]
    g = seen.groupby("client", sort=True)["day"]
    summary = pd.DataFrame({"n": g.size(), "first": g.min(), "last": g.max()})
    return pd.DataFrame(
        {
            "client": summary.index.to_numpy(),
            "x": (summary["n"] - 1).to_numpy(dtype=float),
            "t_x": (summary["last"] - summary["first"]).to_numpy(dtype=float),
            "T": (-summary["first"]).to_numpy(dtype=float),
        }
    )


def best_probabilities(
    orders: pd.DataFrame, cutoff: date, horizon_days: int, params: BGNBDParams
) -> pd.DataFrame:
    """At ``cutoff``: each client's history, P(alive), the best P(purchase within the horizon)
    under ``params`` and whether an order followed in ``[cutoff, cutoff + horizon_days)``."""
    history = observed_history(orders, cutoff)
    x, t_x, big_t = (history[c].to_numpy() for c in ("x", "t_x", "T"))
    history["p_alive"] = p_alive(x, t_x, big_t, params)
    history["p_purchase"] = p_purchase_within(horizon_days, x, t_x, big_t, params)
    dates = pd.to_datetime(orders["order_date"])
    upto = pd.Timestamp(cutoff) + pd.Timedelta(days=horizon_days)
    later = set(orders["client"][(dates >= pd.Timestamp(cutoff)) & (dates < upto)])
    history["purchased"] = history["client"].isin(later)
    return history
