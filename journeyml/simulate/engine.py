"""The simulation engine: one vectorised daily step, used for the log and for ground truth.

Every customer has static attributes (persona, plan, opt-out, arrival day) and a latent state:
journey stage, engagement and satisfaction (slow, noisy, mean-reverting), alive or churned, and
the marketing action currently acting on them. :func:`advance` turns the state of all customers
(or all roll-out lanes), the day's calendar and one block of random numbers into what every
customer did that day (:class:`DayOutcome`) and their state the next morning.

A day, per customer (the parameters live in ``configs/simulator.yaml``):

- today's marketing action arrives (00:30 UTC) and starts its effect window; an email may be
  opened and clicked (a click brings a web visit);
- up to two visits (web, app or store) with probability from the persona's base rate × the
  stage's multiplier × exp(engagement) × weekday, month and daily noise × the action's
  ``activity`` effect; a visit may start from an ad, log in, view products, add to cart,
  check out and pay. Adding to cart scales with the purchase intent: persona propensity ×
  season × exp(satisfaction) × the action's ``convert`` effect. Payments fail (more during a
  ``payment`` incident) and may be retried; a ``checkout`` incident breaks the checkout step;
- support contacts, complaints (more when unhappy, many more after a failure), CSAT after
  support and NPS answers whose scores follow satisfaction, referrals and reviews from
  advocates;
- engagement and satisfaction revert towards the persona's means with noise, pushed by visits,
  clicks, purchases (+), failures and complaints (−); the latent stage moves along the journey
  (awareness → consideration → purchase, a purchase leads to retention, satisfied customers
  become advocates) and back (a retained customer starts browsing again, interest fades);
- the churn hazard (persona × exp(−satisfaction, −engagement) × the action's ``churn``
  effect, higher on a day with a failure) decides who leaves: explicitly with
  ``cancel_subscription`` (``cancel_share``) or silently, never to be seen again.

All randomness of a day enters through :class:`Uniforms`, drawn with a fixed shape per customer
whatever the state, so two runs that share the block share their luck: the log of two policies
run with the same seed differ only where the policies differ, and ground-truth roll-outs of
different arms (no action, each action) use common random numbers. Timestamps, page counts and
the other details that no label depends on are drawn later, when events are rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import date, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from journeyml.config import JourneyMap
from journeyml.simulate.world import STAGES, World

Array = npt.NDArray[Any]

NONE = -1  # "no action" in action arrays; actions are indices into World.actions
NEVER = -(10**6)  # day of an event that never happened
SLOTS = 2  # visits per customer and day
AWARENESS, CONSIDERATION, PURCHASE, RETENTION, ADVOCACY = range(5)
WEB, APP, STORE = 0, 1, 2
DAY_US = 86_400_000_000
# Latent state and rates are float32: roll-outs are bound by memory traffic, and the precision
# is far beyond what the world's parameters mean. Money and probabilities reported stay float64.
REAL = np.float32

# Rows of the uniform block: per visit slot, then per customer.
(OCC, CHANNEL, AD, LOGIN, VIEW, CART, CHECKOUT, CHECKOUT_FAIL, FAIL1, RETRY, FAIL2, REDEEM) = range(
    12
)
SLOT_ROWS = 12
(
    STAGE_MOVE,
    CHURN,
    CANCEL,
    OPEN,
    CLICK,
    SUPPORT,
    COMPLAINT,
    CSAT,
    NPS,
    REFERRAL,
    REVIEW,
    POLICY,
) = (SLOTS * SLOT_ROWS + k for k in range(12))
UNIFORM_ROWS = SLOTS * SLOT_ROWS + 12
VALUE, Z_ENGAGEMENT, Z_SATISFACTION, Z_NPS, Z_CSAT = 0, SLOTS, SLOTS + 1, SLOTS + 2, SLOTS + 3
NORMAL_ROWS = SLOTS + 4

# Customer event types the engine produces (marketing actions add ``action_<id>``).
CUSTOMER_EVENT_TYPES: tuple[str, ...] = (
    "ad_click",
    "page_view",
    "login",
    "signup",
    "product_view",
    "add_to_cart",
    "checkout_start",
    "payment_failed",
    "purchase",
    "offer_redeemed",
    "email_open",
    "email_click",
    "support_contact",
    "complaint",
    "csat_response",
    "nps_response",
    "referral",
    "review_posted",
    "cancel_subscription",
)


def seconds_to_us(seconds: Array) -> Array:
    """Seconds (float) to whole microseconds, rounded: the one conversion every timestamp uses."""
    return np.asarray(np.rint(np.asarray(seconds) * 1e6), dtype=np.int64)


class SimulationError(ValueError):
    """Options or inputs that cannot be simulated; the message names the option."""


@dataclass(frozen=True)
class Incident:
    """A journey step that fails for a while.

    ``payment``: a checkout ends in ``payment_failed`` with probability ``rate``; ``checkout``:
    the checkout page fails to load after ``add_to_cart`` (no event, the visit just ends).
    Either way the customer is frustrated: support contacts, complaints and churn go up.
    """

    step: Literal["payment", "checkout"]
    start_day: int
    duration_days: int
    rate: float

    STEPS = ("payment", "checkout")
    SPEC = "STEP:START_DAY:DURATION_DAYS:FAILURE_RATE"

    @staticmethod
    def parse(spec: str) -> Incident:
        """Parses ``payment:START_DAY:DURATION_DAYS:FAILURE_RATE`` (or ``checkout:...``)."""
        parts = spec.split(":")
        example = "e.g. payment:30:7:0.4"
        if len(parts) != 4:
            raise SimulationError(f"--incident {spec!r}: expected {Incident.SPEC}, {example}")
        if parts[0] not in Incident.STEPS:
            raise SimulationError(
                f"--incident {spec!r}: unknown step {parts[0]!r}; steps: "
                f"{', '.join(Incident.STEPS)} ({Incident.SPEC}, {example})"
            )
        try:
            start, duration, rate = int(parts[1]), int(parts[2]), float(parts[3])
        except ValueError:
            raise SimulationError(
                f"--incident {spec!r}: START_DAY and DURATION_DAYS must be integers and "
                f"FAILURE_RATE a number ({Incident.SPEC})"
            ) from None
        if start < 0 or duration <= 0 or not 0 < rate <= 1:
            raise SimulationError(
                f"--incident {spec!r}: needs START_DAY >= 0, DURATION_DAYS > 0 and "
                "0 < FAILURE_RATE <= 1"
            )
        return Incident(parts[0], start, duration, rate)  # type: ignore[arg-type]

    def active(self, day: int) -> bool:
        return self.start_day <= day < self.start_day + self.duration_days


@dataclass(frozen=True)
class Params:
    """The world as arrays: per persona (P,), per stage (5,), per action and persona (A, P)."""

    world: World
    persona_names: tuple[str, ...]
    segment_names: tuple[str, ...]
    region_names: tuple[str, ...]
    persona: dict[str, Array]
    segment_cdf: Array  # (P, segments)
    stage: dict[str, Array]
    effect: dict[str, Array]  # (A, P)
    action_email: Array  # (A,) bool
    action_marketing: Array
    action_redeemable: Array
    action_window: Array
    action_tenure_scale: Array  # nan: no fading
    action_cost: Array


PERSONA_FIELDS = (
    "sessions_per_day",
    "app_share",
    "store_share",
    "purchase",
    "order_value_median",
    "order_value_spread",
    "email_open",
    "email_click",
    "support_rate",
    "complaint_rate",
    "churn_hazard",
    "cancel_share",
    "engagement",
    "satisfaction",
    "repurchase",
    "referral_rate",
    "review_rate",
    "survey_rate",
    "premium_share",
    "opt_out_share",
)
EFFECT_FIELDS = ("convert", "churn", "churn_by_satisfaction", "activity", "value", "satisfaction")


def compile_world(world: World) -> Params:
    """Gathers the world's parameters into arrays once, for the vectorised step."""
    personas = world.personas
    segments = sorted({s for p in personas for s in p.segments})
    weights = np.array([[p.segments.get(s, 0.0) for s in segments] for p in personas])
    cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    behaviour = [world.stages[s] for s in STAGES]
    effect = {
        f: np.array([[getattr(a.effect_for(p.name), f) for p in personas] for a in world.actions])
        .reshape(len(world.actions), len(personas))
        .astype(REAL)
        for f in EFFECT_FIELDS
    }
    return Params(
        world=world,
        persona_names=tuple(p.name for p in personas),
        segment_names=tuple(segments),
        region_names=tuple(world.population.regions),
        persona={
            f: np.array([getattr(p, f) for p in personas], dtype=REAL) for f in PERSONA_FIELDS
        },
        segment_cdf=cdf,
        stage={
            f: np.array([getattr(b, f) for b in behaviour], dtype=REAL)
            for f in ("activity", "ad_click", "product_view", "add_to_cart", "checkout")
        },
        effect=effect,
        action_email=np.array([a.channel == "email" for a in world.actions], dtype=bool),
        action_marketing=np.array([a.marketing for a in world.actions], dtype=bool),
        action_redeemable=np.array([a.redeemable for a in world.actions], dtype=bool),
        action_window=np.array([a.window_days for a in world.actions], dtype=np.int64),
        action_tenure_scale=np.array(
            [a.tenure_scale_days or np.nan for a in world.actions], dtype=np.float64
        ),
        action_cost=np.array([a.cost for a in world.actions], dtype=np.float64),
    )


