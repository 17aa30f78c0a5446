"""Volume limits of a list: at most N customers per action and per channel, assigned so that
the list's total expected incremental value is as large as the limits allow.

The problem: customers ``i``, actions ``a`` (each on one channel ``c(a)``), the net value
``v[i, a]`` (the engine's arbitration priority: uplift × value × lever − cost) of every
eligible action; choose at most one action per customer, at most ``cap[a]`` customers per
limited action and ``cap[c]`` per limited channel, maximising the sum of the chosen values.
Only positive values are candidates (no action is worth 0).

It is solved exactly, in one batch over every customer, as a linear program by
``scipy.optimize.linprog`` (HiGHS's dual simplex). The constraint matrix is totally
unimodular: the customers' "at most one" rows are one laminar family over the variables, the
actions' and channels' rows another (every action belongs to exactly one channel), and two
laminar families form a network matrix; so the optimal vertex the simplex returns is integral,
the optimum of the integer program (checked: a fractional vertex raises). HiGHS's
branch-and-bound (``scipy.optimize.milp``) finds the same optimum but spent minutes on 20,000
customers proving it; the simplex needs seconds.

Three exact reductions shrink the program first:

* actions that use the same limits form a group, and a customer competes only with their best
  action of each group (the same limits for more value);
* every customer has a fallback, their best action that uses no limit (or none, 0), and a
  group is a candidate only where it beats the fallback, by the difference;
* in each group only the largest candidates can be needed (:func:`_shortlist`).

The value given up by the limits is the unconstrained total (everyone's best action) less the
assigned total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, vstack

from serving.actions import Action


class CapacityError(ValueError):
    """A limit that names no action or channel, or that is not a whole number of 0 or more."""


@dataclass(frozen=True)
class Capacity:
    """Per-action and per-channel limits (customers per list)."""

    actions: Mapping[str, int] = field(default_factory=dict)
    channels: Mapping[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.actions or self.channels)

    def merged(self, other: Capacity) -> Capacity:
        """These limits, with ``other``'s where both set one (the command line's over the
        configuration's)."""
        return Capacity({**self.actions, **other.actions}, {**self.channels, **other.channels})

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"actions": dict(self.actions), "channels": dict(self.channels)}


def parse_capacity(items: Iterable[str], actions: Sequence[Action]) -> Capacity:
    """``--capacity NAME=N`` options: ``NAME`` is an action id or a channel of the catalog.

    Raises:
        CapacityError: naming the option, the name and the bound.
    """
    ids = [a.id for a in actions]
    channels = list(dict.fromkeys(a.channel for a in actions))
    by_action: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep:
            raise CapacityError(f"--capacity {item!r}: write NAME=N, e.g. retention_call=200")
        try:
            n = int(count)
        except ValueError:
            raise CapacityError(
                f"--capacity {item!r}: the limit must be a whole number, not {count!r}"
            ) from None
        if n < 0:
            raise CapacityError(f"--capacity {item!r}: the limit must be 0 or more, not {n}")
        if name in ids:
            by_action[name] = n
        elif name in channels:
            by_channel[name] = n
        else:
            raise CapacityError(
                f"--capacity {item!r}: {name!r} is neither an action ({', '.join(ids)}) "
                f"nor a channel ({', '.join(channels)}) of the catalog"
            )
    return Capacity(by_action, by_channel)


@dataclass(frozen=True)
class Assignment:
    """The chosen action of every customer (-1: none) and the totals."""

    choice: np.ndarray  # (n,) column index into the values, or -1
    value: float  # total net value assigned
    unconstrained: float  # total of everyone's best positive value

    @property
    def given_up(self) -> float:
        return self.unconstrained - self.value


def best_choice(values: np.ndarray) -> np.ndarray:
    """Each row's best positive column (ties: the first), -1 when none is positive; NaN is
    not eligible."""
    filled = np.where(np.isnan(values), -np.inf, values)
    best = filled.argmax(axis=1) if values.shape[1] else np.zeros(len(values), dtype=int)
    positive = filled[np.arange(len(values)), best] > 0 if values.shape[1] else best < 0
    return np.where(positive, best, -1)


