"""Volume limits of a list: the assignment is optimal (against a brute force over every
assignment of tiny cases), respects every limit, and beats ranking by risk under the same
limits; the list applies the limits of the catalog and of ``--capacity``."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.actions import Action
from serving.capacity import Capacity, CapacityError, assign, parse_capacity
from serving.engine import NO_ACTION
from serving.lists import batch_engine, churn_risk_list
from tests.serving.conftest import ServingWorkspace, serving_settings

IDS = ["call", "email_a", "email_b"]
CHANNELS = ["phone", "email", "email"]


def brute_force(values: np.ndarray, capacity: Capacity) -> float:
    """The best total over every assignment of at most one action per customer."""
    n, k = values.shape
    best = 0.0
    for pick in itertools.product(range(-1, k), repeat=n):
        used_a: dict[str, int] = {}
        used_c: dict[str, int] = {}
        total = 0.0
        ok = True
        for i, j in enumerate(pick):
            if j < 0:
                continue
            if np.isnan(values[i, j]):
                ok = False
                break
            total += values[i, j]
            used_a[IDS[j]] = used_a.get(IDS[j], 0) + 1
            used_c[CHANNELS[j]] = used_c.get(CHANNELS[j], 0) + 1
        ok = ok and all(used_a.get(a, 0) <= c for a, c in capacity.actions.items())
        ok = ok and all(used_c.get(ch, 0) <= c for ch, c in capacity.channels.items())
        if ok:
            best = max(best, total)
    return best


def within(choice: np.ndarray, capacity: Capacity) -> bool:
    picked = [j for j in choice if j >= 0]
    return all(sum(IDS[j] == a for j in picked) <= c for a, c in capacity.actions.items()) and all(
        sum(CHANNELS[j] == ch for j in picked) <= c for ch, c in capacity.channels.items()
    )


def risk_first(values: np.ndarray, risk: np.ndarray, capacity: Capacity) -> np.ndarray:
    """Ranking by risk: down the list, each customer's best action that still has room."""
    choice = np.full(len(values), -1)
    for i in np.argsort(-risk, kind="stable"):
        for j in np.argsort(-np.nan_to_num(values[i], nan=-np.inf), kind="stable"):
            if not values[i, j] > 0:
                break
            choice[i] = j
            if within(choice, capacity):
                break
            choice[i] = -1
    return choice


def total(values: np.ndarray, choice: np.ndarray) -> float:
    return float(sum(values[i, j] for i, j in enumerate(choice) if j >= 0))