@dataclass(frozen=True)
class Roles:
    """Which of the engine's event types are activity, conversions and explicit churn events,
    resolved once from the journey map (so truth follows the labels' definitions)."""

    activity: tuple[str, ...]
    conversion: tuple[str, ...]
    churn: tuple[str, ...]

    @staticmethod
    def from_journey(journey: JourneyMap) -> Roles:
        unknown = [t for t in CUSTOMER_EVENT_TYPES if not _known_to(journey, t)]
        if unknown:
            raise SimulationError(
                f"the journey map does not know the event types {unknown}: map them to a stage "
                "or a role in journeys.yaml"
            )
        if list(journey.stages) != list(STAGES):
            raise SimulationError(
                f"the simulator models the stages {', '.join(STAGES)}; the journey map has "
                f"{', '.join(journey.stages)}"
            )
        if not journey.is_treatment("action_x"):
            raise SimulationError("the journey map's treatments must match action_* events")
        return Roles(
            activity=tuple(t for t in CUSTOMER_EVENT_TYPES if journey.is_activity(t)),
            conversion=tuple(t for t in CUSTOMER_EVENT_TYPES if journey.is_conversion(t)),
            churn=tuple(t for t in CUSTOMER_EVENT_TYPES if journey.is_churn_event(t)),
        )


