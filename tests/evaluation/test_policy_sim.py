"""The learned policy: learned from the logging policy's decision log alone, scored by its true
value in the simulator next to no action, random, single actions and the oracle."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from evaluation.policy_features import JourneyFeatures
from evaluation.policy_learn import (
    DecisionLog,
    DoublyRobustValue,
    LearnedPolicy,
    LearnerSettings,
    ObservationHistory,
    RecordingPolicy,
    daily_revenue,
    decision_features,
    decision_rewards,
    decision_times,
    early_stopping_rows,
    record_logging_run,
    simulator_feature_settings,
)
from evaluation.policy_sim import (
    PolicyValues,
    share_of_oracle_gain,
    share_target,
    true_policy_values,
)
from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap, load_journey_map
from journeyml.simulate.engine import NONE
from journeyml.simulate.policy import Observation, fixed_policy, logging_policy
from journeyml.simulate.run import simulate
from journeyml.simulate.world import World, load_world

START = date(2025, 1, 1)
SETTINGS = LearnerSettings(min_data_in_leaf=200, num_threads=1)
# the customer value model at the horizon's end is off by default: exercised here
VALUED = LearnerSettings(value_days=60, min_data_in_leaf=200, num_threads=1)


@pytest.fixture(scope="module")
def world() -> World:
    return load_world()


@pytest.fixture(scope="module")
def journey() -> JourneyMap:
    return load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")


@pytest.fixture(scope="module")
def values(world: World, journey: JourneyMap) -> PolicyValues:
    return true_policy_values(world, journey, 400, 120, seed=3, learner=SETTINGS)


@pytest.fixture(scope="module")
def learned(world: World, journey: JourneyMap) -> tuple[DecisionLog, LearnedPolicy]:
    log = record_logging_run(world, journey, logging_policy(world), 300, 90, 11, START, VALUED)
    model = DoublyRobustValue(min_data_in_leaf=200, num_threads=1).fit(log)
    return log, LearnedPolicy(model, journey=journey, categories=log.categories, start=START)


class _Hidden:
    """Stands in for the latent truth: any read of it fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the learned policy read the latent truth ({name})")


# -- model behaviour ------------------------------------------------------------------------------


def test_the_learned_policy_beats_no_action_and_random(values: PolicyValues) -> None:
    rows = {str(r["policy"]): r for r in values.values.to_dict("records")}
    learned = rows["learned policy"]
    assert learned["net_value"] > rows["no action"]["net_value"]
    assert learned["net_value"] > rows["random"]["net_value"]
    assert 0 < learned["captured_share"] < 1.5
    # the rows that were there before the learned policy are all still there
    assert {"no action", "random", "logging policy", "oracle (true effects)"} <= set(rows)
    assert any(p.startswith("best single action") for p in rows)


def test_without_learner_settings_there_is_no_learned_row(
    world: World, journey: JourneyMap
) -> None:
    plain = true_policy_values(world, journey, 150, 60, seed=4)
    assert "learned policy" not in set(plain.values["policy"])


