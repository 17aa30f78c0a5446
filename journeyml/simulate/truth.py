"""Ground truth by Monte Carlo roll-outs of the engine's own daily step.

At a truth cutoff T (midnight starting day ``T``, before that morning's decisions) the state of
each sampled customer is copied ``rollouts`` times and rolled forward with :func:`advance` for
the longest label horizon, once per *arm*: no action at T, and each action sent at T; later
decisions inside the horizon are made by the run's policy, as in the log. Every arm of a batch
uses the same random numbers (common random numbers), so effects are differences between
futures that share their luck and have far less variance than the probabilities themselves.

Labels follow ``configs/journeys.yaml`` exactly as the training labels do:

- **churn** within ``horizons.churn_days`` after T: an explicit churn event (``churn.events``,
  cancel_subscription) in ``[T, T + churn_days)``, *or* no activity event
  (``churn.activity_events``, marketing actions excluded) in that window. With
  ``inactivity_days`` unset only explicit churn events count. Note this is the label's
  definition, not the latent "customer has left": a customer who is still around but silent
  for the whole window is churned, and one who left silently before T is churned for sure.
- **conversion**: a conversion event (``conversions``, purchase) in ``[T, T + conversion_days)``.

The population is the training labels' "active at T": signed up before T, no cancellation
before T, and some activity in ``[T - inactivity_days, T)``, all as the log shows it. It
therefore includes customers who already left silently (``alive`` is False; ``p_churn`` is 1),
because a model trained on the log cannot tell them apart and is scored on them too.

``p_churn`` and ``p_convert`` are the probabilities under the run's policy, decision at T
included: the exact mixture of the arms with the policy's probabilities at T when the policy
exposes ``probabilities(obs)`` (the logging policy does), otherwise one more Monte Carlo arm in
which the policy decides at T. ``effect_*`` is P(label | action at T) − P(label | none at T).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from journeyml.config import JourneyMap
from journeyml.simulate.engine import (
    NONE,
    Array,
    Calendar,
    Params,
    Population,
    Roles,
    State,
    Uniforms,
    advance,
)
from journeyml.simulate.policy import Policy, check_decision, observe

logger = logging.getLogger(__name__)

LANES_PER_BATCH = 262_144
POLICY_ARM = -2  # the lane's decision at the cutoff is the policy's own


@dataclass(frozen=True)
class TruthOptions:
    """Where and how precisely ground truth is computed.

    Truth cutoffs are midnights every ``every_days`` from ``warmup_days`` (on the feature
    pipeline's weekly snapshot grid) whose horizons end inside the simulation; only the last
    ``last_cutoffs`` of them (the test period) are computed, for up to ``sample`` active
    customers each (0: all of them, drawn deterministically from the seed), with ``rollouts``
    Monte Carlo futures per customer and arm. ``last_cutoffs=0`` turns truth off.
    """

    every_days: int = 28
    warmup_days: int = 28
    last_cutoffs: int = 3
    sample: int = 1000
    rollouts: int = 64


@dataclass(frozen=True)
class CutoffTruth:
    """Truth at one cutoff. Arm arrays are (1 + actions, customers); row 0 is no action."""

    cutoff: int
    customers: Array
    p_churn: Array
    p_convert: Array
    revenue: Array
    arm_churn: Array
    arm_convert: Array
    arm_revenue: Array


def truth_cutoffs(days: int, horizon: int, options: TruthOptions) -> list[int]:
    """The cutoff days with truth: the last ``last_cutoffs`` of the grid that fit the run."""
    if options.last_cutoffs <= 0:
        return []
    grid = list(range(options.warmup_days, days - horizon + 1, options.every_days))
    return grid[-options.last_cutoffs :]


def active_at(pop: Population, state: State, cutoff: int, journey: JourneyMap) -> Array:
    """Positions of customers active at ``cutoff`` as the log shows it (the label population)."""
    ok = (pop.arrival < cutoff) & ~state.cancelled
    inactivity = journey.churn.inactivity_days
    if inactivity is not None:
        ok &= state.last_activity >= cutoff - inactivity
    return np.flatnonzero(ok)


def compute_truth(
    params: Params,
    pop: Population,
    state: State,
    cutoff: int,
    calendar: Calendar,
    roles: Roles,
    journey: JourneyMap,
    policy: Policy,
    options: TruthOptions,
    seed: int,
) -> CutoffTruth:
    """True label probabilities and action effects at ``cutoff`` for a sample of customers."""
    started = time.perf_counter()
    pick = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 3, cutoff])))
    population = active_at(pop, state, cutoff, journey)
    size = len(population) if options.sample <= 0 else min(options.sample, len(population))
    chosen = np.sort(pick.choice(population, size=size, replace=False))
    n_actions = len(params.action_cost)
    exact = hasattr(policy, "probabilities")
    # arm codes: NONE, each action, and POLICY_ARM when the policy's own decision is simulated
    arms = np.array([NONE, *range(n_actions)] + ([] if exact else [POLICY_ARM]))
    k = options.rollouts
    per_batch = max(1, LANES_PER_BATCH // (k * len(arms)))
    shape = (len(arms), len(chosen))
    churn, convert, revenue = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for b, lo in enumerate(range(0, len(chosen), per_batch)):
        batch = chosen[lo : lo + per_batch]
        lanes = np.tile(np.repeat(batch, k), len(arms))  # arm-major: arm, customer, roll-out
        forced = np.repeat(arms, len(batch) * k)
        c, v, r = _roll(
            params,
            pop.take(lanes),
            state.take(lanes),
            cutoff,
            calendar,
            roles,
            journey,
            policy,
            forced,
            len(arms),
            np.random.SeedSequence([seed, 7, cutoff, b]),
        )
        sl = slice(lo, lo + len(batch))
        for x, out in ((c, churn), (v, convert), (r, revenue)):
            out[:, sl] = x.reshape(len(arms), len(batch), k).mean(axis=2)
    mix = _mixture(params, pop, state, cutoff, chosen, policy, n_actions)
    if mix is None:  # the policy's own arm
        p_churn, p_convert, p_revenue = churn[-1], convert[-1], revenue[-1]
        churn, convert, revenue = churn[:-1], convert[:-1], revenue[:-1]
    else:
        p_churn, p_convert, p_revenue = ((mix * x).sum(axis=0) for x in (churn, convert, revenue))
    logger.info(
        "truth at day %d: %d customers x %d roll-outs x %d arms in %.1f s",
        cutoff,
        len(chosen),
        k,
        len(arms),
        time.perf_counter() - started,
    )
    return CutoffTruth(cutoff, chosen, p_churn, p_convert, p_revenue, churn, convert, revenue)


def _mixture(
    params: Params,
    pop: Population,
    state: State,
    cutoff: int,
    chosen: Array,
    policy: Policy,
    n_actions: int,
) -> Array | None:
    """The policy's probabilities of (none, actions) at the cutoff, (1 + actions, customers)."""
    probabilities = getattr(policy, "probabilities", None)
    if probabilities is None:
        return None
    mix = np.zeros((1 + n_actions, len(chosen)))
    if cutoff % params.world.policy.every_days != 0:
        mix[0] = 1.0  # no decision that morning: the log's future is the no-action arm
        return mix
    obs = observe(params, pop, state, cutoff)
    probs = np.asarray(probabilities(obs))
    return np.asarray(probs[np.searchsorted(obs.customers, chosen)].T)


def _roll(
    params: Params,
    pop: Population,
    state: State,
    cutoff: int,
    calendar: Calendar,
    roles: Roles,
    journey: JourneyMap,
    policy: Policy,
    forced: Array,
    n_arms: int,
    seed: np.random.SeedSequence,
) -> tuple[Array, Array, Array]:
    """Rolls lanes forward from the cutoff; returns per lane churn, conversion and revenue.

    Lanes are ``n_arms`` copies of the same customers × roll-outs; ``forced`` is each lane's
    action at the cutoff (``NONE`` for none, ``POLICY_ARM`` to let the policy decide). One draw
    per day is shared by all arms: common random numbers by construction.
    """
    h_churn, h_conv = journey.horizons.churn_days, journey.horizons.conversion_days
    every = params.world.policy.every_days
    rng = np.random.Generator(np.random.PCG64(seed))
    n = len(pop)
    per_arm = n // n_arms
    active = np.zeros(n, dtype=bool)
    churn_event = np.zeros(n, dtype=bool)
    converted = np.zeros(n, dtype=bool)
    revenue = np.zeros(n)
    for h in range(max(h_churn, h_conv)):
        day = cutoff + h
        shared = Uniforms.draw(rng, per_arm)
        draws = Uniforms(np.tile(shared.u, (1, n_arms)), np.tile(shared.z, (1, n_arms)))
        actions = np.full(n, NONE)
        decide = day % every == 0
        if h == 0:
            actions = np.where(forced == POLICY_ARM, NONE, forced)
            decide = decide and bool((forced == POLICY_ARM).any())
        if decide:
            obs = observe(params, pop, state, day)
            if h == 0:
                obs = obs.take(np.flatnonzero(forced[obs.customers] == POLICY_ARM))
            if len(obs):
                chosen, _ = check_decision(obs, *policy(obs, draws.policy[obs.customers]))
                actions[obs.customers] = chosen
        state, out = advance(params, pop, state, day, calendar, draws, actions, roles)
        if h < h_churn:
            active |= out.active
            churn_event |= out.churn_event
        if h < h_conv:
            converted |= out.converted
            revenue += out.revenue
    silent_churns = journey.churn.inactivity_days is not None
    churned = churn_event | (~active if silent_churns else False)
    return churned, converted, revenue
