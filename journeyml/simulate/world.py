"""The simulated world: personas, journey dynamics, marketing actions and their true effects.

Validated from ``configs/simulator.yaml`` by :class:`World`; every parameter has a default (the
standard world described below), so the file only needs what it changes. Rates are per day
unless named otherwise. A wrong key fails with a :class:`journeyml.config.ConfigError` naming it.

The standard world has five latent personas (customers never see them; observable attributes
``segment``, ``plan``, ``region`` and ``marketing_opt_out`` are correlated with them) and five
marketing actions whose true effects differ by persona and by the customer's latent state:

========================  ===============================================================
discount_offer (email)    big lift in purchase intent for bargain hunters, little for
                          loyal regulars (who would have bought anyway), some for others
onboarding_help (app)     helps new customers convert and stay; the effect fades with
                          tenure (``tenure_scale_days``)
retention_call (phone)    cuts the churn hazard of unhappy customers, *raises* it for happy
                          ones (``churn_by_satisfaction``); loyal regulars are annoyed
upsell_offer (email)      more and bigger purchases from loyal regulars; pushes unhappy
                          customers (premium_at_risk) to leave
content_email (email)     more visits from casual browsers, next to nothing otherwise
========================  ===============================================================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from journeyml.config import StrictModel, config_path, load_config

STAGES: tuple[str, ...] = ("awareness", "consideration", "purchase", "retention", "advocacy")
POLICY_FEATURES: tuple[str, ...] = (
    "intercept",
    "new_customer",
    "never_bought",
    "lapsed_buyer",
    "repeat_buyer",
    "recent_complaint",
    "recent_failure",
    "inactive_14d",
    "premium",
)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a name (lower case letters, digits and _)")
    return name


def _check_weights(weights: dict[str, float]) -> dict[str, float]:
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return weights


class Persona(StrictModel):
    """A latent customer type. Probabilities are per day for a customer at neutral state."""

    name: str
    share: float = Field(gt=0, description="weight among customers present at the start")
    arrival_share: float | None = Field(
        default=None, ge=0, description="weight among customers who arrive later (default share)"
    )
    sessions_per_day: float = Field(default=0.12, gt=0, le=1)
    app_share: float = Field(default=0.4, ge=0, le=1)
    store_share: float = Field(default=0.05, ge=0, le=1)
    purchase: float = Field(default=1.0, gt=0, description="purchase propensity multiplier")
    order_value_median: float = Field(default=40.0, gt=0)
    order_value_spread: float = Field(default=0.5, gt=0, description="log-normal sigma")
    email_open: float = Field(default=0.3, ge=0, le=1)
    email_click: float = Field(default=0.2, ge=0, le=1, description="given an open")
    support_rate: float = Field(default=0.004, ge=0, le=1)
    complaint_rate: float = Field(default=0.0015, ge=0, le=1)
    churn_hazard: float = Field(default=0.0015, ge=0, le=1)
    cancel_share: float = Field(default=0.4, ge=0, le=1, description="explicit vs silent churn")
    engagement: float = Field(default=0.0, description="long-run mean of latent engagement")
    satisfaction: float = Field(default=0.2, description="long-run mean of latent satisfaction")
    repurchase: float = Field(
        default=0.02, ge=0, le=1, description="retained customer starts considering again"
    )
    referral_rate: float = Field(default=0.004, ge=0, le=1, description="in advocacy")
    review_rate: float = Field(default=0.004, ge=0, le=1, description="in advocacy")
    survey_rate: float = Field(default=0.004, ge=0, le=1, description="NPS answers, once bought")
    premium_share: float = Field(default=0.2, ge=0, le=1)
    opt_out_share: float = Field(default=0.04, ge=0, le=1)
    segments: dict[str, float] = Field(default_factory=lambda: {"mainstream": 1.0})

    _name = field_validator("name")(_check_name)
    _segments = field_validator("segments")(_check_weights)

    @model_validator(mode="after")
    def _channels_fit(self) -> Persona:
        if self.app_share + self.store_share > 1:
            raise ValueError("app_share + store_share must not exceed 1 (the rest is web)")
        return self


class ActionEffect(StrictModel):
    """How an action changes a persona's behaviour while it lasts (``window_days``).

    All but ``satisfaction`` are log-scale shifts: ``convert`` is added to the log purchase
    intent, ``churn`` to the log churn hazard (−0.7 roughly halves it), ``activity`` to the log
    visit rate and ``value`` to the log order value. ``churn_by_satisfaction`` adds that many
    times the customer's satisfaction when the action arrives to ``churn``, so one action can
    help unhappy customers and hurt happy ones. ``satisfaction`` is a one-off change on arrival.
    """

    convert: float = 0.0
    churn: float = 0.0
    churn_by_satisfaction: float = 0.0
    activity: float = 0.0
    value: float = 0.0
    satisfaction: float = 0.0


class Action(StrictModel):
    """A marketing action the policy can send, with its true effects per persona.

    ``effects`` is keyed by persona name or ``default``; a persona's entry overrides the fields
    it sets on top of ``default``. Marketing actions are never sent to customers who opted out
    of marketing. ``tenure_scale_days`` makes the effect fade with tenure
    (× exp(−tenure / scale)). A ``redeemable`` action's purchases in its window may show an
    ``offer_redeemed`` event.
    """

    id: str
    channel: Literal["email", "phone", "app", "chat"]
    cost: float = Field(ge=0)
    window_days: int = Field(default=14, gt=0)
    marketing: bool = True
    redeemable: bool = False
    tenure_scale_days: float | None = Field(default=None, gt=0)
    effects: dict[str, ActionEffect] = Field(default_factory=dict)

    _id = field_validator("id")(_check_name)

    def effect_for(self, persona: str) -> ActionEffect:
        """The effect on ``persona``: its own entry over ``default`` over no effect."""
        base = self.effects.get("default", ActionEffect())
        own = self.effects.get(persona)
        if own is None:
            return base
        return base.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})


class StageBehaviour(StrictModel):
    """What a visit looks like in a latent stage: visit-rate multiplier and funnel steps."""

    activity: float = Field(gt=0)
    ad_click: float = Field(ge=0, le=1, description="visit starts from an ad")
    product_view: float = Field(ge=0, le=1)
    add_to_cart: float = Field(ge=0, le=1, description="given a product view, intent 1")
    checkout: float = Field(ge=0, le=1, description="given a cart")


def _default_stages() -> dict[str, StageBehaviour]:
    return {
        "awareness": StageBehaviour(
            activity=0.7, ad_click=0.35, product_view=0.35, add_to_cart=0.04, checkout=0.3
        ),
        "consideration": StageBehaviour(
            activity=1.0, ad_click=0.15, product_view=0.85, add_to_cart=0.15, checkout=0.45
        ),
        "purchase": StageBehaviour(
            activity=1.3, ad_click=0.08, product_view=0.95, add_to_cart=0.5, checkout=0.75
        ),
        "retention": StageBehaviour(
            activity=0.9, ad_click=0.05, product_view=0.6, add_to_cart=0.1, checkout=0.6
        ),
        "advocacy": StageBehaviour(
            activity=1.1, ad_click=0.03, product_view=0.65, add_to_cart=0.14, checkout=0.65
        ),
    }


class Transitions(StrictModel):
    """Daily probabilities of moving between latent stages (a purchase always leads to
    retention; ``Persona.repurchase`` takes retained customers back to consideration)."""

    awareness_to_consideration: float = Field(default=0.04, ge=0, le=1)
    consideration_to_purchase: float = Field(default=0.03, ge=0, le=1)
    consideration_to_awareness: float = Field(default=0.01, ge=0, le=1)
    purchase_to_consideration: float = Field(default=0.05, ge=0, le=1)
    retention_to_advocacy: float = Field(default=0.008, ge=0, le=1)
    retention_to_awareness: float = Field(default=0.004, ge=0, le=1)
    advocacy_to_retention: float = Field(default=0.01, ge=0, le=1)


class Dynamics(StrictModel):
    """How latent engagement and satisfaction move, and how they drive behaviour and churn.

    Both are mean-reverting random walks towards the persona's mean; events push them.
    """

    reversion: float = Field(default=0.03, ge=0, le=1)
    engagement_noise: float = Field(default=0.06, ge=0)
    satisfaction_noise: float = Field(default=0.05, ge=0)
    engagement_per_session: float = 0.02
    engagement_per_click: float = 0.05
    engagement_per_purchase: float = 0.05
    satisfaction_per_purchase: float = 0.05
    satisfaction_per_failure: float = -0.3
    satisfaction_per_complaint: float = -0.4
    satisfaction_per_support: float = 0.03
    activity_engagement: float = Field(default=0.5, description="log visit rate per unit")
    purchase_satisfaction: float = Field(default=0.3, description="log intent per unit")
    churn_satisfaction: float = Field(default=0.8, description="log hazard per unit, lowers")
    churn_engagement: float = Field(default=0.5, description="log hazard per unit, lowers")
    churn_after_failure: float = Field(
        default=1.0, ge=0, description="log hazard on a day with a failed step"
    )
    complaint_satisfaction: float = Field(default=0.8, ge=0)
    support_after_failure: float = Field(default=0.3, ge=0, le=1)
    complaint_after_failure: float = Field(default=0.2, ge=0, le=1)


class Funnel(StrictModel):
    """Visit-level constants."""

    second_session: float = Field(default=0.25, ge=0, le=1, description="× first-visit rate")
    login_web: float = Field(default=0.35, ge=0, le=1)
    login_app: float = Field(default=0.1, ge=0, le=1)
    payment_failure: float = Field(default=0.02, ge=0, le=1)
    retry_after_failure: float = Field(default=0.5, ge=0, le=1)
    redeem: float = Field(default=0.85, ge=0, le=1)


class Surveys(StrictModel):
    """Survey answers follow satisfaction: score = round(mid + slope × s + noise × N(0,1))."""

    csat_after_support: float = Field(default=0.35, ge=0, le=1)
    nps_mid: float = 6.8
    nps_slope: float = 2.2
    nps_noise: float = Field(default=1.3, ge=0)
    csat_mid: float = 3.5
    csat_slope: float = 0.9
    csat_noise: float = Field(default=0.7, ge=0)


class Season(StrictModel):
    """Calendar multipliers (Monday first, January first) and intraday timing."""

    weekday_activity: list[float] = Field(
        default_factory=lambda: [0.95, 0.95, 0.97, 1.0, 1.05, 1.15, 1.1]
    )
    weekday_purchase: list[float] = Field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.05, 1.1, 1.05]
    )
    monthly_activity: list[float] = Field(
        default_factory=lambda: [0.9, 0.9, 0.95, 0.95, 1.0, 0.95, 0.9, 0.9, 1.0, 1.05, 1.2, 1.3]
    )
    monthly_purchase: list[float] = Field(
        default_factory=lambda: [0.85, 0.9, 0.95, 0.95, 1.0, 1.0, 0.95, 0.95, 1.0, 1.05, 1.35, 1.45]
    )
    daily_noise: float = Field(default=0.08, ge=0, description="log-normal day-to-day noise")
    hour_weights: list[float] = Field(
        default_factory=lambda: [
            0,
            0,
            0,
            0,
            0,
            0.3,
            1,
            2,
            3,
            4,
            5,
            5,
            6,
            6,
            5,
            5,
            5,
            6,
            7,
            8,
            8,
            6,
            4,
            1.5,
        ]
    )

    @model_validator(mode="after")
    def _lengths(self) -> Season:
        for name, n in (
            ("weekday_activity", 7),
            ("weekday_purchase", 7),
            ("monthly_activity", 12),
            ("monthly_purchase", 12),
            ("hour_weights", 24),
        ):
            values = getattr(self, name)
            if len(values) != n or any(v < 0 for v in values):
                raise ValueError(f"{name} needs {n} non-negative numbers")
        if self.hour_weights[0] != 0 or sum(self.hour_weights) <= 0:
            raise ValueError(
                "hour_weights: hour 0 must be 0 (decisions are sent 00:30-01:00 and customers "
                "act after them) and the sum positive"
            )
        return self


class Population(StrictModel):
    """Who the customers are and when they arrive."""

    existing_share: float = Field(default=0.6, ge=0, le=1, description="signed up before start")
    max_tenure_days: int = Field(default=730, gt=0)
    regions: dict[str, float] = Field(
        default_factory=lambda: {"north": 0.3, "south": 0.3, "east": 0.2, "west": 0.2}
    )

    _regions = field_validator("regions")(_check_weights)


def _default_scores() -> dict[str, dict[str, float]]:
    return {
        "none": {"intercept": 1.8},
        "discount_offer": {"intercept": -0.6, "lapsed_buyer": 0.8, "never_bought": 0.3},
        "onboarding_help": {"intercept": -1.6, "new_customer": 2.2},
        "retention_call": {
            "intercept": -2.0,
            "recent_complaint": 2.2,
            "recent_failure": 1.0,
            "inactive_14d": 0.6,
            "premium": 0.3,
        },
        "upsell_offer": {"intercept": -1.0, "repeat_buyer": 0.8, "premium": -0.4},
        "content_email": {"intercept": -0.4, "inactive_14d": 0.5},
    }


class LoggingPolicySettings(StrictModel):
    """The randomised policy that sends the logged actions.

    Every ``every_days`` each customer who has signed up and not cancelled gets a decision:
    option ``o`` (``none`` or an action id) has score Σ weight × feature (``scores[o]``, features
    from :data:`POLICY_FEATURES`, missing options score 0); probabilities are a softmax of the
    scores over the options the customer is eligible for, mixed so that every eligible option
    keeps at least ``min_propensity``.
    """

    every_days: int = Field(default=7, gt=0)
    min_propensity: float = Field(default=0.02, gt=0, lt=0.5)
    scores: dict[str, dict[str, float]] = Field(default_factory=_default_scores)

    @field_validator("scores")
    @classmethod
    def _known_features(cls, scores: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for option, weights in scores.items():
            unknown = sorted(set(weights) - set(POLICY_FEATURES))
            if unknown:
                raise ValueError(
                    f"{option}: unknown features {unknown}; known: {', '.join(POLICY_FEATURES)}"
                )
        return scores


def _default_personas() -> list[Persona]:
    return [
        Persona(
            name="bargain_hunter",
            share=0.25,
            arrival_share=0.25,
            sessions_per_day=0.11,
            app_share=0.45,
            store_share=0.05,
            purchase=0.9,
            order_value_median=28,
            email_open=0.4,
            email_click=0.3,
            churn_hazard=0.0013,
            cancel_share=0.3,
            engagement=0.1,
            satisfaction=0.2,
            repurchase=0.03,
            premium_share=0.08,
            opt_out_share=0.02,
            segments={"deal_seeker": 0.65, "mainstream": 0.3, "premium": 0.05},
        ),
        Persona(
            name="loyal_regular",
            share=0.25,
            arrival_share=0.1,
            sessions_per_day=0.14,
            app_share=0.65,
            store_share=0.1,
            purchase=1.3,
            order_value_median=55,
            order_value_spread=0.4,
            email_open=0.45,
            email_click=0.2,
            support_rate=0.005,
            complaint_rate=0.0008,
            churn_hazard=0.0006,
            cancel_share=0.5,
            engagement=0.5,
            satisfaction=0.8,
            repurchase=0.035,
            referral_rate=0.008,
            review_rate=0.006,
            premium_share=0.45,
            opt_out_share=0.03,
            segments={"deal_seeker": 0.15, "mainstream": 0.5, "premium": 0.35},
        ),
        Persona(
            name="casual_browser",
            share=0.22,
            arrival_share=0.25,
            sessions_per_day=0.06,
            app_share=0.3,
            store_share=0.05,
            purchase=0.6,
            order_value_median=32,
            order_value_spread=0.6,
            email_open=0.2,
            email_click=0.15,
            support_rate=0.002,
            complaint_rate=0.001,
            churn_hazard=0.0022,
            cancel_share=0.2,
            engagement=-0.3,
            satisfaction=0.3,
            repurchase=0.012,
            premium_share=0.08,
            opt_out_share=0.08,
            segments={"deal_seeker": 0.35, "mainstream": 0.55, "premium": 0.1},
        ),
        Persona(
            name="new_explorer",
            share=0.13,
            arrival_share=0.3,
            sessions_per_day=0.12,
            app_share=0.5,
            store_share=0.03,
            purchase=0.8,
            order_value_median=40,
            email_open=0.45,
            email_click=0.3,
            support_rate=0.008,
            complaint_rate=0.0015,
            churn_hazard=0.0025,
            cancel_share=0.25,
            engagement=0.2,
            satisfaction=0.3,
            repurchase=0.02,
            premium_share=0.15,
            opt_out_share=0.02,
            segments={"deal_seeker": 0.3, "mainstream": 0.5, "premium": 0.2},
        ),
        Persona(
            name="premium_at_risk",
            share=0.15,
            arrival_share=0.1,
            sessions_per_day=0.09,
            app_share=0.55,
            store_share=0.08,
            purchase=1.0,
            order_value_median=90,
            email_open=0.3,
            email_click=0.1,
            support_rate=0.012,
            complaint_rate=0.006,
            churn_hazard=0.0028,
            cancel_share=0.6,
            engagement=-0.1,
            satisfaction=-0.6,
            repurchase=0.02,
            survey_rate=0.006,
            premium_share=0.8,
            opt_out_share=0.05,
            segments={"deal_seeker": 0.05, "mainstream": 0.35, "premium": 0.6},
        ),
    ]


def _default_actions() -> list[Action]:
    e = ActionEffect
    return [
        Action(
            id="discount_offer",
            channel="email",
            cost=4.0,
            window_days=14,
            redeemable=True,
            effects={
                "default": e(convert=0.3),
                "bargain_hunter": e(convert=1.1, activity=0.25, churn=-0.2),
                "loyal_regular": e(convert=0.05),
                "casual_browser": e(convert=0.45, activity=0.1),
                "new_explorer": e(convert=0.5),
                "premium_at_risk": e(convert=0.2, churn=-0.15),
            },
        ),
        Action(
            id="onboarding_help",
            channel="app",
            cost=1.5,
            window_days=21,
            marketing=False,
            tenure_scale_days=45,
            effects={
                "default": e(convert=0.2, churn=-0.2),
                "new_explorer": e(convert=0.9, churn=-0.9, activity=0.3, satisfaction=0.2),
                "loyal_regular": e(convert=0.0, churn=0.0, satisfaction=-0.05),
            },
        ),
        Action(
            id="retention_call",
            channel="phone",
            cost=8.0,
            window_days=30,
            marketing=False,
            effects={
                "default": e(churn=-0.3, churn_by_satisfaction=0.6, satisfaction=0.05),
                "loyal_regular": e(churn=0.3, churn_by_satisfaction=0.2, satisfaction=-0.25),
                "premium_at_risk": e(churn=-0.9, churn_by_satisfaction=0.3, satisfaction=0.35),
            },
        ),
        Action(
            id="upsell_offer",
            channel="email",
            cost=0.5,
            window_days=14,
            effects={
                "default": e(convert=0.1, value=0.1, churn=0.1, churn_by_satisfaction=-0.4),
                "loyal_regular": e(convert=0.4, value=0.3, churn=0.0, churn_by_satisfaction=0.0),
                "premium_at_risk": e(
                    convert=0.0, churn=0.9, churn_by_satisfaction=-0.3, satisfaction=-0.3
                ),
                "bargain_hunter": e(convert=-0.1, value=0.0),
            },
        ),
        Action(
            id="content_email",
            channel="email",
            cost=0.1,
            window_days=10,
            effects={
                "default": e(activity=0.08),
                "casual_browser": e(activity=0.5, convert=0.2, churn=-0.2),
                "bargain_hunter": e(activity=0.15),
                "premium_at_risk": e(activity=0.05, satisfaction=-0.05),
            },
        ),
    ]


class World(StrictModel):
    """Everything that defines the simulated world apart from the seed and the run options."""

    personas: list[Persona] = Field(default_factory=_default_personas)
    actions: list[Action] = Field(default_factory=_default_actions)
    stages: dict[str, StageBehaviour] = Field(default_factory=_default_stages)
    transitions: Transitions = Field(default_factory=Transitions)
    dynamics: Dynamics = Field(default_factory=Dynamics)
    funnel: Funnel = Field(default_factory=Funnel)
    surveys: Surveys = Field(default_factory=Surveys)
    season: Season = Field(default_factory=Season)
    population: Population = Field(default_factory=Population)
    policy: LoggingPolicySettings = Field(default_factory=LoggingPolicySettings)

    @field_validator("stages")
    @classmethod
    def _all_stages(cls, stages: dict[str, StageBehaviour]) -> dict[str, StageBehaviour]:
        if set(stages) != set(STAGES):
            raise ValueError(f"give exactly the stages {', '.join(STAGES)}")
        return {s: stages[s] for s in STAGES}

    @model_validator(mode="after")
    def _consistent(self) -> World:
        names = [p.name for p in self.personas]
        if not names or len(set(names)) != len(names):
            raise ValueError("personas need unique names (at least one)")
        if (
            sum(p.arrival_share if p.arrival_share is not None else p.share for p in self.personas)
            <= 0
        ):
            raise ValueError("personas: arrival_share must not all be 0")
        ids = [a.id for a in self.actions]
        if len(set(ids)) != len(ids) or "none" in ids:
            raise ValueError("action ids must be unique and not 'none'")
        for a in self.actions:
            unknown = sorted(set(a.effects) - {*names, "default"})
            if unknown:
                raise ValueError(f"action {a.id}: effects for unknown personas {unknown}")
        unknown = sorted(set(self.policy.scores) - {*ids, "none"})
        if unknown:
            raise ValueError(f"policy.scores: unknown options {unknown} (none or an action id)")
        if (len(ids) + 1) * self.policy.min_propensity >= 1:
            raise ValueError("policy.min_propensity is too large for the number of actions")
        return self

    @property
    def action_ids(self) -> list[str]:
        return [a.id for a in self.actions]

    def action_index(self, action_id: str) -> int:
        """Position of an action in :attr:`actions` (the code policies return)."""
        return self.action_ids.index(action_id)


def load_world(path: str | Path | None = None) -> World:
    """Loads and validates ``path``, or ``simulator.yaml`` of the config folder."""
    return load_config(path or config_path("simulator.yaml"), World)