def _known_to(journey: JourneyMap, event_type: str) -> bool:
    exp = journey.experience
    return bool(
        journey.stage_of(event_type)
        or journey.regression_to(event_type)
        or journey.is_response(event_type)
        or journey.is_conversion(event_type)
        or journey.is_churn_event(event_type)
        or any(event_type in group for group in (exp.support, exp.complaints, exp.nps, exp.csat))
    )


@dataclass(frozen=True)
class Calendar:
    """Per-day multipliers and failure rates of a run (the same for log and roll-outs)."""

    start: date
    weekday: Array
    activity: Array
    purchase: Array
    payment_failure: Array
    checkout_failure: Array

    def day_start_us(self, day: int) -> int:
        """Microseconds since the epoch of midnight UTC starting ``day``."""
        epoch = date(1970, 1, 1)
        return ((self.start - epoch).days + day) * DAY_US


def build_calendar(
    world: World, start: date, days: int, incidents: tuple[Incident, ...], rng: np.random.Generator
) -> Calendar:
    """Weekly and yearly seasonality with day-to-day noise, and incident failure rates."""
    season = world.season
    dates = [start + timedelta(days=d) for d in range(days)]
    weekday = np.array([d.weekday() for d in dates])
    month = np.array([d.month - 1 for d in dates])
    noise = np.exp(season.daily_noise * rng.standard_normal(days))
    activity = np.array(season.weekday_activity)[weekday] * np.array(season.monthly_activity)[month]
    purchase = np.array(season.weekday_purchase)[weekday] * np.array(season.monthly_purchase)[month]
    payment = np.full(days, world.funnel.payment_failure)
    checkout = np.zeros(days)
    for incident in incidents:
        window = slice(incident.start_day, incident.start_day + incident.duration_days)
        if incident.step == "payment":
            payment[window] = 1 - (1 - payment[window]) * (1 - incident.rate)
        else:
            checkout[window] = 1 - (1 - checkout[window]) * (1 - incident.rate)
    return Calendar(start, weekday, activity * noise, purchase, payment, checkout)


