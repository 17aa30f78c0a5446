"""The simulation engine: one vectorised daily step used for the log and for ground truth.

Every customer has a latent persona and a latent state (satisfaction, engagement, whether they
bought before, the action currently acting on them). Each day, :func:`step` turns that state
and a block of uniform random numbers into counts of what every customer did (sessions and how
deep each went, purchases, payment failures, logins, support contacts, complaints, surveys,
responses to actions, churn) and the next state. All randomness enters through the uniform
block, drawn with a fixed shape per day, so two runs that share the block share their luck:
ground truth is computed by rolling the **same** step forward from a customer's state at a
cutoff, K times, once per arm (the logging policy, no action, each action), with common random
numbers across arms. True probabilities are the share of roll-outs in which the label event
happens, and true effects are differences between arms on the same random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import date, timedelta

import numpy as np
from scipy.special import expit, ndtri

from journeyml.simulate.world import World

MAX_SESSIONS = 4
FUNNEL_STEPS = 5  # product view, cart, checkout intent, payment failure draw, channel
MISC = 18
NONE = -1

FloatArray = np.ndarray
IntArray = np.ndarray
BoolArray = np.ndarray


@dataclass(frozen=True)
class Population:
    """Fixed attributes of each customer, gathered from their persona."""

    persona: IntArray
    arrival: IntArray
    premium: BoolArray
    sessions_per_day: FloatArray
    browse_depth: FloatArray
    purchase_logit: FloatArray
    app_share: FloatArray
    email_engagement: FloatArray
    support_rate: FloatArray
    complaint_rate: FloatArray
    churn_hazard: FloatArray
    cancel_share: FloatArray
    # effects[action, customer]
    eff_convert: FloatArray
    eff_churn: FloatArray
    eff_churn_unhappy: FloatArray
    eff_churn_happy: FloatArray
    eff_prospects_only: BoolArray

    def take(self, idx: IntArray) -> Population:
        values = {}
        for f in fields(self):
            arr = getattr(self, f.name)
            values[f.name] = arr[:, idx] if arr.ndim == 2 else arr[idx]
        return Population(**values)


@dataclass(frozen=True)
class State:
    """The latent state of each customer on a day."""

    alive: BoolArray
    satisfaction: FloatArray
    engagement: FloatArray
    customer: BoolArray
    boost: FloatArray
    churn_mult: FloatArray
    active_action: IntArray
    effect_until: IntArray
    recent_fail: FloatArray
    recent_complaints: FloatArray
    last_activity: IntArray

    def take(self, idx: IntArray) -> State:
        return State(**{f.name: getattr(self, f.name)[idx].copy() for f in fields(self)})


@dataclass(frozen=True)
class DayOutcome:
    """What every customer did on one day (counts and per-session detail)."""

    sessions: IntArray
    product: BoolArray  # (n, MAX_SESSIONS)
    cart: BoolArray
    checkout: BoolArray
    purchase: BoolArray
    failed: BoolArray
    app: BoolArray
    login: BoolArray
    email_open: BoolArray
    email_click: BoolArray
    redeemed: BoolArray
    support: BoolArray
    complaint: BoolArray
    nps: BoolArray
    csat: BoolArray
    referral: BoolArray
    review: BoolArray
    churned: BoolArray
    cancelled: BoolArray
    nps_score: IntArray
    csat_score: IntArray
    active: BoolArray

    @property
    def purchases(self) -> IntArray:
        return np.asarray(self.purchase.sum(axis=1))


@dataclass(frozen=True)
class Uniforms:
    """The random numbers of one day, with a fixed shape per customer."""

    sessions: FloatArray  # (n,)
    funnel: FloatArray  # (n, MAX_SESSIONS, FUNNEL_STEPS)
    misc: FloatArray  # (n, MISC)
    policy: FloatArray  # (n,)

    @staticmethod
    def draw(rng: np.random.Generator, n: int) -> Uniforms:
        f32 = np.float32
        return Uniforms(
            rng.random(n, dtype=f32),
            rng.random((n, MAX_SESSIONS, FUNNEL_STEPS), dtype=f32),
            rng.random((n, MISC), dtype=f32),
            rng.random(n, dtype=f32),
        )


def build_population(world: World, n: int, days: int, rng: np.random.Generator) -> Population:
    """Draws personas and arrival days, and gathers persona parameters per customer."""
    shares = np.array([p.share for p in world.personas])
    persona = rng.choice(len(world.personas), size=n, p=shares / shares.sum())
    existing = rng.random(n) < world.existing_share
    arrival = np.where(existing, -rng.integers(1, 720, n), rng.integers(0, max(days - 30, 1), n))

    def gather(attr: str) -> FloatArray:
        return np.array([getattr(p, attr) for p in world.personas], dtype=float)[persona]

    premium = rng.random(n) < gather("premium_share")
    n_actions = len(world.actions)
    names = [p.name for p in world.personas]
    table = {k: np.zeros((n_actions, len(names))) for k in ("c", "ch", "chu", "chh")}
    prospects = np.zeros((n_actions, len(names)), dtype=bool)
    for a, action in enumerate(world.actions):
        for j, name in enumerate(names):
            eff = action.effects.get(name)
            if eff is None:
                table["ch"][a, j] = table["chu"][a, j] = table["chh"][a, j] = 1.0
                continue
            table["c"][a, j] = eff.convert
            table["ch"][a, j] = eff.churn
            table["chu"][a, j] = eff.churn_if_unhappy or eff.churn
            table["chh"][a, j] = eff.churn_if_happy or eff.churn
            prospects[a, j] = eff.prospects_only
    return Population(
        persona=persona,
        arrival=arrival,
        premium=premium,
        sessions_per_day=gather("sessions_per_day") * np.where(premium, 1.15, 1.0),
        browse_depth=gather("browse_depth"),
        purchase_logit=gather("purchase_logit"),
        app_share=gather("app_share"),
        email_engagement=gather("email_engagement"),
        support_rate=gather("support_rate"),
        complaint_rate=gather("complaint_rate"),
        churn_hazard=gather("churn_hazard"),
        cancel_share=gather("cancel_share"),
        eff_convert=table["c"][:, persona],
        eff_churn=table["ch"][:, persona],
        eff_churn_unhappy=table["chu"][:, persona],
        eff_churn_happy=table["chh"][:, persona],
        eff_prospects_only=prospects[:, persona],
    )


def initial_state(pop: Population, rng: np.random.Generator) -> State:
    n = len(pop.persona)
    existing = pop.arrival < 0
    return State(
        alive=np.ones(n, dtype=bool),
        satisfaction=rng.normal(0.1, 0.5, n),
        engagement=rng.normal(0.0, 0.4, n),
        customer=existing & (rng.random(n) < 0.65),
        boost=np.zeros(n),
        churn_mult=np.ones(n),
        active_action=np.full(n, NONE),
        effect_until=np.full(n, -1),
        recent_fail=np.zeros(n),
        recent_complaints=np.zeros(n),
        last_activity=np.where(existing, -1, pop.arrival),
    )


def season(day_dates: date) -> float:
    """Weekends and the end-of-year shopping season bring more sessions."""
    factor = 1.2 if day_dates.weekday() >= 5 else 1.0
    if day_dates.month in (11, 12):
        factor *= 1.3
    return factor


def apply_actions(
    pop: Population, state: State, actions: IntArray, day: int, world: World
) -> State:
    """Starts the effect window of the actions sent today (NONE leaves a customer as is)."""
    sent = actions != NONE
    if not sent.any():
        return state
    idx = np.flatnonzero(sent)
    a = actions[idx]
    convert = pop.eff_convert[a, idx]
    convert = np.where(pop.eff_prospects_only[a, idx] & state.customer[idx], 0.0, convert)
    s = state.satisfaction[idx]
    churn = np.where(
        s < -0.3,
        pop.eff_churn_unhappy[a, idx],
        np.where(s > 0.3, pop.eff_churn_happy[a, idx], pop.eff_churn[a, idx]),
    )
    churn = np.where(pop.eff_prospects_only[a, idx] & state.customer[idx], 1.0, churn)
    durations = np.array([act.duration_days for act in world.actions])[a]
    boost = state.boost.copy()
    mult = state.churn_mult.copy()
    active = state.active_action.copy()
    until = state.effect_until.copy()
    boost[idx], mult[idx], active[idx], until[idx] = convert, churn, a, day + durations - 1
    return replace(state, boost=boost, churn_mult=mult, active_action=active, effect_until=until)


def step(
    pop: Population,
    state: State,
    day: int,
    u: Uniforms,
    sent: IntArray,
    email_actions: BoolArray,
    season_factor: float,
    failure_rate: float,
    discount: int,
    noise: float,
) -> tuple[State, DayOutcome]:
    """One day for every customer: what they do, and their state the next morning."""
    present = state.alive & (pop.arrival <= day)
    effect_on = state.effect_until >= day
    boost = np.where(effect_on, state.boost, 0.0)
    churn_mult = np.where(effect_on, state.churn_mult, 1.0)
    s, e = state.satisfaction, state.engagement

    # sessions: Poisson by inversion, capped at MAX_SESSIONS, on the day's uniform
    lam = pop.sessions_per_day * np.exp(0.6 * e) * season_factor * present
    pk = np.exp(-lam)
    cdf = pk.copy()
    sessions = np.zeros(len(lam), dtype=np.int64)
    for k in range(1, MAX_SESSIONS + 1):
        sessions += u.sessions > cdf
        pk = pk * lam / k
        cdf = cdf + pk
    slot = np.arange(MAX_SESSIONS)[None, :] < sessions[:, None]
    depth = pop.browse_depth[:, None]
    f = u.funnel
    product = slot & (f[:, :, 0] < depth * 1.4)
    cart = product & (f[:, :, 1] < depth)
    intent = expit(pop.purchase_logit + 1.0 + 0.5 * e + 0.6 * s + boost + 0.3 * state.customer)[
        :, None
    ]
    checkout = cart & (f[:, :, 2] < intent)
    failed = checkout & (f[:, :, 3] < failure_rate)
    purchase = checkout & ~failed
    app = slot & (f[:, :, 4] < pop.app_share[:, None])

    m = u.misc
    bought = purchase.any(axis=1)
    n_failed = failed.sum(axis=1)
    emailed = present & email_actions
    login = present & state.customer & (m[:, 0] < 0.04 * np.exp(e))
    email_open = emailed & (m[:, 1] < np.clip(pop.email_engagement * np.exp(0.5 * e), 0, 0.95))
    email_click = email_open & (m[:, 2] < 0.35)
    redeemed = bought & effect_on & (state.active_action == discount) & (m[:, 3] < 0.8)
    support = present & (m[:, 4] < pop.support_rate * (1 + 2 * state.recent_fail + 2 * n_failed))
    complaint = present & (
        m[:, 5]
        < pop.complaint_rate * (1 + 4 * state.recent_fail + 6 * n_failed + 3 * np.maximum(-s, 0))
    )
    nps = bought & (m[:, 6] < 0.15)
    csat = support & (m[:, 7] < 0.5)
    referral = present & state.customer & (s > 0.5) & (m[:, 8] < 0.006)
    review = bought & (m[:, 9] < 0.05)
    hazard = (
        pop.churn_hazard
        * np.exp(-0.9 * s - 0.6 * e)
        * churn_mult
        * (1 + 1.5 * state.recent_complaints + 0.5 * state.recent_fail)
    )
    churned = present & (m[:, 10] < np.clip(hazard, 0, 1))
    cancelled = churned & (m[:, 11] < pop.cancel_share)
    nps_score = np.zeros(len(s), dtype=np.int64)
    where = np.flatnonzero(nps)
    nps_score[where] = np.clip(np.rint(7 + 2.5 * s[where] + 1.2 * ndtri(m[where, 12])), 0, 10)
    csat_score = np.zeros(len(s), dtype=np.int64)
    where = np.flatnonzero(csat)
    csat_score[where] = np.clip(np.rint(3.6 + 1.2 * s[where] + 0.6 * ndtri(m[where, 13])), 1, 5)
    active = (sessions > 0) | login | email_open | support | complaint | referral | cancelled

    # clip away 0 so the normal quantile stays finite in float32
    z_s, z_e = ndtri(np.clip(m[:, 14:16], 1e-7, 1 - 1e-7)).T
    satisfaction = np.clip(
        0.985 * s
        + noise * z_s
        - 0.35 * complaint
        - 0.12 * n_failed
        + 0.05 * bought
        + 0.05 * (csat & (csat_score >= 4)),
        -3,
        3,
    )
    engagement = np.clip(0.98 * e + noise * z_e + 0.04 * email_click + 0.02 * bought, -3, 3)
    nxt = replace(
        state,
        alive=state.alive & ~churned,
        satisfaction=np.where(present, satisfaction, s),
        engagement=np.where(present, engagement, e),
        customer=state.customer | bought,
        recent_fail=0.9 * state.recent_fail + n_failed,
        recent_complaints=0.95 * state.recent_complaints + complaint,
        last_activity=np.where(active, day, state.last_activity),
    )
    outcome = DayOutcome(
        sessions=sessions,
        product=product,
        cart=cart,
        checkout=checkout,
        purchase=purchase,
        failed=failed,
        app=app,
        login=login,
        email_open=email_open,
        email_click=email_click,
        redeemed=redeemed,
        support=support,
        complaint=complaint,
        nps=nps,
        csat=csat,
        referral=referral,
        review=review,
        churned=churned,
        cancelled=cancelled,
        nps_score=nps_score,
        csat_score=csat_score,
        active=active,
    )
    return nxt, outcome


@dataclass(frozen=True)
class Observation:
    """What a policy may see about the customers it decides for (observable, not latent)."""

    day: int
    customers: IntArray  # indices into the population
    bought_before: BoolArray
    recent_complaints: FloatArray
    days_since_activity: IntArray
    premium: BoolArray

    def _take(self, customers: IntArray) -> Observation:
        """The observation restricted to some customers (indices into the population)."""
        pos = np.searchsorted(self.customers, customers)
        return Observation(
            self.day,
            customers,
            self.bought_before[pos],
            self.recent_complaints[pos],
            self.days_since_activity[pos],
            self.premium[pos],
        )


# A policy returns, for each observed customer, an action index (NONE for no action) and the
# probability with which it chose it; ``u`` is a uniform per customer for randomised policies.
Policy = Callable[[Observation, FloatArray], tuple[IntArray, FloatArray]]


def logging_probabilities(world: World, obs: Observation) -> FloatArray:
    """The logging policy's probabilities, (customers, 1 + actions); column 0 is no action.

    More retention calls after complaints, more onboarding help before a first purchase, more
    upsell to premium customers; every option keeps at least ``policy_floor`` probability so
    off-policy evaluation works.
    """
    ids = [a.id for a in world.actions]
    k = len(ids) + 1
    w = np.ones((len(obs.customers), k))
    w[:, 0] = world.policy_none_weight
    if "retention_call" in ids:
        w[:, 1 + ids.index("retention_call")] += 3.0 * (obs.recent_complaints > 0.3)
    if "onboarding_help" in ids:
        w[:, 1 + ids.index("onboarding_help")] += 1.5 * ~obs.bought_before
    if "upsell_offer" in ids:
        w[:, 1 + ids.index("upsell_offer")] += 1.0 * obs.premium
    p = w / w.sum(axis=1, keepdims=True)
    return world.policy_floor + (1 - k * world.policy_floor) * p


def logging_policy(world: World) -> Policy:
    """The randomised policy that sends the logged actions, with recorded propensities."""

    def decide(obs: Observation, u: FloatArray) -> tuple[IntArray, FloatArray]:
        p = logging_probabilities(world, obs)
        cdf = np.cumsum(p, axis=1)
        choice = np.minimum((u[:, None] > cdf).sum(axis=1), p.shape[1] - 1)
        return choice - 1, p[np.arange(len(choice)), choice]

    return decide


def fixed_policy(action: int) -> Policy:
    """Always the same action (NONE for no action), chosen with probability 1."""

    def decide(obs: Observation, u: FloatArray) -> tuple[IntArray, FloatArray]:
        n = len(obs.customers)
        return np.full(n, action), np.ones(n)

    return decide


def observe(pop: Population, state: State, day: int) -> Observation:
    present = np.flatnonzero(state.alive & (pop.arrival <= day))
    return Observation(
        day=day,
        customers=present,
        bought_before=state.customer[present],
        recent_complaints=state.recent_complaints[present],
        days_since_activity=day - state.last_activity[present],
        premium=pop.premium[present],
    )


def start_date_of(start: date, day: int) -> date:
    return start + timedelta(days=day)
