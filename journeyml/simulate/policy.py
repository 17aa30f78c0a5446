"""Policies that decide the marketing actions inside the simulator.

A policy is any callable ``policy(obs, u) -> (actions, propensities)``: it receives an
:class:`Observation` of the customers due a decision (everyone who has signed up and not
cancelled, every ``policy.every_days`` days) and one uniform random number per customer, and
returns per customer an action index into ``World.actions`` (``NONE`` for no action) and the
probability with which it chose it. Randomised policies should draw from ``u`` rather than
their own generator: the run stays deterministic for a seed, and ground-truth roll-outs and
runs of different policies then share their random numbers.

The logging policy that writes the log is one such policy (:func:`logging_policy`); evaluation
runs :func:`fixed_policy`, :func:`random_policy`, an oracle or a learned policy the same way.
Policies that also expose ``probabilities(obs)`` (the full distribution over none + actions)
get exact mixtures in ground truth instead of a Monte Carlo arm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import pandas as pd

from journeyml.simulate.engine import (
    NEVER,
    NONE,
    Array,
    Params,
    Population,
    SimulationError,
    State,
)
from journeyml.simulate.world import POLICY_FEATURES, World

__all__ = [
    "NONE",
    "Latent",
    "Observation",
    "Policy",
    "check_decision",
    "fixed_policy",
    "logging_policy",
    "observe",
    "random_policy",
]


@dataclass(frozen=True)
class Latent:
    """Hidden state of the observed customers: only for oracle policies and evaluation.

    A policy meant to be learned from the log must not read it.
    """

    persona: Array
    stage: Array
    engagement: Array
    satisfaction: Array
    alive: Array


@dataclass(frozen=True)
class Observation:
    """What a policy may see about the customers it decides for: the log's view of them.

    Recency columns are days since the customer's latest such event in the log, NaN when there
    is none. ``eligible`` is (customers, actions): marketing actions are not allowed for
    customers who opted out of marketing (``NONE`` is always allowed).
    """

    day: int
    customers: Array  # positions in the simulated arrays
    customer_index: Array  # row in the customers table (C%07d)
    tenure_days: Array
    premium: Array
    marketing_opt_out: Array
    segment: Array  # codes into segment_names
    region: Array
    segment_names: tuple[str, ...]
    region_names: tuple[str, ...]
    purchases: Array
    days_since_activity: Array
    days_since_purchase: Array
    days_since_complaint: Array
    days_since_failure: Array
    days_since_action: Array
    recent_complaints: Array
    recent_failures: Array
    recent_sessions: Array
    eligible: Array
    latent: Latent
    id_width: int = 7

    def __len__(self) -> int:
        return len(self.customers)

    def take(self, positions: Array) -> Observation:
        """The observation of some of its customers (positions into its arrays)."""
        values: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = value[positions]
            elif isinstance(value, Latent):
                value = Latent(**{g.name: getattr(value, g.name)[positions] for g in fields(value)})
            values[f.name] = value
        return Observation(**values)  # type: ignore[arg-type]

    @property
    def bought_before(self) -> Array:
        return self.purchases > 0

    def features(self) -> dict[str, Array]:
        """The binary features the logging policy scores (``World.policy.scores``)."""
        since_p = np.nan_to_num(self.days_since_purchase, nan=np.inf)
        feats = {
            "intercept": np.ones(len(self), dtype=bool),
            "new_customer": self.tenure_days < 30,
            "never_bought": self.purchases == 0,
            "lapsed_buyer": (self.purchases > 0) & (since_p > 30),
            "repeat_buyer": self.purchases >= 2,
            "recent_complaint": np.nan_to_num(self.days_since_complaint, nan=np.inf) <= 14,
            "recent_failure": np.nan_to_num(self.days_since_failure, nan=np.inf) <= 14,
            "inactive_14d": np.nan_to_num(self.days_since_activity, nan=np.inf) > 14,
            "premium": self.premium,
        }
        return feats

    def to_frame(self) -> pd.DataFrame:
        """The observable columns as a frame (for learned policies), one row per customer."""
        return pd.DataFrame(
            {
                "customer_id": [f"C{i:0{self.id_width}d}" for i in self.customer_index],
                "tenure_days": self.tenure_days,
                "plan": np.where(self.premium, "premium", "basic"),
                "marketing_opt_out": self.marketing_opt_out,
                "segment": np.array(self.segment_names)[self.segment],
                "region": np.array(self.region_names)[self.region],
                "purchases": self.purchases,
                "days_since_activity": self.days_since_activity,
                "days_since_purchase": self.days_since_purchase,
                "days_since_complaint": self.days_since_complaint,
                "days_since_failure": self.days_since_failure,
                "days_since_action": self.days_since_action,
                "recent_complaints": self.recent_complaints,
                "recent_failures": self.recent_failures,
                "recent_sessions": self.recent_sessions,
            }
        )


Policy = Callable[[Observation, Array], tuple[Array, Array]]


class DistributionPolicy(Protocol):
    """A policy that can also give its whole distribution: (customers, 1 + actions), column 0
    for no action."""

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]: ...

    def probabilities(self, obs: Observation) -> Array: ...


def observe(params: Params, pop: Population, state: State, day: int) -> Observation:
    """The customers due a decision on ``day`` (signed up before it, not cancelled) as the
    log shows them. Silent churn is invisible: such customers still get decisions."""
    idx = np.flatnonzero((pop.arrival < day) & ~state.cancelled)

    def since(last: Array) -> Array:
        values = last[idx]
        return np.where(values == NEVER, np.nan, day - values).astype(np.float64)

    eligible = np.ones((len(idx), len(params.action_cost)), dtype=bool)
    eligible[pop.opt_out[idx]] = ~params.action_marketing
    return Observation(
        day=day,
        customers=idx,
        customer_index=pop.number[idx],
        tenure_days=day - pop.arrival[idx],
        premium=pop.premium[idx],
        marketing_opt_out=pop.opt_out[idx],
        segment=pop.segment[idx],
        region=pop.region[idx],
        segment_names=params.segment_names,
        region_names=params.region_names,
        purchases=state.purchases[idx],
        days_since_activity=since(state.last_activity),
        days_since_purchase=since(state.last_purchase),
        days_since_complaint=since(state.last_complaint),
        days_since_failure=since(state.last_failure),
        days_since_action=since(state.last_action),
        recent_complaints=state.recent_complaints[idx],
        recent_failures=state.recent_failures[idx],
        recent_sessions=state.recent_sessions[idx],
        eligible=eligible,
        latent=Latent(
            persona=pop.persona[idx],
            stage=state.stage[idx],
            engagement=state.engagement[idx],
            satisfaction=state.satisfaction[idx],
            alive=state.alive[idx],
        ),
        id_width=pop.id_width,
    )


def sample_from(probabilities: Array, u: Array) -> tuple[Array, Array]:
    """Draws one option per row of (customers, 1 + actions) probabilities with uniforms ``u``.

    Returns action indices (``NONE`` for column 0) and the chosen option's probability.
    """
    cdf = np.cumsum(probabilities, axis=1)
    cdf /= cdf[:, -1:]  # the last boundary is exactly 1, so u < 1 never falls off the end
    choice = (u[:, None] >= cdf).sum(axis=1)
    return choice - 1, probabilities[np.arange(len(choice)), choice]


class LoggedPolicy:
    """The world's randomised logging policy (see :class:`journeyml.simulate.world.World`)."""

    def __init__(self, world: World):
        self.world = world
        options = ["none", *world.action_ids]
        features = list(POLICY_FEATURES)
        self.weights = np.zeros((len(features), len(options)))
        for j, option in enumerate(options):
            for name, w in world.policy.scores.get(option, {}).items():
                self.weights[features.index(name), j] = w

    def probabilities(self, obs: Observation) -> Array:
        # computed as (options, customers): reductions over options stay vectorised
        feats = obs.features()
        scores = np.zeros((self.weights.shape[1], len(obs)))
        for f, name in enumerate(POLICY_FEATURES):
            if self.weights[f].any():
                scores += np.outer(self.weights[f], feats[name])
        allowed = np.vstack([np.ones((1, len(obs)), dtype=bool), obs.eligible.T])
        scores = np.where(allowed, scores, -np.inf)
        soft = np.exp(scores - scores.max(axis=0))
        soft /= soft.sum(axis=0)
        floor = self.world.policy.min_propensity
        k = allowed.sum(axis=0)
        return np.where(allowed, floor + (1 - k * floor) * soft, 0.0).T

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]:
        return sample_from(self.probabilities(obs), u)


