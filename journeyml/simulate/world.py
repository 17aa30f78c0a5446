"""The simulated world: personas, marketing actions and their true effects.

Validated from ``configs/simulator.yaml``; every parameter has a default, so the file only
needs what it changes.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from journeyml.config import CONFIG_DIR, StrictModel, load_config


class Persona(StrictModel):
    """A latent customer type. Rates are per day unless named otherwise."""

    name: str
    share: float = Field(gt=0)
    sessions_per_day: float = Field(gt=0)
    browse_depth: float = Field(default=0.5, gt=0, lt=1)
    purchase_logit: float = -1.0
    order_value_median: float = Field(default=40.0, gt=0)
    order_value_spread: float = Field(default=0.5, gt=0)
    app_share: float = Field(default=0.4, ge=0, le=1)
    email_engagement: float = Field(default=0.3, ge=0, le=1)
    support_rate: float = Field(default=0.01, ge=0)
    complaint_rate: float = Field(default=0.002, ge=0)
    churn_hazard: float = Field(default=0.004, ge=0)
    cancel_share: float = Field(default=0.4, ge=0, le=1)
    premium_share: float = Field(default=0.3, ge=0, le=1)
    segments: dict[str, float] = Field(default_factory=lambda: {"web": 1.0})


class ActionEffect(StrictModel):
    """How an action changes one persona's behaviour while it lasts.

    ``convert`` adds to the purchase log-odds; ``churn`` multiplies the churn hazard. The
    ``*_if_unhappy`` / ``*_if_happy`` variants replace them when satisfaction is below -0.3 or
    above 0.3, so effects also depend on the customer's state, not only on the persona.
    """

    convert: float = 0.0
    churn: float = Field(default=1.0, gt=0)
    churn_if_unhappy: float | None = Field(default=None, gt=0)
    churn_if_happy: float | None = Field(default=None, gt=0)
    prospects_only: bool = False


class Action(StrictModel):
    """A marketing action the logging policy can send."""

    id: str
    channel: str
    cost: float = Field(ge=0)
    duration_days: int = Field(default=30, gt=0)
    effects: dict[str, ActionEffect] = Field(default_factory=dict)


def _default_personas() -> list[Persona]:
    return [
        Persona(
            name="bargain_hunter",
            share=0.25,
            sessions_per_day=0.22,
            purchase_logit=-1.6,
            order_value_median=25,
            app_share=0.5,
            email_engagement=0.45,
            churn_hazard=0.006,
            cancel_share=0.3,
            premium_share=0.1,
            segments={"deal_seeker": 0.7, "mainstream": 0.3},
        ),
        Persona(
            name="loyal_regular",
            share=0.25,
            sessions_per_day=0.3,
            purchase_logit=-0.7,
            order_value_median=55,
            app_share=0.7,
            email_engagement=0.35,
            churn_hazard=0.0015,
            cancel_share=0.5,
            premium_share=0.5,
            segments={"mainstream": 0.6, "loyalist": 0.4},
        ),
        Persona(
            name="casual_browser",
            share=0.2,
            sessions_per_day=0.1,
            browse_depth=0.35,
            purchase_logit=-2.0,
            order_value_median=35,
            app_share=0.2,
            email_engagement=0.15,
            churn_hazard=0.008,
            cancel_share=0.2,
            premium_share=0.1,
            segments={"mainstream": 0.8, "deal_seeker": 0.2},
        ),
        Persona(
            name="new_explorer",
            share=0.15,
            sessions_per_day=0.18,
            purchase_logit=-1.8,
            order_value_median=40,
            app_share=0.5,
            email_engagement=0.4,
            churn_hazard=0.007,
            cancel_share=0.3,
            premium_share=0.2,
            segments={"newcomer": 0.8, "mainstream": 0.2},
        ),
        Persona(
            name="premium_at_risk",
            share=0.15,
            sessions_per_day=0.15,
            purchase_logit=-1.1,
            order_value_median=90,
            app_share=0.6,
            email_engagement=0.2,
            support_rate=0.03,
            complaint_rate=0.008,
            churn_hazard=0.009,
            cancel_share=0.7,
            premium_share=0.8,
            segments={"loyalist": 0.5, "mainstream": 0.5},
        ),
    ]


def _default_actions() -> list[Action]:
    return [
        Action(
            id="discount_offer",
            channel="email",
            cost=5.0,
            effects={
                "bargain_hunter": ActionEffect(convert=1.2, churn=0.85),
                "casual_browser": ActionEffect(convert=0.5),
                "new_explorer": ActionEffect(convert=0.6),
                "loyal_regular": ActionEffect(convert=0.1),
                "premium_at_risk": ActionEffect(convert=0.2, churn=1.15),
            },
        ),
        Action(
            id="onboarding_help",
            channel="app",
            cost=2.0,
            effects={
                "new_explorer": ActionEffect(convert=1.0, churn=0.6, prospects_only=True),
                "casual_browser": ActionEffect(convert=0.4, churn=0.8, prospects_only=True),
                "bargain_hunter": ActionEffect(convert=0.3, prospects_only=True),
            },
        ),
        Action(
            id="retention_call",
            channel="phone",
            cost=15.0,
            effects={
                name: ActionEffect(churn=0.8, churn_if_unhappy=0.35, churn_if_happy=1.4)
                for name in [
                    "bargain_hunter",
                    "loyal_regular",
                    "casual_browser",
                    "new_explorer",
                    "premium_at_risk",
                ]
            },
        ),
        Action(
            id="upsell_offer",
            channel="email",
            cost=3.0,
            effects={
                "loyal_regular": ActionEffect(convert=0.8, churn_if_unhappy=1.6),
                "premium_at_risk": ActionEffect(convert=0.5, churn_if_unhappy=1.8),
                "bargain_hunter": ActionEffect(convert=-0.2, churn=1.1),
            },
        ),
        Action(
            id="content_email",
            channel="email",
            cost=0.1,
            effects={
                "bargain_hunter": ActionEffect(convert=0.15),
                "new_explorer": ActionEffect(convert=0.2, churn=0.9),
                "casual_browser": ActionEffect(churn=1.1),
            },
        ),
    ]


class World(StrictModel):
    """Everything that defines the simulated world apart from the seed."""

    personas: list[Persona] = Field(default_factory=_default_personas)
    actions: list[Action] = Field(default_factory=_default_actions)
    regions: dict[str, float] = Field(
        default_factory=lambda: {"north": 0.3, "south": 0.3, "east": 0.2, "west": 0.2}
    )
    opt_out_share: float = Field(default=0.04, ge=0, le=1)
    existing_share: float = Field(default=0.5, ge=0, le=1)
    payment_failure_rate: float = Field(default=0.03, ge=0, le=1)
    decision_every_days: int = Field(default=7, gt=0)
    policy_none_weight: float = Field(default=4.0, gt=0)
    policy_floor: float = Field(default=0.04, gt=0, lt=0.2)
    noise: float = Field(default=0.08, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> World:
        names = [p.name for p in self.personas]
        if len(set(names)) != len(names) or not names:
            raise ValueError("personas need unique names (at least one)")
        ids = [a.id for a in self.actions]
        if len(set(ids)) != len(ids) or "none" in ids:
            raise ValueError("action ids must be unique and not 'none'")
        for a in self.actions:
            unknown = set(a.effects) - set(names)
            if unknown:
                raise ValueError(f"action {a.id} has effects for unknown personas: {unknown}")
        if len(self.actions) * self.policy_floor >= 1:
            raise ValueError("policy_floor is too large for the number of actions")
        return self


def load_world(path: str | None = None) -> World:
    """Loads ``configs/simulator.yaml`` (or ``path``)."""
    return load_config(path or CONFIG_DIR / "simulator.yaml", World)