@dataclass(frozen=True)
class Population:
    """Static attributes of each customer (or roll-out lane), with persona parameters gathered.

    ``number`` is the customer's row in the customers table (``C%07d``); roll-outs repeat it.
    """

    number: Array
    persona: Array
    arrival: Array  # day of signup; negative for customers who signed up before the start
    signup_second: Array  # second of the day of signup
    premium: Array
    opt_out: Array
    segment: Array
    region: Array
    p: dict[str, Array]  # persona parameters per customer
    id_width: int = 7  # digits of customer ids (C%0{id_width}d)

    def take(self, idx: Array) -> Population:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays = {k: v[idx] for k, v in arrays.items() if isinstance(v, np.ndarray)}
        p = {k: v[idx] for k, v in self.p.items()}
        return Population(**arrays, p=p, id_width=self.id_width)

    def __len__(self) -> int:
        return len(self.number)


@dataclass(frozen=True)
class State:
    """The state of each customer in the morning: latent variables and what the log shows.

    ``stage``, ``engagement``, ``satisfaction``, ``alive`` and the ``effect_*`` arrays are
    latent. The rest is observable from the log (recency of events, counts, cancellation),
    which is what policies may see.
    """

    alive: Array
    stage: Array
    engagement: Array
    satisfaction: Array
    effect_action: Array
    effect_until: Array  # first day the effect no longer acts
    effect_convert: Array
    effect_churn: Array
    effect_activity: Array
    effect_value: Array
    cancelled: Array
    last_activity: Array
    last_purchase: Array
    last_complaint: Array
    last_failure: Array
    last_action: Array
    purchases: Array
    recent_complaints: Array
    recent_failures: Array
    recent_sessions: Array

    def take(self, idx: Array) -> State:
        return State(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def draw_population(
    params: Params, n: int, days: int, calendar: Calendar, rng: np.random.Generator
) -> tuple[Population, State]:
    """Draws ``n`` customers (persona, attributes, signup day) and their initial state.

    A share of customers signed up before the start (tenure up to ``max_tenure_days``); the
    others arrive during the run, more in busy months, with a persona mix of their own.
    """
    world = params.world
    pw = params.persona
    share = np.array([p.share for p in world.personas])
    arrival_share = np.array(
        [p.arrival_share if p.arrival_share is not None else p.share for p in world.personas]
    )
    existing = rng.random(n) < world.population.existing_share
    persona = np.where(
        existing,
        rng.choice(len(share), size=n, p=share / share.sum()),
        rng.choice(len(share), size=n, p=arrival_share / arrival_share.sum()),
    )
    busy = calendar.activity / calendar.activity.sum()
    arrival = np.where(
        existing,
        -rng.integers(1, world.population.max_tenure_days + 1, n),
        rng.choice(days, size=n, p=busy),
    )
    signup_second = rng.uniform(2 * 3600, 22 * 3600, n)
    regions = np.array(list(world.population.regions.values()))
    segment = (rng.random(n)[:, None] > params.segment_cdf[persona]).sum(axis=1)
    region = rng.choice(len(regions), size=n, p=regions / regions.sum())
    premium = rng.random(n) < pw["premium_share"][persona]
    opt_out = rng.random(n) < pw["opt_out_share"][persona]
    pop = Population(
        number=np.arange(n),
        persona=persona,
        arrival=arrival,
        signup_second=signup_second,
        premium=premium,
        opt_out=opt_out,
        segment=np.minimum(segment, len(params.segment_names) - 1),
        region=region,
        p={k: v[persona] for k, v in pw.items()},
        id_width=max(7, len(str(n - 1))),
    )
    # Customers of the base are spread over the journey; newcomers have just signed up.
    base_stage = rng.choice(5, size=n, p=[0.1, 0.17, 0.05, 0.53, 0.15])
    stage = np.where(existing, base_stage, CONSIDERATION)
    engagement = (pop.p["engagement"] + 0.4 * rng.standard_normal(n) + 0.2 * ~existing).astype(REAL)
    satisfaction = (pop.p["satisfaction"] + 0.4 * rng.standard_normal(n)).astype(REAL)
    never = np.full(n, NEVER)
    state = State(
        alive=np.ones(n, dtype=bool),
        stage=stage.astype(np.int64),
        engagement=engagement,
        satisfaction=satisfaction,
        effect_action=np.full(n, NONE),
        effect_until=np.full(n, NEVER),
        effect_convert=np.zeros(n, dtype=REAL),
        effect_churn=np.zeros(n, dtype=REAL),
        effect_activity=np.zeros(n, dtype=REAL),
        effect_value=np.zeros(n, dtype=REAL),
        cancelled=np.zeros(n, dtype=bool),
        # the log starts at day 0: nothing before it is observable
        last_activity=never.copy(),
        last_purchase=never.copy(),
        last_complaint=never.copy(),
        last_failure=never.copy(),
        last_action=never.copy(),
        purchases=np.zeros(n, dtype=np.int64),
        recent_complaints=np.zeros(n, dtype=REAL),
        recent_failures=np.zeros(n, dtype=REAL),
        recent_sessions=np.zeros(n, dtype=REAL),
    )
    return pop, state


@dataclass(frozen=True)
class Uniforms:
    """The random numbers of one day, with a fixed shape per customer (rows × customers)."""

    u: Array  # (UNIFORM_ROWS, n) float32 in [0, 1)
    z: Array  # (NORMAL_ROWS, n) float32 standard normal

    @staticmethod
    def draw(rng: np.random.Generator, n: int) -> Uniforms:
        return Uniforms(
            rng.random((UNIFORM_ROWS, n), dtype=np.float32),
            rng.standard_normal((NORMAL_ROWS, n), dtype=np.float32),
        )

    @property
    def policy(self) -> Array:
        """One uniform per customer for randomised policies."""
        return self.u[POLICY]


@dataclass(frozen=True)
class DayOutcome:
    """What every customer did on one day. Visit arrays are (SLOTS, n)."""

    live: Array
    arriving: Array
    arrival_ad: Array
    arrival_view: Array
    arrival_app: Array
    visit: Array
    channel: Array
    ad: Array
    login: Array
    view: Array
    cart: Array
    checkout: Array
    failed: Array  # first payment attempt failed
    retried: Array
    failed_again: Array
    purchase: Array
    redeemed: Array
    value: Array
    email_open: Array
    email_click: Array
    support: Array
    complaint: Array
    csat: Array
    csat_score: Array
    nps: Array
    nps_score: Array
    referral: Array
    review: Array
    churned: Array
    cancelled: Array
    active: Array  # any activity event (journey map's definition)
    converted: Array  # any conversion event
    churn_event: Array  # any explicit churn event

    @property
    def purchases(self) -> Array:
        return self.purchase.sum(axis=0)

    @property
    def revenue(self) -> Array:
        return np.where(self.purchase, self.value, 0.0).sum(axis=0)


def apply_actions(params: Params, pop: Population, state: State, actions: Array, day: int) -> State:
    """Starts the effect window of the actions arriving today (NONE changes nothing).

    A new action replaces the one still acting. Effects are fixed at arrival: persona's effect,
    scaled down with tenure for fading actions, churn shifted by satisfaction at that moment.
    """
    idx = np.flatnonzero(actions != NONE)
    if len(idx) == 0:
        return state
    a, persona = actions[idx], pop.persona[idx]
    scale_days = params.action_tenure_scale[a]
    tenure = np.maximum(day - pop.arrival[idx], 0)
    scale = np.where(np.isnan(scale_days), 1.0, np.exp(-tenure / np.nan_to_num(scale_days, nan=1)))
    eff = {k: v[a, persona] * scale for k, v in params.effect.items()}
    s = state.satisfaction[idx]
    new = {
        name: getattr(state, name).copy()
        for name in (
            "effect_action",
            "effect_until",
            "effect_convert",
            "effect_churn",
            "effect_activity",
            "effect_value",
            "satisfaction",
            "last_action",
        )
    }
    new["effect_action"][idx] = a
    new["effect_until"][idx] = day + params.action_window[a]
    new["effect_convert"][idx] = eff["convert"]
    new["effect_churn"][idx] = eff["churn"] + eff["churn_by_satisfaction"] * s
    new["effect_activity"][idx] = eff["activity"]
    new["effect_value"][idx] = eff["value"]
    new["satisfaction"][idx] = s + eff["satisfaction"]
    new["last_action"][idx] = day
    return replace(state, **new)


_MOVE_TARGETS = np.array(
    [
        # first, second and third possible move out of each stage
        [CONSIDERATION, PURCHASE, CONSIDERATION, CONSIDERATION, RETENTION],
        [AWARENESS, AWARENESS, PURCHASE, ADVOCACY, CONSIDERATION],
        [AWARENESS, CONSIDERATION, PURCHASE, AWARENESS, ADVOCACY],
    ]
)


def _stage_moves(
    params: Params, pop: Population, state: State, intent: Array, visits: Array, u: Array
) -> Array:
    """Tomorrow's latent stage before purchases: up to three possible moves per stage.

    awareness → consideration (more likely on a visit, with engagement); consideration →
    purchase (with purchase intent) or back to awareness; purchase → consideration (cooling
    off); retention → consideration (considering a new purchase: the journey regresses),
    advocacy (when satisfied) or awareness (drifting away); advocacy → retention (when
    dissatisfied) or consideration.
    """
    t = params.world.transitions
    stage, e, s = state.stage, state.engagement, state.satisfaction
    exp_e, exp_s = np.exp(e), np.exp(s)
    repurchase = pop.p["repurchase"] * intent
    first = np.empty((5, len(stage)), dtype=REAL)
    first[AWARENESS] = t.awareness_to_consideration * exp_e * visits
    first[CONSIDERATION] = t.consideration_to_purchase * intent
    first[PURCHASE] = t.purchase_to_consideration
    first[RETENTION] = repurchase
    first[ADVOCACY] = t.advocacy_to_retention / exp_s
    second = np.zeros((5, len(stage)), dtype=REAL)
    second[CONSIDERATION] = t.consideration_to_awareness / exp_e
    second[RETENTION] = t.retention_to_advocacy * exp_s
    second[ADVOCACY] = 0.7 * repurchase
    p1, p2 = np.choose(stage, first), np.choose(stage, second)
    p3 = np.where(stage == RETENTION, t.retention_to_awareness / exp_e, 0.0)
    # keep some chance of staying where one is
    shrink = np.minimum(1.0, 0.9 / np.maximum(p1 + p2 + p3, 1e-12))
    c1 = p1 * shrink
    c2 = c1 + p2 * shrink
    c3 = c2 + p3 * shrink
    return np.where(
        u < c1,
        _MOVE_TARGETS[0][stage],
        np.where(u < c2, _MOVE_TARGETS[1][stage], np.where(u < c3, _MOVE_TARGETS[2][stage], stage)),
    )


def advance(
    params: Params,
    pop: Population,
    state: State,
    day: int,
    calendar: Calendar,
    draws: Uniforms,
    actions: Array,
    roles: Roles,
) -> tuple[State, DayOutcome]:
    """One simulated day for every customer: today's actions arrive, then customers live it.

    The log and the ground-truth roll-outs both go through here, so truth and log come from the
    same dynamics by construction.

    Args:
        actions: per customer, the action sent this morning (``NONE`` for none or no decision).

    Returns:
        The state the next morning and what everyone did.
    """
    world = params.world
    dyn, funnel = world.dynamics, world.funnel
    u, z = draws.u, draws.z
    pp = pop.p
    state = apply_actions(params, pop, state, actions, day)
    present = pop.arrival < day
    arriving = pop.arrival == day
    live = present & state.alive
    effect_on = live & (state.effect_until > day)
    e, s, stage = state.engagement, state.satisfaction, state.stage

    # responses to today's emails
    emailed = live & (actions != NONE) & params.action_email[np.maximum(actions, 0)]
    email_open = emailed & (u[OPEN] < np.minimum(pp["email_open"] * np.exp(0.4 * e), 0.95))
    email_click = email_open & (u[CLICK] < pp["email_click"])

    # visits and their funnel
    activity = np.exp(dyn.activity_engagement * e + np.where(effect_on, state.effect_activity, 0))
    rate = pp["sessions_per_day"] * float(calendar.activity[day]) * params.stage["activity"][stage]
    rate = np.minimum(rate * activity, 0.9)
    intent = (
        pp["purchase"]
        * float(calendar.purchase[day])
        * np.exp(dyn.purchase_satisfaction * s + np.where(effect_on, state.effect_convert, 0))
    )
    cart_p = np.minimum(params.stage["add_to_cart"][stage] * intent, 0.9)
    pay_fail = float(calendar.payment_failure[day])
    slot_rate = np.stack([rate, rate * funnel.second_session])
    per_slot = u[: SLOTS * SLOT_ROWS].reshape(SLOTS, SLOT_ROWS, -1)

    def row(k: int) -> Array:
        return per_slot[:, k]

    visit = live & (row(OCC) < slot_rate)
    visit[0] |= email_click
    ch = row(CHANNEL)
    store_p, app_p = pp["store_share"], pp["app_share"]
    channel = np.where(ch < store_p, STORE, np.where(ch < store_p + app_p, APP, WEB))
    channel[0] = np.where(email_click, WEB, channel[0])
    online = channel != STORE
    ad = visit & online & (row(AD) < params.stage["ad_click"][stage])
    login = (
        visit & online & (row(LOGIN) < np.where(channel == APP, funnel.login_app, funnel.login_web))
    )
    view = visit & (row(VIEW) < params.stage["product_view"][stage])
    cart = view & (row(CART) < cart_p)
    checkout_try = cart & (row(CHECKOUT) < params.stage["checkout"][stage])
    checkout_broken = (
        checkout_try & online & (row(CHECKOUT_FAIL) < float(calendar.checkout_failure[day]))
    )
    checkout = checkout_try & ~checkout_broken
    failed = checkout & online & (row(FAIL1) < pay_fail)
    retried = failed & (row(RETRY) < funnel.retry_after_failure)
    failed_again = retried & (row(FAIL2) < pay_fail)
    purchase = checkout & (~failed | (retried & ~failed_again))
    log_value = np.log(pp["order_value_median"]) + np.where(effect_on, state.effect_value, 0)
    # money in float64, rounded to cents
    value = np.round(
        np.exp((log_value + pp["order_value_spread"] * z[:SLOTS]).astype(np.float64)), 2
    )
    value = np.maximum(value, 0.01)
    redeemable = params.action_redeemable[np.maximum(state.effect_action, 0)] & (
        state.effect_action != NONE
    )
    redeemed = purchase & effect_on & redeemable & (row(REDEEM) < funnel.redeem)
    failures = (checkout_broken.astype(np.int64) + failed + failed_again).sum(axis=0)
    frustrated = failures > 0

    # newcomers: an acquisition visit ending in signup
    arrival_ad = arriving & (u[AD] < 0.6)
    arrival_view = arriving & (u[VIEW] < 0.5)
    arrival_app = arriving & (u[CHANNEL] < pp["app_share"])

    # service, surveys, advocacy
    support = live & (u[SUPPORT] < pp["support_rate"] + dyn.support_after_failure * frustrated)
    complaint = live & (
        u[COMPLAINT]
        < pp["complaint_rate"] * np.exp(-dyn.complaint_satisfaction * s)
        + dyn.complaint_after_failure * frustrated
    )
    sv = world.surveys
    csat = support & (u[CSAT] < sv.csat_after_support)
    csat_score = np.clip(np.rint(sv.csat_mid + sv.csat_slope * s + sv.csat_noise * z[Z_CSAT]), 1, 5)
    bought_before = state.purchases > 0
    nps = live & bought_before & (u[NPS] < pp["survey_rate"])
    nps_score = np.clip(np.rint(sv.nps_mid + sv.nps_slope * s + sv.nps_noise * z[Z_NPS]), 0, 10)
    advocate = live & (stage == ADVOCACY)
    referral = advocate & (u[REFERRAL] < pp["referral_rate"] * np.exp(0.5 * s))
    review = advocate & (u[REVIEW] < pp["review_rate"])

    # the state tomorrow
    visits = visit.sum(axis=0)
    bought = purchase.sum(axis=0)
    # counts and flags as REAL so the float32 state stays float32
    n_visits, n_bought, n_failures = (x.astype(REAL) for x in (visits, bought, failures))
    r = dyn.reversion
    e_next = (
        e
        + r * (pp["engagement"] - e)
        + dyn.engagement_noise * z[Z_ENGAGEMENT]
        + dyn.engagement_per_session * n_visits
        + dyn.engagement_per_click * email_click.astype(REAL)
        + dyn.engagement_per_purchase * n_bought
    )
    s_next = (
        s
        + r * (pp["satisfaction"] - s)
        + dyn.satisfaction_noise * z[Z_SATISFACTION]
        + dyn.satisfaction_per_purchase * n_bought
        + dyn.satisfaction_per_failure * n_failures
        + dyn.satisfaction_per_complaint * complaint.astype(REAL)
        + dyn.satisfaction_per_support * support.astype(REAL)
    )
    e_next = np.clip(np.where(live, e_next, e), -3, 3)
    s_next = np.clip(np.where(live, s_next, s), -3, 3)
    moved = _stage_moves(
        params, pop, state, intent, np.minimum(n_visits, 1) + REAL(0.5), u[STAGE_MOVE]
    )
    stage_next = np.where(live, moved, stage)
    stage_next = np.where(bought > 0, np.maximum(stage_next, RETENTION), stage_next)
    hazard = pp["churn_hazard"] * np.exp(
        -dyn.churn_satisfaction * s_next
        - dyn.churn_engagement * e_next
        + np.where(effect_on, state.effect_churn, 0)
        + dyn.churn_after_failure * frustrated.astype(REAL)
    )
    churned = live & (u[CHURN] < hazard)
    cancelled = churned & (u[CANCEL] < pp["cancel_share"])

    flags = _type_flags(
        arriving,
        arrival_ad,
        arrival_view,
        visit & online,
        ad,
        login,
        view & online,
        cart & online,
        checkout & online,
        failed,
        purchase,
        redeemed,
        email_open,
        email_click,
        support,
        complaint,
        csat,
        nps,
        referral,
        review,
        cancelled,
    )
    active = _any(flags, roles.activity, len(live))
    converted = _any(flags, roles.conversion, len(live))
    churn_event = _any(flags, roles.churn, len(live))
    failed_visible = flags["payment_failed"]
    nxt = replace(
        state,
        alive=state.alive & ~churned,
        stage=stage_next,
        engagement=e_next,
        satisfaction=s_next,
        cancelled=state.cancelled | churn_event,
        last_activity=np.where(active, day, state.last_activity),
        last_purchase=np.where(bought > 0, day, state.last_purchase),
        last_complaint=np.where(complaint, day, state.last_complaint),
        last_failure=np.where(failed_visible, day, state.last_failure),
        purchases=state.purchases + bought,
        recent_complaints=0.95 * state.recent_complaints + complaint,
        recent_failures=0.9 * state.recent_failures + failed_visible,
        recent_sessions=0.9 * state.recent_sessions + (visit & online).sum(axis=0, dtype=REAL),
    )
    outcome = DayOutcome(
        live=live,
        arriving=arriving,
        arrival_ad=arrival_ad,
        arrival_view=arrival_view,
        arrival_app=arrival_app,
        visit=visit,
        channel=channel,
        ad=ad,
        login=login,
        view=view,
        cart=cart,
        checkout=checkout,
        failed=failed,
        retried=retried,
        failed_again=failed_again,
        purchase=purchase,
        redeemed=redeemed,
        value=value,
        email_open=email_open,
        email_click=email_click,
        support=support,
        complaint=complaint,
        csat=csat,
        csat_score=csat_score.astype(np.int64),
        nps=nps,
        nps_score=nps_score.astype(np.int64),
        referral=referral,
        review=review,
        churned=churned,
        cancelled=cancelled,
        active=active,
        converted=converted,
        churn_event=churn_event,
    )
    return nxt, outcome


def _type_flags(
    arriving: Array,
    arrival_ad: Array,
    arrival_view: Array,
    page: Array,
    ad: Array,
    login: Array,
    view: Array,
    cart: Array,
    checkout: Array,
    failed: Array,
    purchase: Array,
    redeemed: Array,
    email_open: Array,
    email_click: Array,
    support: Array,
    complaint: Array,
    csat: Array,
    nps: Array,
    referral: Array,
    review: Array,
    cancelled: Array,
) -> dict[str, Array]:
    """Per event type, whether each customer has at least one such event today."""
    return {
        "ad_click": _either(ad) | arrival_ad,
        "page_view": _either(page) | arriving,
        "login": _either(login),
        "signup": arriving,
        "product_view": _either(view) | arrival_view,
        "add_to_cart": _either(cart),
        "checkout_start": _either(checkout),
        "payment_failed": _either(failed),
        "purchase": _either(purchase),
        "offer_redeemed": _either(redeemed),
        "email_open": email_open,
        "email_click": email_click,
        "support_contact": support,
        "complaint": complaint,
        "csat_response": csat,
        "nps_response": nps,
        "referral": referral,
        "review_posted": review,
        "cancel_subscription": cancelled,
    }


def _either(slots: Array) -> Array:
    """Per customer, whether any visit slot has the flag."""
    return np.asarray(slots.any(axis=0))


def _any(flags: dict[str, Array], types: tuple[str, ...], n: int) -> Array:
    out = np.zeros(n, dtype=bool)
    for t in types:
        out |= flags[t]
    return out