def logging_policy(world: World) -> LoggedPolicy:
    """The randomised policy that sends the logged actions, with honest propensities."""
    return LoggedPolicy(world)


class FixedPolicy:
    """The same action for everyone it is allowed for, none for the others (probability 1)."""

    def __init__(self, action: int):
        self.action = action

    def probabilities(self, obs: Observation) -> Array:
        p = np.zeros((len(obs), obs.eligible.shape[1] + 1))
        if self.action == NONE:
            p[:, 0] = 1.0
        else:
            ok = obs.eligible[:, self.action]
            p[:, 1 + self.action] = ok
            p[:, 0] = ~ok
        return p

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]:
        return sample_from(self.probabilities(obs), u)


def fixed_policy(action: int) -> FixedPolicy:
    """Always ``action`` (an index into ``World.actions``, or ``NONE``) where allowed."""
    return FixedPolicy(action)


class RandomPolicy:
    """Uniform over no action and the actions each customer is eligible for."""

    def probabilities(self, obs: Observation) -> Array:
        allowed = np.concatenate([np.ones((len(obs), 1), dtype=bool), obs.eligible], axis=1)
        return allowed / allowed.sum(axis=1, keepdims=True)

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]:
        return sample_from(self.probabilities(obs), u)


def random_policy() -> RandomPolicy:
    """Uniformly random among the allowed options."""
    return RandomPolicy()


def check_decision(obs: Observation, actions: Array, propensities: Array) -> tuple[Array, Array]:
    """Validates a policy's answer; raises :class:`SimulationError` naming what is wrong."""
    actions = np.asarray(actions)
    propensities = np.asarray(propensities, dtype=np.float64)
    n, k = obs.eligible.shape
    if actions.shape != (n,) or propensities.shape != (n,):
        raise SimulationError(
            f"policy returned {actions.shape} actions and {propensities.shape} propensities "
            f"for {n} customers"
        )
    if not np.issubdtype(actions.dtype, np.integer):
        raise SimulationError("policy actions must be integer indices into World.actions")
    if ((actions < NONE) | (actions >= k)).any():
        raise SimulationError(f"policy returned action indices outside [-1, {k - 1}]")
    if not ((propensities > 0) & (propensities <= 1)).all():
        raise SimulationError("policy propensities must be in (0, 1]")
    sent = actions != NONE
    if (~obs.eligible[np.flatnonzero(sent), actions[sent]]).any():
        raise SimulationError(
            "policy sent a marketing action to a customer who opted out (see Observation.eligible)"
        )
    return actions.astype(np.int64), propensities