@pytest.mark.parametrize("seed", range(12))
def test_the_assignment_is_the_best_within_every_limit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6
    values = rng.normal(1.0, 2.0, size=(n, 3)).round(2)
    values[rng.random((n, 3)) < 0.25] = np.nan  # not eligible
    capacity = Capacity(
        {"call": int(rng.integers(0, 3))} if seed % 2 else {},
        {"email": int(rng.integers(0, 4))} if seed % 3 else {"phone": 1},
    )
    got = assign(values, CHANNELS, IDS, capacity)
    assert within(got.choice, capacity)
    assert all(j < 0 or values[i, j] > 0 for i, j in enumerate(got.choice))
    assert got.value == pytest.approx(total(values, got.choice))
    assert got.value == pytest.approx(brute_force(values, capacity), abs=1e-9)
    # everyone's best, no limit: the value given up is what the limits cost
    free = brute_force(values, Capacity())
    assert got.unconstrained == pytest.approx(free)
    assert got.given_up == pytest.approx(free - got.value)
    risk = rng.random(n)
    assert got.value >= total(values, risk_first(values, risk, capacity)) - 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_the_reductions_keep_the_optimum_of_the_full_program(seed: int) -> None:
    """Against the integer program over every positive (customer, action) pair, unreduced,
    solved by branch and bound (scipy's milp): small limits make the shortlist cut."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix, vstack

    rng = np.random.default_rng(seed)
    n = 300
    values = rng.normal(0.5, 2.0, size=(n, 3))
    values[rng.random((n, 3)) < 0.3] = np.nan
    capacity = Capacity({"call": int(rng.integers(3, 15))}, {"email": int(rng.integers(5, 30))})
    ii, jj = np.nonzero(np.nan_to_num(values, nan=-1.0) > 0)
    gain = values[ii, jj]
    m = len(gain)
    rows = [csr_matrix((np.ones(m), (ii, np.arange(m))), shape=(n, m))]
    rows.append(csr_matrix((jj == 0).astype(float)[None, :]))
    rows.append(csr_matrix((jj > 0).astype(float)[None, :]))
    upper = np.concatenate([np.ones(n), [capacity.actions["call"], capacity.channels["email"]]])
    full = milp(
        -gain,
        constraints=LinearConstraint(vstack(rows), -np.inf, upper),
        integrality=np.ones(m),
        bounds=Bounds(0, 1),
    )
    got = assign(values, CHANNELS, IDS, capacity)
    assert within(got.choice, capacity)
    assert got.value == pytest.approx(-full.fun, rel=1e-9)


def test_the_assignment_beats_ranking_by_risk() -> None:
    # the riskiest customers are lost causes (a call gains little), the others persuadable
    rng = np.random.default_rng(4)
    n = 400
    risk = rng.random(n)
    call = np.where(risk > 0.7, rng.uniform(0.1, 1.0, n), rng.uniform(2.0, 9.0, n))
    email = rng.uniform(0.05, 1.5, n)
    values = np.column_stack([call, email, np.where(rng.random(n) < 0.5, email * 0.8, np.nan)])
    capacity = Capacity({"call": 40}, {"email": 150})
    got = assign(values, CHANNELS, IDS, capacity)
    by_risk = risk_first(values, risk, capacity)
    assert within(got.choice, capacity) and within(by_risk, capacity)
    assert sum(j == 0 for j in got.choice) == 40
    assert got.value > 1.2 * total(values, by_risk)


def test_capacity_options_name_an_action_or_a_channel() -> None:
    actions = [
        Action(id="call", channel="phone", cost=1, value=2, objective="retain"),
        Action(id="mail", channel="email", cost=1, value=2, objective="retain"),
    ]
    got = parse_capacity(["call=200", "email=1000"], actions)
    assert got.actions == {"call": 200} and got.channels == {"email": 1000}
    with pytest.raises(CapacityError, match="neither an action"):
        parse_capacity(["sms=3"], actions)
    with pytest.raises(CapacityError, match="whole number"):
        parse_capacity(["call=many"], actions)
    with pytest.raises(CapacityError, match="0 or more"):
        parse_capacity(["call=-1"], actions)
    with pytest.raises(CapacityError, match="NAME=N"):
        parse_capacity(["call"], actions)


def test_the_list_assigns_within_the_limits(serving_ws: ServingWorkspace, tmp_path: Path) -> None:
    now = datetime(2025, 7, 23, 9, 30, tzinfo=UTC)
    settings = serving_settings(
        serving_ws, tmp_path, exploration={"epsilon": 0.0}, holdout={"share": 0.1, "salt": "t"}
    )
    engine = batch_engine(settings)
    snapshots = serving_ws.sim.root / "features" / "journey_features"
    try:
        free = churn_risk_list(engine, snapshots, tmp_path / "free", now=now)
        unlimited = pd.read_parquet(tmp_path / "free" / "churn_risk.parquet")
        counts = unlimited["recommended_action"].value_counts()
        busiest = str(counts.drop(NO_ACTION).index[0])
        email = int((unlimited["channel"] == "email").sum())
        limits = Capacity({busiest: int(counts[busiest]) // 3}, {"email": email // 2})
        capped = churn_risk_list(engine, snapshots, tmp_path / "cap", now=now, capacity=limits)
    finally:
        engine.state.close()
    listed = pd.read_parquet(tmp_path / "cap" / "churn_risk.parquet")
    assert (listed["recommended_action"] == busiest).sum() <= limits.actions[busiest]
    assert (listed["channel"] == "email").sum() <= limits.channels["email"]
    assert not listed.loc[listed["holdout"], "channel"].notna().any()
    assert sorted(listed["customer_id"]) == sorted(unlimited["customer_id"])
    # the value given up is what the unconstrained list had more
    given_up = free.incremental_value - capped.incremental_value
    assert capped.capacity["value_given_up"] == pytest.approx(given_up, abs=1e-6)
    assert capped.capacity["value_given_up"] > 0
    assert capped.capacity["used"]["channels"]["email"] == [
        int((listed["channel"] == "email").sum()),
        limits.channels["email"],
    ]
    # ranking by risk and cutting at the limits: down the risk order, a customer keeps the
    # recommended action while its action and channel have room
    ranked = unlimited.sort_values("churn_risk", ascending=False, kind="stable")
    room_a, room_c = dict(limits.actions), dict(limits.channels)
    kept = 0.0
    for row in ranked.itertuples():
        a, ch = row.recommended_action, row.channel
        if a == NO_ACTION or room_a.get(a, 1) < 1 or room_c.get(ch, 1) < 1:
            continue
        if a in room_a:
            room_a[a] -= 1
        if ch in room_c:
            room_c[ch] -= 1
        kept += row.incremental_value
    assert capped.incremental_value > kept
