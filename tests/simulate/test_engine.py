"""Code tests of the engine and the policy API: incidents, policies, common random numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from journeyml.simulate.engine import (
    NONE,
    Calendar,
    Incident,
    Params,
    Population,
    Roles,
    SimulationError,
    State,
    Uniforms,
    advance,
    build_calendar,
    compile_world,
    draw_population,
)
from journeyml.simulate.policy import (
    check_decision,
    fixed_policy,
    logging_policy,
    observe,
    random_policy,
    sample_from,
)
from journeyml.simulate.truth import TruthOptions, compute_truth
from journeyml.simulate.world import Action, ActionEffect, World

JOURNEY = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("payment:30:7:0.4", Incident("payment", 30, 7, 0.4)),
        ("checkout:0:1:1", Incident("checkout", 0, 1, 1.0)),
    ],
)
def test_incident_specs_parse(spec: str, expected: Incident) -> None:
    assert Incident.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("payment:30:7", "expected STEP:START_DAY:DURATION_DAYS:FAILURE_RATE"),
        ("login:1:3:0.5", "unknown step 'login'"),
        ("payment:x:3:0.5", "must be integers"),
        ("payment:-1:3:0.5", "START_DAY >= 0"),
        ("payment:1:0:0.5", "DURATION_DAYS > 0"),
        ("payment:1:3:1.5", "0 < FAILURE_RATE <= 1"),
    ],
)
def test_bad_incident_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SimulationError, match="--incident") as info:
        Incident.parse(spec)
    assert message in str(info.value)


@dataclass(frozen=True)
class Setup:
    params: Params
    pop: Population
    calendar: Calendar
    roles: Roles
    state: State


def world_after(world: World, n: int, days_run: int, seed: int) -> Setup:
    """A population after ``days_run`` days without actions."""
    params = compile_world(world)
    roles = Roles.from_journey(JOURNEY)
    rng = np.random.Generator(np.random.PCG64(seed))
    calendar = build_calendar(world, date(2025, 1, 1), 120, (), rng)
    pop, state = draw_population(params, n, 120, calendar, rng)
    for day in range(days_run):
        draws = Uniforms.draw(rng, n)
        state, _ = advance(params, pop, state, day, calendar, draws, np.full(n, NONE), roles)
    return Setup(params, pop, calendar, roles, state)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), day=st.integers(8, 60))
def test_logging_policy_keeps_a_floor_and_respects_opt_out(seed: int, day: int) -> None:
    world = World()
    w = world_after(world, 300, day, seed)
    obs = observe(w.params, w.pop, w.state, day)
    p = logging_policy(world).probabilities(obs)
    allowed = np.concatenate([np.ones((len(obs), 1), dtype=bool), obs.eligible], axis=1)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (p[allowed] >= world.policy.min_propensity - 1e-12).all()
    assert (p[~allowed] == 0).all()
    marketing = [a.marketing for a in world.actions]
    assert (~obs.eligible[obs.marketing_opt_out][:, marketing]).all()


def test_sampling_follows_the_probabilities_and_never_picks_impossible_options() -> None:
    rng = np.random.Generator(np.random.PCG64(1))
    probs = np.tile([0.5, 0.0, 0.3, 0.2, 0.0], (40_000, 1))
    actions, propensity = sample_from(probs, rng.random(40_000, dtype=np.float32))
    share = np.bincount(actions + 1, minlength=5) / len(actions)
    assert share == pytest.approx([0.5, 0.0, 0.3, 0.2, 0.0], abs=0.01)
    assert (propensity == probs[0, actions + 1]).all()


def test_decisions_are_checked() -> None:
    world = World()
    w = world_after(world, 400, 14, 2)
    obs = observe(w.params, w.pop, w.state, 14)
    discount = world.action_index("discount_offer")
    opted_out = obs.marketing_opt_out
    assert opted_out.any()
    everyone = np.full(len(obs), discount)
    with pytest.raises(SimulationError, match="opted out"):
        check_decision(obs, everyone, np.ones(len(obs)))
    with pytest.raises(SimulationError, match=r"propensities must be in \(0, 1\]"):
        check_decision(obs, np.full(len(obs), NONE), np.zeros(len(obs)))
    with pytest.raises(SimulationError, match="customers"):
        check_decision(obs, np.full(3, NONE), np.ones(3))
    # the fixed policy sends the action only where it is allowed
    actions, p = check_decision(obs, *fixed_policy(discount)(obs, np.zeros(len(obs))))
    assert (actions[opted_out] == NONE).all() and (actions[~opted_out] == discount).all()
    assert (p == 1).all()
    actions, p = check_decision(obs, *random_policy()(obs, np.linspace(0, 0.999, len(obs))))
    assert set(np.unique(actions)) >= {NONE, discount}


def test_policies_see_the_log_not_the_latent_state() -> None:
    world = World()
    w = world_after(world, 600, 60, 3)
    obs = observe(w.params, w.pop, w.state, 63)
    # silently churned customers still get decisions: the log cannot tell they left
    assert (~obs.latent.alive).any()
    assert not w.state.cancelled[obs.customers].any()
    frame = obs.to_frame()
    assert {"persona", "stage", "satisfaction"}.isdisjoint(frame.columns)
    assert frame["customer_id"].str.match(r"^C\d{7}$").all()


def test_common_random_numbers_make_a_no_op_action_exactly_harmless() -> None:
    """An action that changes nothing has an effect of exactly 0 on every customer: the arms
    share their random numbers, so any difference is a real effect, not noise."""
    base = World()
    noop = Action(id="noop_call", channel="phone", cost=0.0, marketing=False)
    help_ = Action(
        id="big_help",
        channel="phone",
        cost=0.0,
        marketing=False,
        effects={"default": ActionEffect(convert=2.0, churn=-2.0)},
    )
    world = base.model_copy(update={"actions": [noop, help_]})
    world = World.model_validate(world.model_dump() | {"policy": {"scores": {}}})
    w = world_after(world, 500, 35, 4)
    truth = compute_truth(
        w.params,
        w.pop,
        w.state,
        35,
        w.calendar,
        w.roles,
        JOURNEY,
        logging_policy(world),
        TruthOptions(sample=200, rollouts=16),
        seed=4,
    )
    none, noop_arm, help_arm = truth.arm_convert
    assert (noop_arm == none).all()
    assert (truth.arm_churn[1] == truth.arm_churn[0]).all()
    assert (help_arm >= none).mean() > 0.95 and (help_arm - none).mean() > 0.05
    assert (truth.arm_churn[2] - truth.arm_churn[0]).mean() < 0


def test_the_journey_map_must_know_every_simulated_event_type() -> None:
    data = JOURNEY.model_dump()
    data["stage_events"]["advocacy"] = ["referral"]  # review_posted now maps nowhere
    journey = type(JOURNEY).model_validate(data)
    with pytest.raises(SimulationError, match="review_posted"):
        Roles.from_journey(journey)
