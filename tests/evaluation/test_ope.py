"""Off-policy estimators on logged bandits whose true policy values are known in closed form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.ope import (
    BanditLog,
    PropensityError,
    evaluate_policy,
    fit_reward_model,
    fixed_policy,
    holdout_lift,
    uniform_policy,
)

# three actions; reward = C[a] + B[a] . x + noise with x ~ N(0, I): V(always a) = C[a]
C = np.array([1.0, 1.5, 0.8])
B = np.array([[0.5, -0.2], [1.0, 0.3], [-0.4, 0.8]])


def logged(seed: int, n: int = 3000, customers: int = 600) -> BanditLog:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, customers, n)
    # a customer's decisions share a persistent part of the context
    base = rng.normal(size=(customers, 2))
    x = base[groups] * 0.8 + rng.normal(size=(n, 2)) * 0.6
    x = x / np.sqrt(0.8**2 + 0.6**2)
    logits = np.column_stack([np.zeros(n), 0.8 * x[:, 0], -0.5 * x[:, 1]])
    mu = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    actions = np.array([rng.choice(3, p=p) for p in mu])
    rewards = C[actions] + np.sum(B[actions] * x, axis=1) + rng.normal(0, 1.0, n)
    return BanditLog(
        ["none", "email", "call"],
        actions,
        mu[np.arange(n), actions],
        rewards,
        groups,
        pd.DataFrame(x, columns=["x0", "x1"]),
    )


def test_estimators_are_unbiased_and_dr_intervals_cover_the_truth() -> None:
    covered = {name: 0 for name in ("ips", "snips", "dr")}
    errors: dict[str, list[float]] = {name: [] for name in covered}
    seeds = 20
    for seed in range(seeds):
        log = logged(seed)
        q = fit_reward_model(log, seed=seed)
        for a, action in enumerate(log.action_ids):
            est = evaluate_policy(log, fixed_policy(log, action), q)
            for name, e in est.items():
                covered[name] += e.covers(C[a])
                errors[name].append(e.value - C[a])
    checks = seeds * 3
    # 95 % intervals: most cover; the doubly robust one is also the tightest
    assert covered["dr"] >= 0.85 * checks, covered
    assert covered["ips"] >= 0.85 * checks, covered
    for name in covered:
        assert abs(np.mean(errors[name])) < 0.05, (name, np.mean(errors[name]))
    assert np.std(errors["dr"]) < np.std(errors["ips"])


def test_on_policy_ips_and_snips_are_the_logged_mean() -> None:
    log = logged(1)
    n = len(log)
    # the target is the logging policy itself: every weight is 1
    target = np.zeros((n, 3))
    target[np.arange(n), log.actions] = log.propensities
    rest = (1 - log.propensities) / 2
    for a in range(3):
        target[:, a] = np.where(log.actions == a, target[:, a], rest)
    est = evaluate_policy(log, target)
    assert est["ips"].value == pytest.approx(log.rewards.mean())
    assert est["snips"].value == pytest.approx(log.rewards.mean())
    assert est["ips"].effective_sample_size == pytest.approx(n)


def test_uniform_policy_value() -> None:
    log = logged(2, n=6000)
    est = evaluate_policy(log, uniform_policy(log), fit_reward_model(log))
    assert est["dr"].covers(C.mean()) or abs(est["dr"].value - C.mean()) < 0.1


def test_intervals_are_clustered_on_customers() -> None:
    log = logged(3)
    doubled = BanditLog(
        log.action_ids,
        np.tile(log.actions, 2),
        np.tile(log.propensities, 2),
        np.tile(log.rewards, 2),
        np.tile(log.groups, 2),
    )
    one = evaluate_policy(log, fixed_policy(log, "email"))["ips"]
    two = evaluate_policy(doubled, fixed_policy(doubled, "email"))["ips"]
    # the same decisions counted twice for the same customers carry no more information
    assert two.std_error == pytest.approx(one.std_error, rel=0.02)


def test_bad_propensities_are_named() -> None:
    log = logged(4, n=50)
    props = log.propensities.copy()
    props[[3, 7]] = 0.0
    with pytest.raises(PropensityError, match=r"2 logged propensities.*rows: 3, 7"):
        BanditLog(log.action_ids, log.actions, props, log.rewards, log.groups)
    with pytest.raises(ValueError, match="probability distribution"):
        evaluate_policy(log, np.ones((50, 3)))


def test_reward_model_is_cross_fitted() -> None:
    log = logged(5, n=2000)
    q = fit_reward_model(log)
    changed = log.rewards.copy()
    changed[0] += 1000.0
    q2 = fit_reward_model(
        BanditLog(log.action_ids, log.actions, log.propensities, changed, log.groups, log.contexts)
    )
    # row 0's own prediction does not see its own reward; rows of the other fold do
    assert q2[0] == pytest.approx(q[0])
    assert not np.allclose(q2, q)


def test_holdout_lift() -> None:
    rng = np.random.default_rng(0)
    lift = holdout_lift(rng.normal(1.3, 1, 4000), rng.normal(1.0, 1, 1000))
    assert lift.low < 0.3 < lift.high and lift.low > 0
    with pytest.raises(ValueError, match="at least two"):
        holdout_lift([1.0], [0.0, 1.0])