def assign(
    values: np.ndarray, channels: Sequence[str], ids: Sequence[str], capacity: Capacity
) -> Assignment:
    """The assignment of at most one action per customer that maximises the total net value
    within ``capacity``.

    Args:
        values: (customers, actions) net values, NaN where the action is not eligible.
        channels: each column's channel.
        ids: each column's action id.
    """
    n, k = values.shape
    rows = np.arange(n)
    filled = np.where(np.isnan(values), -np.inf, values)
    best = best_choice(values)
    chosen = best >= 0
    unconstrained = float(values[rows[chosen], best[chosen]].sum())
    # the limits each action uses; actions that use the same limits are one group
    signature = [
        tuple(
            r
            for r, hit in (
                (f"action:{ids[j]}", ids[j] in capacity.actions),
                (f"channel:{channels[j]}", channels[j] in capacity.channels),
            )
            if hit
        )
        for j in range(k)
    ]
    free_cols = [j for j in range(k) if not signature[j]]
    groups = sorted({sig for sig in signature if sig})
    # the fallback of every customer: the best action that uses no limit (or none, 0)
    fallback = np.full(n, -1)
    fallback_value = np.zeros(n)
    if free_cols:
        sub = filled[:, free_cols]
        pick = sub.argmax(axis=1)
        top = sub[rows, pick]
        fallback = np.where(top > 0, np.asarray(free_cols)[pick], -1)
        fallback_value = np.maximum(top, 0.0)
    choice = fallback.copy()
    if groups:
        # within a group only the customer's best action matters (the same limits, more value)
        group_cols = [[j for j in range(k) if signature[j] == g] for g in groups]
        group_best = np.column_stack(
            [np.asarray(cols)[filled[:, cols].argmax(axis=1)] for cols in group_cols]
        )
        gain = filled[rows[:, None], group_best] - fallback_value[:, None]
        ii, gg = _shortlist(gain, groups, capacity)
        if len(ii):
            picked = _solve(gain[ii, gg], ii, gg, groups, capacity)
            choice[ii[picked]] = group_best[ii[picked], gg[picked]]
    assigned = choice >= 0
    value = float(values[rows[assigned], choice[assigned]].sum())
    return Assignment(choice, value, unconstrained)


def _shortlist(
    gain: np.ndarray, groups: Sequence[tuple[str, ...]], capacity: Capacity
) -> tuple[np.ndarray, np.ndarray]:
    """The (customer, group) candidates an optimum needs: positive gains, and in each group
    only the ``cap(g) + sum of the other groups' caps`` largest (``cap(g)``: the group's
    tightest limit). Exact: were a customer below that rank taken in ``g``, one of the
    larger candidates would be at their fallback (at most ``cap(g) - 1`` others are in ``g``,
    at most the other caps elsewhere); swapping the two keeps every limit and loses no value."""
    limits = {
        **{f"action:{a}": c for a, c in capacity.actions.items()},
        **{f"channel:{ch}": c for ch, c in capacity.channels.items()},
    }
    caps = [min(limits[r] for r in g) for g in groups]
    positive = gain > 0
    counts = positive.sum(axis=0)
    reach = [min(int(c), int(n)) for c, n in zip(caps, counts, strict=True)]
    keep_i, keep_g = [], []
    for g in range(len(groups)):
        room = caps[g] + sum(reach) - reach[g]
        cands = np.flatnonzero(positive[:, g])
        if len(cands) > room:
            order = np.argsort(-gain[cands, g], kind="stable")[:room]
            cands = np.sort(cands[order])
        keep_i.append(cands)
        keep_g.append(np.full(len(cands), g))
    return np.concatenate(keep_i), np.concatenate(keep_g)


def _solve(
    gain: np.ndarray,
    customer: np.ndarray,
    group: np.ndarray,
    groups: Sequence[tuple[str, ...]],
    capacity: Capacity,
) -> np.ndarray:
    """Which (customer, group) candidates to take: the linear program over them, solved by
    HiGHS's dual simplex, whose optimal vertex is integral (the matrix is totally unimodular,
    see the module docstring)."""
    m = len(gain)
    _, rows = np.unique(customer, return_inverse=True)
    n = int(rows.max()) + 1
    limits = {
        **{f"action:{a}": c for a, c in capacity.actions.items()},
        **{f"channel:{ch}": c for ch, c in capacity.channels.items()},
    }
    uses = sorted({r for g in groups for r in g})
    blocks = [csr_matrix((np.ones(m), (rows, np.arange(m))), shape=(n, m))]
    upper = [np.ones(n)]
    for r in uses:
        member = np.array([r in g for g in groups], dtype=bool)[group]
        blocks.append(csr_matrix(member.astype(float)[None, :]))
        upper.append(np.array([limits[r]], dtype=float))
    result = linprog(
        -gain,
        A_ub=vstack(blocks).tocsr(),
        b_ub=np.concatenate(upper),
        bounds=(0, 1),
        method="highs-ds",
    )
    if result.x is None:  # cannot happen: taking nothing is always feasible
        raise RuntimeError(f"capacity assignment failed: {result.message}")
    if np.any((result.x > 1e-6) & (result.x < 1 - 1e-6)):
        raise RuntimeError("capacity assignment: the linear program's vertex is not integral")
    picked: np.ndarray = result.x > 0.5
    return picked


def usage(
    choice: np.ndarray, channels: Sequence[str], ids: Sequence[str], capacity: Capacity
) -> dict[str, dict[str, list[int]]]:
    """Each limit's use: ``{"actions": {id: [used, limit]}, "channels": {...}}``."""
    picked = choice[choice >= 0]
    ids_of, channel_of = np.asarray(ids, dtype=object), np.asarray(channels, dtype=object)
    return {
        "actions": {
            a: [int((ids_of[picked] == a).sum()), int(cap)] for a, cap in capacity.actions.items()
        },
        "channels": {
            c: [int((channel_of[picked] == c).sum()), int(cap)]
            for c, cap in capacity.channels.items()
        },
    }
