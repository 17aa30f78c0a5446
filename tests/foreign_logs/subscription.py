"""A subscription service's account log: explicit cancellations, plan changes and invoices.

Columns: ``account``, ``ts`` (``YYYY-MM-DD HH:MM:SS``, naive UTC), ``kind``, ``tier`` (basic,
pro, team: the plan at the time of the row) and ``amount`` (on ``invoice_paid`` only).
Kinds: ``account_opened``, ``sign_in``, ``usage``, ``plan_upgrade``, ``plan_downgrade``,
``invoice_paid``, ``charge_failed``, ``cancel``, ``reactivate``.

Each account has a latent engagement (a random walk; for a share of accounts it drifts down)
that drives its daily usage. The daily hazard of cancelling rises with low engagement, with a
recent decline of it and with failed charges in the last 30 days, so a model can learn churn
from the usage it sees and the failed payments; three failed charges in a row cancel the
account (involuntary churn). A cancelled account may come back (``reactivate``). Invoices are
monthly from the opening day; a failed charge is retried three days later.

Truth (``truth/``): ``accounts.csv`` (opening day, card risk, drift of engagement),
``cancellations.csv`` (every cancellation: day, time, cause, reactivation day) and
``params.json`` (the hazard's coefficients and the log's facts).
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tests.foreign_logs.base import ForeignLog, customer_ids, time_strings, write_json, write_log

KINDS: tuple[str, ...] = (
    "account_opened", "sign_in", "usage", "plan_upgrade", "plan_downgrade", "invoice_paid",
    "charge_failed", "cancel", "reactivate",
)  # fmt: skip
TIERS: tuple[str, ...] = ("basic", "pro", "team")
PRICES: tuple[float, ...] = (9.0, 29.0, 79.0)
COLUMN_MAP = {"account": "customer_id", "ts": "timestamp", "kind": "event_type", "amount": "value"}
#: Daily cancellation hazard: base · exp(low · (−z) + decline · (z̄ − z) + failed · n_failed_30d).
HAZARD = {"base": 0.0005, "low": 0.9, "decline": 3.0, "failed": 1.5}
WEEKDAY_USAGE = (1.0, 1.0, 1.0, 1.0, 0.95, 0.4, 0.35)
BILLING_DAYS = 30
RETRY_DAYS = 3
MAX_FAILED_CHARGES = 3


def generate_subscription_log(
    out: Path,
    n_accounts: int = 400,
    seed: int = 0,
    start: date = date(2024, 7, 1),
    days: int = 365,
    usage_per_day: float = 0.4,
    parquet: bool = False,
) -> ForeignLog:
    """Writes ``out/accounts_log.csv`` (and ``.parquet``) and ``out/truth/``.

    Args:
        out: the folder to write.
        n_accounts: accounts (20 % open on the first day, the rest over the first 80 %).
        seed: everything is a function of the seed.
        start: the log's first day; the log covers ``[start, start + days)``.
        usage_per_day: mean usage events a working day at average engagement.
    """
    rng = np.random.default_rng(seed)
    accounts = customer_ids("acct", n_accounts, rng)
    opened = np.where(
        rng.uniform(size=n_accounts) < 0.2, 0, rng.integers(0, int(days * 0.8), n_accounts)
    )
    tier = rng.choice(3, size=n_accounts, p=[0.6, 0.3, 0.1])
    card_risk = rng.beta(1.0, 10.0, n_accounts)
    decliner = rng.uniform(size=n_accounts) < 0.3
    drift = np.where(decliner, -rng.uniform(0.01, 0.03, n_accounts), 0.0)
    z = rng.normal(0.0, 0.5, n_accounts)
    z_bar = z.copy()
    state = np.zeros(n_accounts, dtype=np.int8)  # 0 not yet, 1 active, 2 cancelled
    next_bill = opened.copy()
    failed_run = np.zeros(n_accounts, dtype=np.int64)
    failed_days: list[np.ndarray] = []  # per day, accounts whose charge failed
    cancelled_on = np.full(n_accounts, -1)
    weekday0 = (np.datetime64(start, "D").astype("int64") + 3) % 7

    ev: dict[str, list[np.ndarray]] = {"acct": [], "sec": [], "kind": [], "tier": [], "amt": []}
    cancellations: list[tuple[int, int, int, str]] = []  # account, day, second, cause
    reactivations: list[tuple[int, int]] = []

    def emit(
        who: np.ndarray, day: int, sec: np.ndarray, kind: str, amount: np.ndarray | None
    ) -> None:
        ev["acct"].append(who)
        ev["sec"].append(day * 86400 + sec)
        ev["kind"].append(np.full(len(who), KINDS.index(kind), dtype=np.int8))
        ev["tier"].append(tier[who].copy())
        ev["amt"].append(np.full(len(who), np.nan) if amount is None else amount)

    def clock(n: int, low_h: float, high_h: float) -> np.ndarray:
        return rng.integers(int(low_h * 3600), int(high_h * 3600), n)

    for day in range(days):
        new = np.flatnonzero(opened == day)
        state[new] = 1
        t_new = clock(len(new), 8, 22)
        emit(new, day, t_new, "account_opened", None)
        emit(new, day, t_new + 60, "invoice_paid", np.asarray(PRICES)[tier[new]])
        next_bill[new] = day + BILLING_DAYS

        active = np.flatnonzero((state == 1) & (opened < day))
        noise = rng.normal(0.0, 0.06, len(active))
        z[active] += drift[active] + noise
        z_bar[active] = 0.96 * z_bar[active] + 0.04 * z[active]

        rate = usage_per_day * np.exp(z[active]) * WEEKDAY_USAGE[(weekday0 + day) % 7]
        n_use = rng.poisson(rate)
        users = active[n_use > 0]
        t_in = clock(len(users), 7, 21)
        emit(users, day, t_in, "sign_in", None)
        reps = n_use[n_use > 0]
        who = np.repeat(users, reps)
        emit(who, day, np.repeat(t_in, reps) + rng.integers(60, 7200, len(who)), "usage", None)

        due = active[next_bill[active] == day]
        fails = rng.uniform(size=len(due)) < card_risk[due] * (1 + failed_run[due])
        paid, failed = due[~fails], due[fails]
        emit(paid, day, clock(len(paid), 3, 4), "invoice_paid", np.asarray(PRICES)[tier[paid]])
        failed_run[paid] = 0
        next_bill[paid] = day + BILLING_DAYS
        emit(failed, day, clock(len(failed), 3, 4), "charge_failed", None)
        failed_run[failed] += 1
        next_bill[failed] = day + RETRY_DAYS
        failed_days.append(failed)

        recent = np.zeros(n_accounts)
        for f in failed_days[-30:]:
            recent[f] += 1
        hazard = HAZARD["base"] * np.exp(
            HAZARD["low"] * -z[active]
            + HAZARD["decline"] * (z_bar[active] - z[active])
            + HAZARD["failed"] * recent[active]
        )
        involuntary = active[failed_run[active] >= MAX_FAILED_CHARGES]
        voluntary = active[(rng.uniform(size=len(active)) < hazard)]
        voluntary = np.setdiff1d(voluntary, involuntary)
        for group, cause in ((voluntary, "voluntary"), (involuntary, "payment")):
            t_c = clock(len(group), 8, 23) if cause == "voluntary" else clock(len(group), 4, 5)
            emit(group, day, t_c, "cancel", None)
            state[group] = 2
            cancelled_on[group] = day
            failed_run[group] = 0
            cancellations.extend(
                (int(a), day, int(t), cause) for a, t in zip(group, t_c, strict=True)
            )

        stay = np.setdiff1d(active, np.concatenate([voluntary, involuntary]))
        up = stay[(tier[stay] < 2) & (rng.uniform(size=len(stay)) < 0.002 * np.exp(z[stay]))]
        down = stay[(tier[stay] > 0) & (rng.uniform(size=len(stay)) < 0.002 * np.exp(-z[stay]))]
        down = np.setdiff1d(down, up)
        tier[up] += 1
        emit(up, day, clock(len(up), 9, 20), "plan_upgrade", None)
        tier[down] -= 1
        emit(down, day, clock(len(down), 9, 20), "plan_downgrade", None)

        gone = np.flatnonzero((state == 2) & (cancelled_on < day) & (day - cancelled_on <= 120))
        back = gone[rng.uniform(size=len(gone)) < 0.003]
        state[back] = 1
        z[back] = rng.normal(0.0, 0.5, len(back))
        z_bar[back] = z[back]
        t_back = clock(len(back), 8, 22)
        emit(back, day, t_back, "reactivate", None)
        emit(back, day, t_back + 60, "invoice_paid", np.asarray(PRICES)[tier[back]])
        next_bill[back] = day + BILLING_DAYS
        reactivations.extend((int(a), day) for a in back)

    who = np.concatenate(ev["acct"])
    sec = np.concatenate(ev["sec"])
    kind = np.concatenate(ev["kind"])
    order = np.lexsort((kind, sec, who))
    who, sec, kind = who[order], sec[order], kind[order]
    frame = pd.DataFrame(
        {
            "account": accounts[who],
            "ts": time_strings(start, sec, "%Y-%m-%d %H:%M:%S"),
            "kind": np.asarray(KINDS)[kind],
            "tier": np.asarray(TIERS)[np.concatenate(ev["tier"])[order]],
            "amount": np.concatenate(ev["amt"])[order],
        }
    )
    # Two usage rows of one account in the same second would be one event to any reader.
    frame = frame.iloc[np.argsort(sec, kind="stable")].drop_duplicates(ignore_index=True)
    csv_path, parquet_path = write_log(frame, out, "accounts_log", parquet)

    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "account": accounts,
            "opened_day": opened,
            "opened_date": (np.datetime64(start, "D") + opened).astype(str),
            "card_risk": card_risk,
            "engagement_drift": drift,
            "decliner": decliner,
        }
    ).to_csv(truth_dir / "accounts.csv", index=False)
    cancel = pd.DataFrame(cancellations, columns=["a", "cancel_day", "second", "cause"])
    cancel["account"] = accounts[cancel["a"].to_numpy(dtype=int)]
    cancel["cancel_ts"] = (
        pd.Timestamp(start)
        + pd.to_timedelta(cancel["cancel_day"] * 86400 + cancel["second"], unit="s")
    ).dt.strftime("%Y-%m-%d %H:%M:%S")
    back_days = pd.DataFrame(reactivations, columns=["a", "reactivated_day"])
    cancel = cancel.sort_values(["a", "cancel_day"])
    back_days = back_days.sort_values(["a", "reactivated_day"])
    cancel = pd.merge_asof(
        cancel.sort_values("cancel_day"),
        back_days.sort_values("reactivated_day"),
        left_on="cancel_day",
        right_on="reactivated_day",
        by="a",
        direction="forward",
        allow_exact_matches=False,
    )
    cancel[["account", "cancel_day", "cancel_ts", "cause", "reactivated_day"]].sort_values(
        ["cancel_day", "account"]
    ).to_csv(truth_dir / "cancellations.csv", index=False)
    end = start + timedelta(days=days)
    write_json(
        truth_dir / "params.json",
        {
            "seed": seed,
            "start": start,
            "end": end,
            "n_accounts": n_accounts,
            "n_events": len(frame),
            "hazard": HAZARD,
            "hazard_formula": "base * exp(low * -z + decline * (z_bar - z) + failed * "
            "charges_failed_in_last_30_days), z the latent engagement, z_bar its slow average",
            "max_failed_charges": MAX_FAILED_CHARGES,
            "billing_days": BILLING_DAYS,
            "retry_days": RETRY_DAYS,
            "prices": dict(zip(TIERS, PRICES, strict=True)),
            "monthly_base_churn": 1 - math.exp(-30 * HAZARD["base"]),
            "cancellations": len(cancel),
            "reactivations": len(back_days),
        },
    )
    return ForeignLog(
        kind="subscription",
        events_csv=csv_path,
        events_parquet=parquet_path,
        truth_dir=truth_dir,
        column_map=dict(COLUMN_MAP),
        start=start,
        end=end,
        n_customers=int(frame["account"].nunique()),
        n_events=len(frame),
        params={"seed": seed, "n_accounts": n_accounts, **HAZARD},
        truth={
            "accounts": truth_dir / "accounts.csv",
            "cancellations": truth_dir / "cancellations.csv",
            "params": truth_dir / "params.json",
        },
        columns=tuple(frame.columns),
        value_column="amount",
        segment_columns=("tier",),
    )
