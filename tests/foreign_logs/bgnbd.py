"""The BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

A customer's purchases follow a Poisson process with rate ``λ ~ Gamma(r, α)`` while alive;
after each repeat purchase the customer drops out for good with probability ``p ~ Beta(a, b)``.
A history is summarised by ``x`` (repeat purchases), ``t_x`` (time of the last purchase) and
``T`` (time observed), all measured from the first purchase, in the unit of ``α`` (days here).

Functions:
    ``bgnbd_log_likelihood`` — each history's log-likelihood, eq. (6) of the paper with its
    ``x = 0`` term; ``fit_bgnbd`` — the maximum-likelihood population parameters;
    ``p_alive`` — P(alive at T | history); ``p_purchase_within`` — P(at least one purchase in
    ``(T, T + t]`` | history); ``simulate_bgnbd`` — the process itself, vectorised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special


@dataclass(frozen=True)
class BGNBDParams:
    """Population parameters: ``λ ~ Gamma(shape r, rate α)``, ``p ~ Beta(a, b)``."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        """The parameters by name."""
        return asdict(self)


def _arrays(
    x: np.ndarray | float, t_x: np.ndarray | float, big_t: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=float)
    txs = np.asarray(t_x, dtype=float)
    ts = np.asarray(big_t, dtype=float)
    if np.any(xs < 0) or np.any(txs < 0) or np.any(txs > ts + 1e-9):
        raise ValueError("a history needs x >= 0 and 0 <= t_x <= T")
    return np.broadcast_arrays(xs, txs, ts)  # type: ignore[return-value]


def bgnbd_log_likelihood(
    params: BGNBDParams,
    x: np.ndarray | float,
    t_x: np.ndarray | float,
    big_t: np.ndarray | float,
) -> np.ndarray:
    """Each history's log-likelihood under ``params`` (FHL 2005, eq. 6).

    ``L = B(a, b+x)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+T)^(r+x))
    + 1{x>0} · B(a+1, b+x-1)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+t_x)^(r+x))``.
    """
    xs, txs, ts = _arrays(x, t_x, big_t)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    common = special.gammaln(r + xs) - special.gammaln(r) + r * np.log(alpha)
    alive = special.betaln(a, b + xs) - special.betaln(a, b) - (r + xs) * np.log(alpha + ts)
    dropped = np.full_like(xs, -np.inf)
    repeat = xs > 0
    xr = xs[repeat]
    dropped[repeat] = (
        special.betaln(a + 1, b + xr - 1)
        - special.betaln(a, b)
        - (r + xr) * np.log(alpha + txs[repeat])
    )
    return np.asarray(common + np.logaddexp(alive, dropped))


def fit_bgnbd(
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    start: BGNBDParams | None = None,
) -> BGNBDParams:
    """The maximum-likelihood population parameters of the histories (L-BFGS on log scale).

    Raises:
        RuntimeError: the optimiser did not converge.
    """
    xs, txs, ts = _arrays(x, t_x, big_t)
    init = start or BGNBDParams(r=1.0, alpha=float(np.mean(ts)) or 1.0, a=1.0, b=1.0)
    theta0 = np.log([init.r, init.alpha, init.a, init.b])

    def objective(theta: np.ndarray) -> float:
        p = BGNBDParams(*np.exp(np.clip(theta, -20, 20)))
        return -float(np.sum(bgnbd_log_likelihood(p, xs, txs, ts))) / len(xs)

    result = optimize.minimize(objective, theta0, method="L-BFGS-B")
    if not result.success and not np.isfinite(result.fun):
        raise RuntimeError(f"BG/NBD fit did not converge: {result.message}")
    return BGNBDParams(*(float(v) for v in np.exp(result.x)))


def p_alive(
    x: np.ndarray | float,
    t_x: np.ndarray | float,
    big_t: np.ndarray | float,
    params: BGNBDParams,
) -> np.ndarray:
    """P(alive at T | x, t_x, T): ``1 / (1 + 1{x>0} · a/(b+x-1) · ((α+T)/(α+t_x))^(r+x))``."""
    xs, txs, ts = _arrays(x, t_x, big_t)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    odds = np.zeros_like(xs)
    repeat = xs > 0
    xr = xs[repeat]
    odds[repeat] = np.exp(
        np.log(a)
        - np.log(b + xr - 1)
        + (r + xr) * (np.log(alpha + ts[repeat]) - np.log(alpha + txs[repeat]))
    )
    return np.asarray(1.0 / (1.0 + odds))


def p_purchase_within(
    t: float,
    x: np.ndarray | float,
    t_x: np.ndarray | float,
    big_t: np.ndarray | float,
    params: BGNBDParams,
) -> np.ndarray:
    """P(at least one purchase in ``(T, T + t]`` | x, t_x, T).

    Given alive at T, ``λ | history ~ Gamma(r + x, α + T)``, and the first purchase after T
    comes before any drop-out (drop-out follows a purchase), so the probability is
    ``P(alive) · (1 − ((α+T)/(α+T+t))^(r+x))``.
    """
    if t < 0:
        raise ValueError("the horizon t must be >= 0")
    xs, _, ts = _arrays(x, t_x, big_t)
    alive = p_alive(x, t_x, big_t, params)
    no_purchase = np.exp(
        (params.r + xs) * (np.log(params.alpha + ts) - np.log(params.alpha + ts + t))
    )
    return np.asarray(alive * (1.0 - no_purchase))


@dataclass(frozen=True)
class BGNBDDraw:
    """One draw of the process for ``n`` customers, times from each first purchase.

    Attributes:
        lam: each customer's purchase rate.
        p: each customer's drop-out probability after a repeat purchase.
        dropout: the time at which each customer drops out (may lie past the horizon).
        owner: the customer of each repeat purchase (sorted by customer, then time).
        times: the time of each repeat purchase, within the customer's horizon.
    """

    lam: np.ndarray
    p: np.ndarray
    dropout: np.ndarray
    owner: np.ndarray
    times: np.ndarray


def simulate_bgnbd(rng: np.random.Generator, params: BGNBDParams, horizon: np.ndarray) -> BGNBDDraw:
    """Draws the process for ``len(horizon)`` customers over ``[0, horizon_i]`` each.

    Vectorised: a customer's repeat purchases before the horizon are the ``N ~ Poisson(λ·h)``
    sorted uniform points of ``[0, h]``; she drops out after her ``K ~ Geometric(p)``-th repeat
    purchase, so only the first ``min(K, N)`` are made. When ``K > N`` the drop-out time lies
    past the horizon: ``h + Gamma(K − N, λ)`` (memorylessness).
    """
    h = np.asarray(horizon, dtype=float)
    n = len(h)
    lam = rng.gamma(params.r, 1.0 / params.alpha, size=n)
    p = np.clip(rng.beta(params.a, params.b, size=n), 1e-12, 1.0)
    k = rng.geometric(p)
    counts = rng.poisson(lam * h)
    owner_all = np.repeat(np.arange(n), counts)
    times_all = rng.uniform(0.0, 1.0, size=len(owner_all)) * h[owner_all]
    order = np.lexsort((times_all, owner_all))
    owner_all, times_all = owner_all[order], times_all[order]
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(owner_all)) - first[owner_all]
    made = rank < k[owner_all]
    dropout = np.empty(n)
    within = k <= counts
    idx = np.flatnonzero(within)
    dropout[idx] = times_all[first[idx] + k[idx] - 1]
    later = ~within
    dropout[later] = h[later] + rng.gamma(
        (k[later] - counts[later]).astype(float), 1.0 / np.maximum(lam[later], 1e-300)
    )
    return BGNBDDraw(lam=lam, p=p, dropout=dropout, owner=owner_all[made], times=times_all[made])


def summarise_history(
    owner: np.ndarray, times: np.ndarray, n: int, big_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, t_x, T)`` per customer from repeat-purchase times up to each ``T`` (inclusive)."""
    ts = np.asarray(big_t, dtype=float)
    seen = times <= ts[owner]
    x = np.bincount(owner[seen], minlength=n).astype(float)
    t_x = np.zeros(n)
    np.maximum.at(t_x, owner[seen], times[seen])
    return x, t_x, ts