def test_the_learned_policy_never_reads_the_latent_truth(
    world: World, journey: JourneyMap, learned: tuple[DecisionLog, LearnedPolicy]
) -> None:
    _, policy = learned
    seen: list[Observation] = []

    class Blindfold:
        """Hands the learned policy observations without their latent truth."""

        def __call__(self, obs: Observation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            seen.append(obs)
            return policy(replace(obs, latent=_Hidden()), u)  # type: ignore[arg-type]

    _, outcomes = simulate(world, journey, 200, 60, seed=12, truth=None, policy=Blindfold())
    assert len(seen) == 9 and outcomes.actions_sent.sum() > 0


def test_decisions_follow_the_predicted_effects_and_eligibility(
    world: World, journey: JourneyMap, learned: tuple[DecisionLog, LearnedPolicy]
) -> None:
    _, policy = learned
    obs: list[Observation] = []

    class Capture:
        def __call__(self, o: Observation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            obs.append(o)
            return policy(o, u)

    simulate(world, journey, 200, 30, seed=13, truth=None, policy=Capture())
    last = obs[-1]
    # scoring changes nothing it keeps: twice the same
    fresh = LearnedPolicy(policy.model, journey=journey, categories=policy.categories, start=START)
    probabilities = fresh.probabilities(last)
    effects = fresh.effects(last)
    assert np.array_equal(fresh.effects(last), effects)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    chosen = probabilities.argmax(axis=1)
    best = effects.max(axis=1)
    assert ((chosen == 0) == (best <= 0)).all()
    sent = chosen > 0
    assert np.allclose(effects[sent, chosen[sent] - 1], best[sent])
    assert (probabilities[:, 1:][~last.eligible] == 0).all()


def test_true_values_are_the_runs_net_value_counted_by_hand(
    world: World, journey: JourneyMap, values: PolicyValues
) -> None:
    """The table's values against runs made here on the evaluation seed (seed + 1), with the
    net value per customer added up from the per-customer outcomes."""
    table = values.values.set_index("policy")
    for label, index in (("no action", NONE), ("always upsell_offer", 3)):
        _, outcomes = simulate(
            world, journey, 400, 120, seed=4, truth=None, policy=fixed_policy(index)
        )
        by_hand = (outcomes.revenue.sum() - outcomes.action_cost.sum()) / 400
        assert table.loc[label, "net_value"] == pytest.approx(by_hand)
    assert world.action_ids[3] == "upsell_offer"


@pytest.mark.parametrize(
    ("value", "none", "oracle", "share"),
    [(12.0, 10.0, 14.0, 0.5), (9.0, 10.0, 14.0, -0.25), (14.0, 10.0, 14.0, 1.0)],
)
def test_share_of_the_oracles_gain_by_hand(
    value: float, none: float, oracle: float, share: float
) -> None:
    assert share_of_oracle_gain(value, none, oracle) == pytest.approx(share)
    assert np.isnan(share_of_oracle_gain(value, none, none))  # an oracle that gains nothing


def test_the_bar_is_95_percent_of_a_ceiling_below_80() -> None:
    assert share_target(None) == 0.8 and share_target(0.9) == 0.8
    assert share_target(0.7) == pytest.approx(0.665)


def test_journey_features_as_the_run_goes_equal_the_finished_logs(
    world: World, journey: JourneyMap
) -> None:
    """Point in time: the features the learned policy reads during a run (events handed over
    day by day) are those of the finished log at the same times."""

    class Watch:
        def __init__(self) -> None:
            self.view = JourneyFeatures(journey, simulator_feature_settings())
            self.seen: list[tuple[int, list[str], pd.DataFrame]] = []
            self.policy = logging_policy(world)

        def observe_events(self, events: pa.Table, customers: pa.Table) -> None:
            self.view.add(events, customers)

        def __call__(self, obs: Observation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if obs.day in (28, 42):
                ids = [f"C{c:07d}" for c in obs.customer_index]
                when = decision_times(START, np.full(len(obs), obs.day))
                self.seen.append((obs.day, ids, self.view.at(ids, when)))
            return self.policy(obs, u)

    watch = Watch()
    _, outcomes = simulate(
        world, journey, 150, 45, seed=21, truth=None, policy=watch, keep_log=True
    )
    assert outcomes.log is not None and len(watch.seen) == 2
    whole = JourneyFeatures(journey, simulator_feature_settings())
    whole.add(
        pa.Table.from_pandas(outcomes.log.events, preserve_index=False),
        pa.Table.from_pandas(outcomes.log.customers, preserve_index=False),
    )
    for day, ids, during in watch.seen:
        after = whole.at(ids, decision_times(START, np.full(len(ids), day)))
        assert during["events_total"].notna().sum() > 50
        pd.testing.assert_frame_equal(during, after)
    # nothing on or after the day: an event of day 42 is not in day 42's features
    first = watch.seen[0][2]
    assert (first["tenure_days"].dropna() <= 28).all()


# -- the decision log and its rewards ----------------------------------------------------------


def test_the_recorder_keeps_what_the_logging_policy_decided(
    world: World, journey: JourneyMap
) -> None:
    recorder = RecordingPolicy(logging_policy(world))
    _, outcomes = simulate(
        world, journey, 150, 40, seed=2, out=None, truth=None, policy=recorder, keep_log=True
    )
    assert outcomes.log is not None
    log, logged = recorder.log(), outcomes.log.decisions
    assert len(log) == len(logged)
    names = np.array(["none", *world.action_ids])
    assert (names[log.options] == logged["action_id"].to_numpy()).all()
    assert np.allclose(log.propensities, logged["propensity"].to_numpy())
    ids = [f"C{c:07d}" for c in log.customers]
    assert ids == logged["customer_id"].tolist()
    assert "persona" not in log.features.columns and not log.features.empty
    revenue = daily_revenue(outcomes.log.events, journey, 150, 40, START)
    assert revenue.sum() == pytest.approx(outcomes.revenue.sum())
    assert np.allclose(revenue.sum(axis=1), outcomes.revenue)


def test_rewards_are_revenue_in_the_horizon_minus_cost_plus_the_value_at_its_end() -> None:
    revenue = np.array(
        [[0.0, 10.0, 0.0, 5.0, 0.0, 0.0, 7.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0, 0, 0, 0]]
    )
    log = DecisionLog(
        features=pd.DataFrame({"x": np.zeros(5)}),
        options=np.array([1, 0, 2, 0, 0]),  # customer 0: action 0 on day 0, none on day 3
        propensities=np.full(5, 0.5),
        customers=np.array([0, 0, 0, 1, 1]),
        days=np.array([0, 3, 6, 0, 3]),
        eligible=np.ones((5, 2), dtype=bool),
    )
    costs = np.array([2.0, 1.0])
    plain = decision_rewards(log, revenue, costs, horizon_days=3)
    # day 0: revenue of days 0-2 = 10, minus 2; day 6: days 6-7 (the run ends) = 7, minus 1
    assert plain.tolist() == [8.0, 5.0, 6.0, 3.0, 0.0]
    ends = np.array([100.0, 200.0, 300.0, 400.0, 500.0])
    valued = decision_rewards(log, revenue, costs, horizon_days=3, end_values=ends)
    # the decision 3 days later is valued; none after the last one (or after a cancellation)
    assert valued.tolist() == [208.0, 305.0, 6.0, 503.0, 0.0]


def test_history_counts_events_between_observations_and_restarts(
    world: World, journey: JourneyMap
) -> None:
    observations: list[Observation] = []

    class Keep:
        def __call__(self, o: Observation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            observations.append(o)
            return logging_policy(world)(o, u)

    simulate(world, journey, 200, 50, seed=6, truth=None, policy=Keep())
    history = ObservationHistory()
    for o in observations:
        history.update(o, np.full(len(o), -1))
    last = observations[-1]
    h = history.features(last)
    assert (h["h_decisions"] >= 1).all() and (h["h_decisions"] <= len(observations) + 1).all()
    for column in ("h_active_share", "h_purchase_share", "h_complaint_share"):
        assert h[column].between(0, 1).all()
    assert (h["h_actions_share"] == 0).all() and (h["last_option"] == 0).all()
    # a customer who never bought has no week with a purchase
    never = np.isnan(last.days_since_purchase)
    assert (h.loc[never, "h_purchase_share"] == 0).all()
    # a run starting again from day 0 starts a new history
    history.update(observations[0], np.zeros(len(observations[0]), dtype=np.int64))
    again = history.features(observations[0])
    assert (again["h_decisions"] == 2).all() and (again["last_option"] == 1).all()
    features = decision_features(last, None)
    assert not any(c.startswith("h_") for c in features.columns)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_settings_and_logs_are_refused(learned: tuple[DecisionLog, LearnedPolicy]) -> None:
    with pytest.raises(ValidationError, match="horizon_days"):
        LearnerSettings(horizon_days=0)
    with pytest.raises(ValidationError, match="value_dayz"):
        LearnerSettings(value_dayz=10)  # type: ignore[call-arg]
    log, _ = learned
    with pytest.raises(ValueError, match="no rewards"):
        DoublyRobustValue().fit(replace(log, rewards=None))
    bad = replace(log, propensities=np.where(np.arange(len(log)) == 0, 0.0, log.propensities))
    with pytest.raises(ValueError, match="propensities"):
        DoublyRobustValue().fit(bad)
    with pytest.raises(ValueError, match="too few"):
        DoublyRobustValue().fit(log.take(np.flatnonzero(log.customers < 3)))


@pytest.mark.parametrize("start", ["average", "outcome"])
def test_both_final_stage_starts_predict_an_effect_per_action(
    learned: tuple[DecisionLog, LearnedPolicy], start: Literal["average", "outcome"]
) -> None:
    log, _ = learned
    model = DoublyRobustValue(start=start, min_data_in_leaf=200, num_threads=1).fit(log)
    effects = model.predict_effects(log.features.head(50))
    assert effects.shape == (50, log.eligible.shape[1]) and np.isfinite(effects).all()
    # the average effect of an action is the mean pseudo-outcome of the decisions it was
    # allowed for (the early-stopping customers left out); the fit is deterministic
    psi = model.pseudo_outcomes(log, model.outcome_predictions(log))
    fitted = log.eligible & ~early_stopping_rows(log.customers, model.random_state)[:, None]
    expected = [psi[fitted[:, j], j].mean() for j in range(log.eligible.shape[1])]
    assert np.allclose(model.base_effects_, expected)
